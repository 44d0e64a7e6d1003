"""Collect the ``results.json`` of finished runs (format: docs/artifacts.md) under a root, at any depth.

A run directory may also hold the ``config.yaml`` Detectron2 dumps next to the results; a few of its
keys (schedule, batch, learning rate, weights, depth) become the run's configuration summary; without
a depth there, an ``arch`` string in the record (``R-18``: linear evaluation writes one) is the run's. A
``results.json`` that cannot be read or does not follow the schema is skipped with a reason, never
fatal; so is a second record of the same (task, backbone, mode, seed).

A transfer run's record also names the protocol it claims and every setting in which it departs from it
(``protocol``, ``deviations``: :mod:`transfer.training.protocol`); :meth:`Run.protocol_alterations` are
those that make its number something other than the claimed protocol's. Records written before these
fields existed are read as ``deviations`` None: protocol not recorded.
"""
import json
import logging
import math
import os
from dataclasses import dataclass, field

import yaml

from pretrain.common.runs import CONFIG_FILE, MODES, RESULTS_FILE
from transfer.report.references import arch_from_config

logger = logging.getLogger(__name__)

DETECTION_FAMILIES = ("bbox", "segm", "keypoints")  # what Detectron2 transfer runs report

# (label, path in the dumped config) of the per-run configuration summary
CONFIG_SUMMARY = (("MAX_ITER", ("SOLVER", "MAX_ITER")), ("IMS_PER_BATCH", ("SOLVER", "IMS_PER_BATCH")),
                  ("BASE_LR", ("SOLVER", "BASE_LR")), ("WEIGHTS", ("MODEL", "WEIGHTS")),
                  ("DEPTH", ("MODEL", "RESNETS", "DEPTH")), ("NORM", ("MODEL", "RESNETS", "NORM")))


class ReportError(Exception):
    """A problem the user can fix (bad root, unknown baseline or task); one line, names the path or name."""


@dataclass(frozen=True)
class Run:
    """One finished transfer run."""

    path: str  # its results.json
    backbone: str
    task: str
    mode: str
    seed: int
    weights: str
    iterations: int
    metrics: dict  # {family: {metric: float}}, non-finite values (JSON null, NaN) as nan
    commit: str = None
    config: dict = field(default_factory=dict)  # summary of config.yaml: {label: value}
    arch: str = None  # from config.yaml (the weights' meta sets the depth), None without one
    protocol: str = None  # "<protocol>:<setting>" the run claims; None: none claimed, or not recorded
    deviations: tuple = None  # ({key, expected, actual, why, documented, ...}, ...); None: not recorded

    @property
    def protocol_recorded(self):
        """False for a transfer run whose results.json predates ``protocol``/``deviations`` (linear and kNN
        evaluations, which have no Detectron2 protocol, count as recorded)."""
        return self.deviations is not None or not set(self.metrics) & set(DETECTION_FAMILIES)

    def protocol_alterations(self):
        """The deviations that make this run's number not the claimed protocol's: all of them but a batch
        changed under the linear scaling rule (same epochs; ``documented`` batch deviation)."""
        return [d for d in self.deviations or ()
                if not (d["key"] == "SOLVER.IMS_PER_BATCH" and d.get("documented"))]

    def value(self, family, metric):
        """The metric's value (maybe nan), or None when the run did not report it."""
        return self.metrics.get(family, {}).get(metric)

    def nonfinite(self):
        """``family.metric`` of every non-finite value."""
        return [f"{fam}.{m}" for fam, vals in self.metrics.items() for m, v in vals.items() if not math.isfinite(v)]


@dataclass
class Collection:
    """Every usable run under ``root``, and what was skipped or looked odd."""

    root: str
    runs: list
    skipped: list  # [(path, reason)]: results.json files not used
    warnings: list  # [(path, message)]: runs used, with something to say (e.g. unreadable config.yaml)

    def tasks(self):
        return sorted({r.task for r in self.runs})

    def backbones(self):
        return sorted({r.backbone for r in self.runs})

    def modes(self):
        return [m for m in MODES if any(r.mode == m for r in self.runs)]


def _number(value):
    """A metric value as float (nan for null / non-finite); raises ValueError for anything else."""
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"metric value {value!r} is not a number")
    return float(value)


