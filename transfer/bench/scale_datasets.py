"""Dataset checks and Detectron2's loading at a fraction of COCO's and LVIS's training-set size.

For each dataset (``coco``: ``coco_2017_train``; ``lvis``: ``lvis_v1_train``) and fraction, a datasets
root is written with an annotation file of that size (:mod:`transfer.data.scale`: real format, real
category tables, one small JPEG linked under every image name) and three things are measured, each in
a fresh process (:func:`transfer.bench.isolated.run_isolated`: wall time, peak memory):

- ``check``: :func:`transfer.data.validate.dataset_summary` without the cache (what a run or a sweep pays
  the first time it sees the file);
- ``check, cached``: the same in a new process once the check's cache holds the file (what every later run
  pays: the file is not read);
- ``Detectron2 load``: what Detectron2's own training loader does with the file before the first iteration
  (``build_detection_train_loader``: ``get_detection_dataset_dicts``, which parses the file, then
  ``DatasetFromList`` serializing the dicts into one buffer);
- ``load in a run``: the same as a run does it (:func:`transfer.data.loader.load_training_set`: Python's
  cyclic collector paused until the dicts are serialized and freed);
- ``check + load on one parse (a run)``: what a run does with a training set whose check is not cached
  (:mod:`transfer.data.shared_parse`), and ``check's cost in a run``: its difference to the run's load.

The ``vs load`` column is each time over Detectron2's own load of the same file. With ``repeats`` > 1
every step but the cached check runs that many times, the rounds interleaved (each round runs every step
once, so that a slow spell of the machine touches all of them); a row shows the median run (the lower
middle one for an even count) and the spread of the runs (slowest minus fastest), and the check's cost
in a run is the median of the rounds' differences.
"""
import dataclasses
import json
import os
import shutil
import tempfile

from transfer.bench.isolated import run_isolated

__all__ = ["DATASETS", "write_root", "bench_datasets", "summarize", "HEADERS"]

# kind -> (dataset name, annotation file under the root, image folder under the root)
DATASETS = {"coco": ("coco_2017_train", "coco/annotations/instances_train2017.json", "coco/train2017"),
            "lvis": ("lvis_v1_train", "lvis/lvis_v1_train.json", "coco/train2017")}
HEADERS = ("dataset", "size", "images", "annotations", "file MB", "step", "seconds", "spread", "peak MB",
           "added MB", "vs load")
_IMPORTS = ("transfer", "detectron2.data", "transfer.data.validate")
_CLASSES = {"coco": 80, "lvis": 1203}


