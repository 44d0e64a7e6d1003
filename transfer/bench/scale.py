"""How each stage's cost grows with its work (``tools/bench_scale.py``): one table per stage.

==============  =========================================================  ==========================
section         what grows                                                  default sizes (``--quick``)
==============  =========================================================  ==========================
``datasets``    COCO / LVIS training-set annotation files: the project's    10%, 50%, 100% (0.2%)
                check (first, cached) against Detectron2's own load
``sweep``       runs of a sweep: command to a filled ledger                 10, 50, 200 runs (4)
``memory_bank`` bank entries: neighbour search, k-means                     128k, 1.28M (2k)
``mi``          images of a post-training MI estimate                       1,000 (96, tiny critic)
``report``      ``results.json`` files under the report's root              1,000 (40)
==============  =========================================================  ==========================

Every measurement runs in a fresh process (:mod:`transfer.bench.isolated`), one after the other, so that
peak memory is the stage's own. The modules ``scale_<section>.py`` say what exactly is timed.
"""
import dataclasses
import os
import time

import torch

from pretrain.bench import format_table

__all__ = ["SECTIONS", "Sizes", "DEFAULT_SIZES", "QUICK_SIZES", "machine_line", "run_scale_bench"]

SECTIONS = ("datasets", "sweep", "memory_bank", "mi", "report")


@dataclasses.dataclass
class Sizes:
    fractions: tuple = (0.1, 0.5, 1.0)       # of COCO's and LVIS's training sets
    runs: tuple = (10, 50, 200)              # sweep runs
    bank: tuple = (128_000, 1_280_000)       # memory-bank entries
    mi_images: tuple = (1000,)
    results: tuple = (1000,)                 # results.json files
    mi_image_size: int = 224
    mi_iters: int = 1000                     # critic steps (the estimate's default)
    clusters: int = 1000                     # k-means clusters timed (then extrapolated to the recipe)
    kmeans_iters: int = 5
    repeats: int = 1                         # fresh-process runs of each dataset step (the median is shown)


DEFAULT_SIZES = Sizes()
QUICK_SIZES = Sizes(fractions=(0.002,), runs=(4,), bank=(2000,), mi_images=(96,), results=(40,), mi_image_size=32,
                    mi_iters=20, clusters=16, kmeans_iters=2)


def machine_line():
    """What the numbers were measured on: CPUs, torch threads, the load at the start."""
    try:
        load = ", load average %.1f %.1f %.1f" % os.getloadavg()
    except OSError:
        load = ""
    return f"machine: {os.cpu_count()} CPUs, torch {torch.__version__} with {torch.get_num_threads()} threads{load}"


def _section(name, sizes, work_dir, d2_load, threads, log):
    if name == "datasets":
        from transfer.bench.scale_datasets import HEADERS, bench_datasets
        rows = bench_datasets(sizes.fractions, work_dir=work_dir, load=d2_load, repeats=sizes.repeats, log=log)
        return "Datasets: the project's check vs Detectron2's load (COCO: 118,287 images, 860,001 annotations " \
               "= 100%; LVIS v1: 100,170 images, 1,270,141 annotations)", HEADERS, rows
    if name == "sweep":
        from transfer.bench.scale_sweep import HEADERS, bench_sweeps
        return "Sweep submission: the command to a filled ledger (jobs that only write results.json)", HEADERS, \
            bench_sweeps(sizes.runs, work_dir=work_dir, log=log)
    if name == "memory_bank":
        from transfer.bench.scale_memory_bank import HEADERS, bench_memory_bank
        return "Memory bank: neighbour search and k-means (128-d unit rows)", HEADERS, \
            bench_memory_bank(sizes.bank, clusters=sizes.clusters, iters=sizes.kmeans_iters, threads=threads, log=log)
    if name == "mi":
        from transfer.bench.scale_mi import HEADERS, bench_mi
        return "MI estimate (ResNet-18, one seed, K_Est 256, CPU)", HEADERS, \
            bench_mi(sizes.mi_images, image_size=sizes.mi_image_size, iters=sizes.mi_iters, threads=threads,
                     work_dir=work_dir, log=log)
    from transfer.bench.scale_report import HEADERS, bench_report
    return "Report (tools/make_table.py)", HEADERS, bench_report(sizes.results, work_dir=work_dir, log=log)


def run_scale_bench(sections=SECTIONS, sizes=DEFAULT_SIZES, work_dir=None, d2_load=True, threads=0, out=print,
                    log=None):
    """Measure ``sections`` at ``sizes`` (a :class:`Sizes`) and print each table through ``out`` as it is
    done; returns ``[(title, headers, rows)]``. ``work_dir``: where generated data go (the dataset files are
    kept there for later calls; default: temporary folders); ``d2_load``: time Detectron2's own load of the
    datasets too (minutes at full size); ``threads``: torch threads of the compute sections (0: torch's)."""
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        raise ValueError(f"unknown section(s) {', '.join(unknown)}; known: {', '.join(SECTIONS)}")
    if work_dir:
        os.makedirs(work_dir, exist_ok=True)
    out(machine_line())
    tables = []
    for name in SECTIONS:
        if name not in sections:
            continue
        start = time.perf_counter()
        title, headers, rows = _section(name, sizes, work_dir, d2_load, threads, log)
        out(f"\n{title} [{time.perf_counter() - start:.0f} s]")
        out(format_table(headers, rows))
        tables.append((title, headers, rows))
    return tables