def parse_record(record):
    """Check a results.json record against the schema; returns the fields of a :class:`Run`."""
    if not isinstance(record, dict):
        raise ValueError("not a JSON object")
    for key, kind in (("backbone", str), ("task", str), ("mode", str)):
        if not isinstance(record.get(key), kind) or not record[key]:
            raise ValueError(f"`{key}` missing or not a non-empty string")
    if record["mode"] not in MODES:
        raise ValueError(f"`mode` is {record['mode']!r}, not one of {MODES}")
    if record.get("eval_only"):  # train_net --eval-only: no transfer training happened
        raise ValueError("evaluation-only record (train_net --eval-only, no training): not a transfer result")
    seed = record.get("seed")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"`seed` is {seed!r}, not an integer")
    iterations = record.get("iterations")
    if iterations is not None and (isinstance(iterations, bool) or not isinstance(iterations, int)):
        raise ValueError(f"`iterations` is {iterations!r}, not an integer")
    metrics = record.get("metrics")
    if not isinstance(metrics, dict):
        raise ValueError("`metrics` missing or not an object")
    clean = {}
    for family, values in metrics.items():
        if not isinstance(values, dict):
            raise ValueError(f"`metrics.{family}` is not an object")
        try:
            clean[family] = {str(k): _number(v) for k, v in values.items()}
        except ValueError as e:
            raise ValueError(f"`metrics.{family}`: {e}") from None
    commit = record.get("commit")
    protocol, deviations = _protocol_fields(record)
    return dict(protocol=protocol, deviations=deviations, backbone=record["backbone"], task=record["task"], mode=record["mode"], seed=seed,
                weights=str(record.get("weights") or ""), iterations=iterations, metrics=clean,
                commit=str(commit) if commit else None)


def _protocol_fields(record):
    """(protocol, deviations) of a record; (None, None) for one written before they existed."""
    if "deviations" not in record and "protocol" not in record:
        return None, None
    protocol, deviations = record.get("protocol"), record.get("deviations")
    if protocol is not None and not isinstance(protocol, str):
        raise ValueError(f"`protocol` is {protocol!r}, not a string or null")
    if not isinstance(deviations, list) or not all(
            isinstance(d, dict) and isinstance(d.get("key"), str) for d in deviations):
        raise ValueError("`deviations` missing or not a list of objects with a `key`")
    return protocol or None, tuple(deviations)


def deviations_text(deviations):
    """The deviations of one run, those with the same reason in one clause:
    ``INPUT.FORMAT 'RGB' instead of 'BGR', MODEL.PIXEL_STD [...] instead of [...]: why (documented); ...``."""
    groups = {}
    for d in deviations:
        reason = d.get("why", "changed setting") + (" (documented)" if d.get("documented") else "")
        groups.setdefault(reason, []).append(f"{d['key']} {d.get('actual')!r} instead of {d.get('expected')!r}")
    return "; ".join(f"{', '.join(keys)}: {reason}" for reason, keys in groups.items())


def read_config_summary(path):
    """(summary, arch) of a dumped Detectron2 config.yaml; raises ValueError when unreadable."""
    try:
        with open(path) as f:
            cfg = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as e:
        raise ValueError(f"unreadable {CONFIG_FILE}: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
    if not isinstance(cfg, dict):
        raise ValueError(f"{CONFIG_FILE} is not a mapping")
    summary = {}
    for label, keys in CONFIG_SUMMARY:
        node = cfg
        for k in keys:
            node = node.get(k) if isinstance(node, dict) else None
        if node is not None and node != "":
            summary[label] = node
    return summary, arch_from_config(cfg)


def find_results(root):
    """Every results.json under ``root`` (any depth), sorted."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        if RESULTS_FILE in filenames:
            found.append(os.path.join(dirpath, RESULTS_FILE))
    return sorted(found)


def collect_runs(root):
    """A :class:`Collection` of the runs under ``root``; a missing root is a :class:`ReportError`."""
    if not os.path.exists(root):
        raise ReportError(f"results root not found: {root}")
    if not os.path.isdir(root):
        raise ReportError(f"results root is not a directory: {root}")
    runs, skipped, warnings, seen = [], [], [], {}
    for path in find_results(root):
        try:
            with open(path) as f:
                record = json.load(f)
            fields = parse_record(record)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, ValueError) as e:
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            skipped.append((path, reason))
            logger.info(f"skipping {path}: {reason}")
            continue
        key = (fields["task"], fields["backbone"], fields["mode"], fields["seed"])
        if key in seen:
            reason = f"duplicate of {seen[key]} (same task, backbone, mode and seed)"
            skipped.append((path, reason))
            logger.info(f"skipping {path}: {reason}")
            continue
        seen[key] = path
        config, arch = {}, None
        cfg_path = os.path.join(os.path.dirname(path), CONFIG_FILE)
        if os.path.isfile(cfg_path):
            try:
                config, arch = read_config_summary(cfg_path)
            except ValueError as e:
                warnings.append((path, str(e)))
        if arch is None and isinstance(record.get("arch"), str):  # e.g. linear evaluation records their backbone's
            arch = record["arch"]
        runs.append(Run(path=path, config=config, arch=arch, **fields))
    return Collection(root=root, runs=runs, skipped=skipped, warnings=warnings)
