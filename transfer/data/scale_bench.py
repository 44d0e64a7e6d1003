"""What a dataset check costs at real scale, beside Detectron2's own loading of the same file.

:func:`measure_dataset_checks` writes COCO- and LVIS-train-sized annotation files (or fractions of them,
:mod:`transfer.data.scale`) and measures, each in a fresh process so that memory is its own:

- the full check a run does before training (:func:`transfer.data.validate.dataset_summary`, cache off);
- the same check again with its cache filled (what every later run of an unchanged dataset pays);
- Detectron2's loading (``DatasetCatalog.get``: ``load_coco_json`` / ``load_lvis_json``), which every
  training process does anyway.

Time is the operation alone (after the imports), the median over ``repeats``, the check and the load
interleaved, as wall-clock and as the process's CPU time (steadier on a shared machine); peak memory is the process's peak resident set above what it had after the imports.
:func:`format_dataset_check_table` prints the rows (``tools/bench_scale.py`` shows them).
"""
import json
import os
import statistics
import subprocess
import sys

from transfer.data.scale import COCO_TRAIN, LVIS_TRAIN, make_coco_scale_json, make_lvis_scale_json, scaled

__all__ = ["make_scale_dataset", "measure_once", "measure_dataset_checks", "format_dataset_check_table"]

_SIZES = {"coco": COCO_TRAIN, "lvis": LVIS_TRAIN}


def make_scale_dataset(workdir, kind, fraction, seed=0):
    """``(json_file, image_root, {"images", "annotations", "bytes"})`` of a ``kind`` (coco|lvis) file at
    ``fraction`` of the training set's size under ``workdir`` (reused when already written)."""
    num_images, num_annotations = scaled(_SIZES[kind], fraction)
    folder = os.path.join(os.path.abspath(workdir), f"{kind}_{num_images}_{num_annotations}_seed{seed}")
    json_file = os.path.join(folder, "annotations.json")
    images = os.path.join(folder, "train2017")
    image_root = images if kind == "coco" else folder + os.sep  # LVIS: root + <split folder of coco_url>
    done = os.path.join(folder, "sizes.json")
    if os.path.isfile(done):
        with open(done) as f:
            return json_file, image_root, json.load(f)
    make = make_coco_scale_json if kind == "coco" else make_lvis_scale_json
    sizes = make(json_file, num_images, num_annotations, seed=seed, image_root=images)
    with open(done, "w") as f:
        json.dump(sizes, f)
    return json_file, image_root, sizes


def _register(kind, json_file, image_root):
    from detectron2.data import DatasetCatalog

    # Detectron2 reads the LVIS version from the name
    name = f"scale_bench_{kind}" + ("_v1" if kind == "lvis" else "")
    if name in DatasetCatalog.list():
        return name
    if kind == "coco":
        from transfer.data.datasets import register_coco_dataset

        register_coco_dataset(name, json_file, image_root)
    else:
        from detectron2.data.datasets.lvis import get_lvis_instances_meta, register_lvis_instances

        register_lvis_instances(name, get_lvis_instances_meta("lvis_v1"), json_file, image_root)
    return name


def _rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def measure_once(kind, json_file, image_root, what):
    """In this process: ``{"seconds", "cpu_seconds", "peak_mb"}`` of ``what`` on the dataset: ``check`` (cache off),
    ``cached`` (the check through its cache: filled by a ``cached`` run before), ``load`` (Detectron2's)."""
    import resource
    import time

    import transfer  # noqa: F401  (runtime fixes)
    from detectron2.data import DatasetCatalog

    from transfer.data.validate import dataset_summary

    name = _register(kind, json_file, image_root)
    base = _rss_mb()
    start, cpu = time.perf_counter(), time.process_time()
    if what == "load":
        n = len(DatasetCatalog.get(name))
    else:
        n = dataset_summary(name, use_cache=what == "cached")["images"]
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {"seconds": seconds, "cpu_seconds": cpu, "peak_mb": max(0.0, peak - base), "images": n}


def _in_fresh_process(kind, json_file, image_root, what, cache_dir):
    code = ("import json, sys; from transfer.data.scale_bench import measure_once; "
            "print(json.dumps(measure_once(*sys.argv[1:5])))")
    env = dict(os.environ, SSL_D2_TRANSFER_CACHE=cache_dir)
    proc = subprocess.run([sys.executable, "-c", code, kind, json_file, image_root, what], capture_output=True,
                          text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"measuring {what} of {json_file} failed: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure_dataset_checks(workdir, fractions=(0.1, 0.5, 1.0), kinds=("coco", "lvis"), repeats=3, seed=0,
                           progress=None):
    """One row per (kind, fraction): sizes, the check's and Detectron2's load's median seconds and peak
    MB, their ratio, and the cached check's seconds. ``progress(text)`` is told what runs."""
    rows = []
    cache_dir = os.path.join(os.path.abspath(workdir), "check_cache")
    for kind in kinds:
        for fraction in fractions:
            json_file, image_root, sizes = make_scale_dataset(workdir, kind, fraction, seed)
            _in_fresh_process(kind, json_file, image_root, "cached", cache_dir)  # fills the cache
            runs = {"check": [], "load": [], "cached": []}
            for i in range(repeats):
                for what in ("check", "load", "cached"):
                    if progress:
                        progress(f"{kind} {fraction:g}: {what} {i + 1}/{repeats}")
                    runs[what].append(_in_fresh_process(kind, json_file, image_root, what, cache_dir))
            med = {w: statistics.median(r["seconds"] for r in runs[w]) for w in runs}
            cpu = {w: statistics.median(r["cpu_seconds"] for r in runs[w]) for w in runs}
            peak = {w: max(r["peak_mb"] for r in runs[w]) for w in runs}
            rows.append({"kind": kind, "fraction": fraction, "images": sizes["images"],
                         "annotations": sizes["annotations"], "json_mb": sizes["bytes"] / 2**20,
                         "check_s": med["check"], "check_peak_mb": peak["check"], "load_s": med["load"],
                         "load_peak_mb": peak["load"], "ratio": med["check"] / med["load"],
                         "check_cpu_s": cpu["check"], "load_cpu_s": cpu["load"],
                         "ratio_cpu": cpu["check"] / cpu["load"], "cached_s": med["cached"], "repeats": repeats})
    return rows


def format_dataset_check_table(rows):
    """The rows as a Markdown table."""
    lines = ["| data | images | annotations | json MB | check s (CPU s) | check peak MB | Detectron2 load s (CPU s) | "
             "load peak MB | check / load (CPU) | cached check s |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['kind'].upper()} {r['fraction']:.0%} | {r['images']:,} | {r['annotations']:,} | "
                     f"{r['json_mb']:.0f} | {r['check_s']:.2f} ({r['check_cpu_s']:.2f}) | {r['check_peak_mb']:.0f} | "
                     f"{r['load_s']:.1f} ({r['load_cpu_s']:.1f}) | {r['load_peak_mb']:.0f} | "
                     f"{r['ratio']:.3f} ({r['ratio_cpu']:.3f}) | {r['cached_s']:.3f} |")
    return "\n".join(lines) + "\n"
