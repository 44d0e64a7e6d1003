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

The ``vs load`` column is each time over Detectron2's own load of the same file.
"""
import dataclasses
import json
import os
import tempfile

from transfer.bench.isolated import run_isolated

__all__ = ["DATASETS", "write_root", "bench_datasets", "HEADERS"]

# kind -> (dataset name, annotation file under the root, image folder under the root)
DATASETS = {"coco": ("coco_2017_train", "coco/annotations/instances_train2017.json", "coco/train2017"),
            "lvis": ("lvis_v1_train", "lvis/lvis_v1_train.json", "coco/train2017")}
HEADERS = ("dataset", "size", "images", "annotations", "file MB", "step", "seconds", "peak MB", "added MB",
           "vs load")
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


def _row(kind, fraction, info, step, m, load_seconds):
    name = DATASETS[kind][0]
    if m.error:
        return (name, f"{fraction:.0%}", info["images"], info["annotations"], f"{info['bytes'] / 2**20:.0f}", step,
                "failed", "-", "-", m.error[:80])
    ratio = f"{m.seconds / load_seconds:.3f}x" if load_seconds else "-"
    return (name, f"{fraction:.0%}", info["images"], info["annotations"], f"{info['bytes'] / 2**20:.0f}", step,
            f"{m.seconds:.2f}", f"{m.peak_mb:.0f}", f"{m.added_mb:.0f}", ratio)


def bench_datasets(fractions, kinds=("coco", "lvis"), work_dir=None, load=True, log=None):
    """Rows of :data:`HEADERS` for every dataset kind and fraction. ``work_dir``: where the generated
    roots go (kept there and reused by later calls; default a temporary folder, removed); ``load``: also
    time Detectron2's load (the slow part at full size); ``log``: a function for progress lines."""
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
                measured = []
                if log:
                    log(f"datasets: {name} at {fraction:.0%}: check, cached check"
                        + (", Detectron2 load, load in a run, check + load in a run" if load else ""))
                measured.append(("check", run_isolated(_check, root, name, None, imports=_IMPORTS)))
                run_isolated(_check, root, name, cache, imports=_IMPORTS)  # fills the cache
                measured.append(("check, cached", run_isolated(_check, root, name, cache, imports=_IMPORTS)))
                load_seconds = None
                if load:
                    m = run_isolated(_load, root, name, _CLASSES[kind], imports=_IMPORTS)
                    measured.append(("Detectron2 load", m))
                    load_seconds = None if m.error else m.seconds
                    in_run = run_isolated(_load_in_run, root, name, _CLASSES[kind], imports=_IMPORTS)
                    measured.append(("load in a run", in_run))
                    both = run_isolated(_check_and_load, root, name, _CLASSES[kind], imports=_IMPORTS)
                    measured.append(("check + load on one parse (a run)", both))
                    if not in_run.error and not both.error:
                        # what the check adds to a run's loading; memory: the peaks' difference
                        added = dataclasses.replace(both, seconds=both.seconds - in_run.seconds,
                                                    peak_mb=both.peak_mb - in_run.peak_mb + both.baseline_mb)
                        measured.append(("check's cost in a run (the difference)", added))
                rows += [_row(kind, fraction, info, step, m, load_seconds) for step, m in measured]
    finally:
        if tmp is not None:
            tmp.cleanup()
    return rows
