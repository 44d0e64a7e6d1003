"""The report on many finished runs: ``tools/make_table.py`` over N ``results.json`` files.

N run folders in a sweep's layout (``ROOT/<task>/<backbone>/<mode>/seed<k>/``: 5 tasks x backbones x 2 modes
x 5 seeds), each with a ``results.json`` as a COCO run writes it (box and mask families, the six summary
APs and one AP per category) and the ``config.yaml`` Detectron2 dumps (the effective config of a real
task, about 10 kB: the report reads it for each run). Measured in fresh processes
(:func:`transfer.report.build.make_report`): the markdown tables, then the whole report (tables, CSV, a plot
per task, the self-contained HTML page).
"""
import os
import random
import shutil
import tempfile

from pretrain.common.fileio import write_json_atomic, write_text_atomic
from pretrain.common.runs import CONFIG_FILE, RESULTS_FILE, run_dir
from transfer.bench.isolated import run_isolated

__all__ = ["write_results_tree", "bench_report", "HEADERS"]

HEADERS = ("results.json", "output", "seconds", "ms/run", "added MB")
TASKS = ("coco_mask_rcnn_R_50_FPN_1x", "coco_mask_rcnn_R_50_FPN_2x", "coco_mask_rcnn_R_50_C4_1x",
         "coco_mask_rcnn_R_50_C4_2x", "coco_cascade_mask_rcnn_R_50_FPN_1x")
SEEDS = 5
_IMPORTS = ("transfer", "transfer.report.build")


def _config_text():
    from transfer.training.config import build_config
    from pretrain.common.paths import CONFIGS_DIR

    cfg = build_config(os.path.join(CONFIGS_DIR, "transfer", TASKS[0] + ".yaml"), [], world_size=8, has_cuda=True)
    return cfg.dump()


def write_results_tree(root, num_runs, seed=0):
    """About ``num_runs`` run folders under ``root``; returns how many were written."""
    from transfer.data.synthetic.categories import COCO_CATEGORIES

    rng = random.Random(seed)
    names = [name for _, name, _ in COCO_CATEGORIES]
    backbones = max(1, -(-num_runs // (len(TASKS) * 2 * SEEDS)))
    config = _config_text()
    written = 0
    for task in TASKS:
        for b in range(backbones):
            for mode in ("finetune", "frozen"):
                for s in range(SEEDS):
                    if written >= num_runs:
                        return written
                    folder = run_dir(root, task, f"backbone{b}", mode, s)
                    metrics = {}
                    for family in ("bbox", "segm"):
                        ap = rng.uniform(20, 45)
                        values = {"AP": ap, "AP50": ap + 20, "AP75": ap + 3, "APs": ap - 15, "APm": ap, "APl": ap + 10}
                        values.update({f"AP-{n}": rng.uniform(0, 70) for n in names})
                        metrics[family] = values
                    write_json_atomic(os.path.join(folder, RESULTS_FILE), {
                        "backbone": f"backbone{b}", "task": task, "mode": mode, "seed": s,
                        "weights": f"/weights/backbone{b}.pkl", "iterations": 90000, "metrics": metrics,
                        "commit": "0123abc"})
                    write_text_atomic(os.path.join(folder, CONFIG_FILE), config)
                    written += 1
    return written


def _report(root, out, full):
    from transfer.report.build import build_report, make_report

    if full:
        build_report(root, out)
    else:
        make_report(root, "markdown")


def bench_report(sizes, work_dir=None, log=None):
    """Rows of :data:`HEADERS` for report roots of each of ``sizes`` runs."""
    tmp = tempfile.mkdtemp(prefix="bench_scale_report_", dir=work_dir)
    rows = []
    try:
        for n in sizes:
            root = os.path.join(tmp, f"runs{n}")
            written = write_results_tree(root, n)
            for label, full in (("markdown tables", False), ("tables + plots + HTML", True)):
                if log:
                    log(f"report: {written} runs, {label} ...")
                m = run_isolated(_report, root, os.path.join(tmp, f"report{n}"), full, imports=_IMPORTS)
                if m.error:
                    rows.append((written, label, "failed", m.error[:80], "-"))
                    continue
                rows.append((written, label, f"{m.seconds:.2f}", f"{1000 * m.seconds / written:.1f}",
                             f"{m.added_mb:.0f}"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return rows
