"""Sweep submission of 10, 50, 200 runs: the launcher's own cost, without the runs' training.

A sweep file of N runs (one task, ``N / (2 x seeds)`` random-init backbones, both modes, up to 5 seeds; the
demo's tiny overrides) over a small synthetic COCO root, and three measurements, each in a fresh process:

- ``dry run``: expand, check every run (configs and datasets), print the plan (``--dry-run``);
- ``submit (debug)``: the same and submit every run on the debug cluster, whose jobs here only write
  their ``results.json`` (:class:`DoneJob`), until the ledger is filled: every run done;
- ``resubmit``: the same command again on the filled ledger (nothing left to submit: what a user pays to
  ask again).

The training is left out on purpose: this is the time from the command to a filled ledger, which grows
with the number of runs (checks per (task, backbone, mode), ledger writes per run).
"""
import io
import os
import shutil
import tempfile

from pretrain.common.fileio import write_json_atomic
from pretrain.common.runs import RESULTS_FILE
from transfer.bench.isolated import run_isolated

__all__ = ["DoneJob", "sweep_shape", "write_sweep", "bench_sweeps", "HEADERS"]

HEADERS = ("runs", "checked configs", "step", "seconds", "ms/run", "added MB")
TASK = "coco_mask_rcnn_R_50_FPN_1x"
_IMPORTS = ("transfer", "detectron2.data", "transfer.launch.sweep")


class DoneJob:
    """A job that finishes at once: it writes the run's ``results.json`` (the sweep's done file)."""

    def __init__(self, output_dir):
        self.output_dir = output_dir

    def __call__(self):
        write_json_atomic(os.path.join(self.output_dir, RESULTS_FILE), {"benchmark": "no training"})
        return self.output_dir


def _done_job(run, resume):
    return DoneJob(run.output_dir)


def sweep_shape(num_runs):
    """``(backbones, seeds)`` with ``backbones x 2 modes x seeds`` about ``num_runs``."""
    seeds = min(5, max(1, num_runs // 10))
    return max(1, -(-num_runs // (2 * seeds))), seeds


def write_sweep(path, num_runs):
    """A sweep file of about ``num_runs`` runs; returns the number of runs it has."""
    import yaml

    from transfer.training.config import TINY_OVERRIDES

    backbones, seeds = sweep_shape(num_runs)
    data = {"name": f"bench{num_runs}", "backbones": {f"b{i}": "" for i in range(backbones)}, "tasks": [TASK],
            "modes": ["finetune", "frozen"], "seeds": list(range(seeds)),
            "overrides": ["MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64", *TINY_OVERRIDES],
            "resources": {"cluster": "debug", "gpus_per_node": 0}}
    with open(path, "w") as f:
        yaml.safe_dump(data, f)
    return backbones * 2 * seeds


def _submit(sweep_file, out_root, data_root, dry_run):
    """In the measuring process: one ``submit sweep`` command."""
    from transfer.data.datasets import set_datasets_root
    from transfer.launch.sweep import run_sweep

    set_datasets_root(data_root)
    sink = io.StringIO()
    ledger = run_sweep(sweep_file, out_root, {}, dry_run=dry_run, make_job=None if dry_run else _done_job,
                       out=lambda *a, **k: print(*a, **k, file=sink))
    if ledger is None:
        return None
    return ledger.counts()["done"]


def bench_sweeps(sizes, work_dir=None, log=None):
    """Rows of :data:`HEADERS` for sweeps of each of ``sizes`` runs."""
    from transfer.data.synthetic import write_synthetic

    tmp = tempfile.mkdtemp(prefix="bench_scale_sweep_", dir=work_dir)
    rows = []
    try:
        data_root = os.path.join(tmp, "datasets")
        write_synthetic(data_root, kinds=("coco",), num_images=4, seed=0)
        for n in sizes:
            sweep_file = os.path.join(tmp, f"sweep{n}.yaml")
            runs = write_sweep(sweep_file, n)
            backbones, _ = sweep_shape(n)
            out_root = os.path.join(tmp, f"out{n}")
            if log:
                log(f"sweep: {runs} runs: dry run, submit, resubmit ...")
            for step, dry in (("dry run", True), ("submit (debug)", False), ("resubmit", False)):
                m = run_isolated(_submit, sweep_file, out_root, data_root, dry, imports=_IMPORTS)
                if m.error or (not dry and m.result != runs):
                    rows.append((runs, backbones * 2, step, "failed", "-", m.error or f"{m.result} runs done"))
                    continue
                rows.append((runs, backbones * 2, step, f"{m.seconds:.2f}", f"{1000 * m.seconds / runs:.1f}",
                             f"{m.added_mb:.0f}"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return rows
