"""Run artifacts: the file names every stage writes, the run-folder layout, backbone labels, ``results.json``.

The formats are described for users in ``docs/artifacts.md``; this module is their single definition in
code. Every stage that writes or finds a run (transfer training, linear evaluation, MI estimation, sweeps,
the report) goes through these functions, so a folder written by one is found by the others.

Run folder: ``ROOT/<task>/<backbone>/<mode>/seed<k>/`` with ``results.json`` in it.
"""
import math
import os
import re

from pretrain.common.fileio import write_json_atomic
from pretrain.common.version import code_version

__all__ = ["RESULTS_FILE", "METRICS_FILE", "MI_FILE", "LEDGER_FILE", "CONFIG_FILE", "WEIGHTS_FILE",
           "CHECKPOINT_LAST", "CHECKPOINT_FINAL", "CURVES_FILE", "MODES", "WEIGHT_SUFFIXES", "run_id", "run_dir",
           "backbone_label", "results_record", "write_results", "snapshot_file", "snapshot_weights_file",
           "snapshot_epoch", "epoch_label", "split_epoch_label"]

RESULTS_FILE = "results.json"          # one finished run's numbers
METRICS_FILE = "metrics.jsonl"         # pretraining / linear evaluation: one JSON object per logged step
MI_FILE = "mi.json"                    # a post-training MI estimate
LEDGER_FILE = "sweep.json"             # a sweep's runs, jobs and states
CONFIG_FILE = "config.yaml"            # the effective config of a run
WEIGHTS_FILE = "weights.pkl"           # a pretraining run converted to Detectron2 weights
CHECKPOINT_LAST = "checkpoint_last.pth"
CHECKPOINT_FINAL = "checkpoint_final.pth"
CURVES_FILE = "curves.json"            # a sweep's curve watcher: the epochs it submitted evaluations for
MODES = ("finetune", "frozen")
# longest first: "x.pth.tar" is "x", not "x.pth"
WEIGHT_SUFFIXES = (".pth.tar", ".safetensors", ".ckpt", ".pkl", ".pth", ".pt")
_SNAPSHOT = re.compile(r"^checkpoint_epoch(\d{4,})\.pth$")
_EPOCH_LABEL = re.compile(r"^(.+)@ep(\d+)$")


def snapshot_file(epoch):
    """``checkpoint_epoch0010.pth``: the pretraining checkpoint kept after ``epoch`` (``SOLVER.SNAPSHOT_EPOCHS``)."""
    return f"checkpoint_epoch{int(epoch):04d}.pth"


def snapshot_weights_file(epoch):
    """``weights_epoch0010.pkl``: that checkpoint converted to Detectron2 weights."""
    return f"weights_epoch{int(epoch):04d}.pkl"


def snapshot_epoch(filename):
    """The epoch of a snapshot's file name (:func:`snapshot_file`), or None for any other name (temporary
    files of an atomic write included)."""
    m = _SNAPSHOT.match(os.path.basename(filename))
    return int(m.group(1)) if m else None


def epoch_label(backbone, epoch):
    """``moco_v2@ep10``: the backbone label of a pretraining run's checkpoint after ``epoch`` epochs."""
    return f"{backbone}@ep{int(epoch)}"


def split_epoch_label(label):
    """``(backbone, epoch)`` of an :func:`epoch_label`, or None for any other label."""
    m = _EPOCH_LABEL.match(label or "")
    return (m.group(1), int(m.group(2))) if m else None


def run_id(task, backbone, mode, seed):
    """``<task>/<backbone>/<mode>/seed<k>``: a run's name in a sweep, and its folder below the root."""
    return f"{task}/{backbone}/{mode}/seed{int(seed)}"


def run_dir(root, task, backbone, mode, seed):
    return os.path.join(root, *run_id(task, backbone, mode, seed).split("/"))


def backbone_label(name, weights):
    """The backbone's name in tables: ``name`` when given, else the weights file's stem, else ``random``."""
    if name:
        return name
    if not weights:
        return "random"
    base = os.path.basename(os.path.normpath(weights))
    for suffix in WEIGHT_SUFFIXES:
        if base.endswith(suffix):
            return base[: -len(suffix)]
    return os.path.splitext(base)[0] or "random"


def _finite_or_none(value):
    value = float(value)
    return value if math.isfinite(value) else None


def _clean(metrics):
    return {family: {k: _finite_or_none(v) for k, v in values.items()} for family, values in metrics.items()}


def results_record(*, backbone, task, mode, seed, weights, iterations, metrics, **extra):
    """The ``results.json`` record of a finished run (fields in docs/artifacts.md).

    ``metrics`` is ``{family: {metric: value}}`` (Detectron2's percentages; non-finite values become null),
    or ``{dataset: {family: {metric: value}}}`` for several test datasets: the first is the run's, all are
    kept under ``datasets``. ``extra`` fields (e.g. ``protocol``, ``deviations``) are added as given.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    by_dataset = None
    if metrics and all(isinstance(v, dict) and v and all(isinstance(x, dict) for x in v.values())
                       for v in metrics.values()):
        by_dataset = metrics
        metrics = next(iter(by_dataset.values()))
    record = {"backbone": backbone, "task": task, "mode": mode, "seed": int(seed), "weights": weights or "",
              "iterations": int(iterations), "metrics": _clean(metrics), "commit": code_version()}
    if by_dataset is not None and len(by_dataset) > 1:
        record["datasets"] = {name: _clean(fams) for name, fams in by_dataset.items()}
    record.update(extra)
    return record


def write_results(output_dir, record):
    """Write ``output_dir/results.json`` atomically; returns its path."""
    return write_json_atomic(os.path.join(output_dir, RESULTS_FILE), record)