def write_root(work_dir, kind, fraction, seed=0):
    """A datasets root holding dataset ``kind`` at ``fraction`` of its real training-set size (reused when
    an earlier call wrote the same); returns ``(root, {"images", "annotations", "bytes"})``."""
    from transfer.data import scale

    sizes = scale.COCO_TRAIN if kind == "coco" else scale.LVIS_TRAIN
    num_images, num_annotations = scale.scaled(sizes, fraction)
    root = os.path.join(work_dir, f"{kind}_{num_images}_{num_annotations}_seed{seed}")
    _, json_rel, images_rel = DATASETS[kind]
    marker = os.path.join(root, "written.json")
    if os.path.isfile(marker):
        with open(marker) as f:
            return root, json.load(f)
    path = os.path.join(root, json_rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    make = scale.make_coco_scale_json if kind == "coco" else scale.make_lvis_scale_json
    info = make(path, num_images, num_annotations, seed=seed, image_root=os.path.join(root, images_rel))
    with open(marker, "w") as f:
        json.dump(info, f)
    return root, info


def _check(root, name, cache):
    """In the measuring process: the project's check of ``name`` under ``root``; ``cache``: the cache
    folder to use, or None for no cache."""
    from transfer.data import check_cache
    from transfer.data.datasets import set_datasets_root
    from transfer.data.validate import dataset_summary

    os.environ[check_cache.CACHE_ENV] = cache or "none"
    set_datasets_root(root)
    return dataset_summary(name, use_cache=cache is not None)["images"]


def _train_cfg(root, name, num_classes):
    from detectron2.config import get_cfg

    from transfer.data import check_cache
    from transfer.data.datasets import set_datasets_root

    os.environ[check_cache.CACHE_ENV] = "none"
    set_datasets_root(root)
    cfg = get_cfg()
    cfg.DATASETS.TRAIN = (name,)
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = num_classes
    return cfg


def _load(root, name, num_classes):
    """In the measuring process: what Detectron2's training loader does with the file before the first
    iteration (``build_detection_train_loader``: load, filter, serialize into one buffer)."""
    from detectron2.data import DatasetFromList, get_detection_dataset_dicts

    cfg = _train_cfg(root, name, num_classes)
    dicts = get_detection_dataset_dicts(cfg.DATASETS.TRAIN, filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS)
    return len(DatasetFromList(dicts, copy=False, serialize=True))


def _load_in_run(root, name, num_classes):
    """In the measuring process: the same as a run does it (:func:`transfer.data.loader.load_training_set`)."""
    from transfer.data.loader import load_training_set

    return len(load_training_set(_train_cfg(root, name, num_classes)))


def _check_and_load(root, name, num_classes):
    """In the measuring process: what a run does with a training set whose check is not cached: the check
    on the parse Detectron2's loading then uses (:mod:`transfer.data.shared_parse`), and the loading."""
    from transfer.data.loader import load_training_set
    from transfer.data.shared_parse import check_while_loading

    cfg = _train_cfg(root, name, num_classes)
    check_while_loading(cfg, [name])
    return len(load_training_set(cfg))


def _row(kind, fraction, info, step, m, spread, load_seconds):
    head = (DATASETS[kind][0], f"{fraction:.0%}", info["images"], info["annotations"],
            f"{info['bytes'] / 2**20:.0f}", step)
    if m.error:
        return head + ("failed", "-", "-", "-", m.error[:80])
    ratio = f"{m.seconds / load_seconds:.3f}x" if load_seconds else "-"
    return head + (f"{m.seconds:.2f}", "-" if spread is None else f"{spread:.2f}", f"{m.peak_mb:.0f}",
                   f"{m.added_mb:.0f}", ratio)


def summarize(runs):
    """``(measurement, spread)`` of one step's runs: the run of median time (the lower middle one for an
    even count) and the slowest minus the fastest (None for one run); a failed run if any failed."""
    failed = [m for m in runs if m.error]
    if failed:
        return failed[0], None
    ordered = sorted(runs, key=lambda m: m.seconds)
    return ordered[(len(ordered) - 1) // 2], (ordered[-1].seconds - ordered[0].seconds if len(runs) > 1 else None)


def _difference(both, in_run):
    """The check's cost in a run: per round, check + load minus load (memory: the peaks' difference)."""
    return dataclasses.replace(both, seconds=both.seconds - in_run.seconds,
                               peak_mb=both.peak_mb - in_run.peak_mb + both.baseline_mb)


def bench_datasets(fractions, kinds=("coco", "lvis"), work_dir=None, load=True, repeats=1, log=None):
    """Rows of :data:`HEADERS` for every dataset kind and fraction. ``work_dir``: where the generated
    roots go (kept there and reused by later calls; default a temporary folder, removed); ``load``: also
    time Detectron2's load (the slow part at full size); ``repeats``: runs of each step (see the module's
    doc); ``log``: a function for progress lines."""
    tmp = None
    if work_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="bench_scale_data_")
        work_dir = tmp.name
    rows = []
    try:
        for kind in kinds:
            name = DATASETS[kind][0]
            for fraction in fractions:
                if log:
                    log(f"datasets: writing {name} at {fraction:.0%} ...")
                root, info = write_root(work_dir, kind, fraction)
                cache = tempfile.mkdtemp(prefix="check_cache_", dir=work_dir)
                try:
                    run_isolated(_check, root, name, cache, imports=_IMPORTS)  # fills the cache
                    cached = run_isolated(_check, root, name, cache, imports=_IMPORTS)
                finally:
                    shutil.rmtree(cache, ignore_errors=True)
                steps = {"check": (_check, (root, name, None))}
                if load:
                    steps.update({"Detectron2 load": (_load, (root, name, _CLASSES[kind])),
                                  "load in a run": (_load_in_run, (root, name, _CLASSES[kind])),
                                  "check + load on one parse (a run)": (_check_and_load, (root, name, _CLASSES[kind]))})
                runs = {step: [] for step in steps}
                for round_ in range(repeats):
                    if log:
                        log(f"datasets: {name} at {fraction:.0%}, run {round_ + 1} of {repeats}: {', '.join(steps)}")
                    for step, (target, args) in steps.items():
                        runs[step].append(run_isolated(target, *args, imports=_IMPORTS))
                measured = {step: summarize(ms) for step, ms in runs.items()}
                measured["check, cached"] = (cached, None)
                if load:
                    pairs = list(zip(runs["check + load on one parse (a run)"], runs["load in a run"]))
                    if not any(b.error or a.error for b, a in pairs):
                        measured["check's cost in a run (the difference)"] = summarize(
                            [_difference(b, a) for b, a in pairs])
                load_m = measured.get("Detectron2 load", (None,))[0]
                load_seconds = None if load_m is None or load_m.error else load_m.seconds
                order = ["check", "check, cached", "Detectron2 load", "load in a run",
                         "check + load on one parse (a run)", "check's cost in a run (the difference)"]
                rows += [_row(kind, fraction, info, step, *measured[step], load_seconds)
                         for step in order if step in measured]
    finally:
        if tmp is not None:
            tmp.cleanup()
    return rows
