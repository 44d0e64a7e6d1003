"""The papers' published transfer numbers, as data: load, validate and select them.

The numbers live in ``configs/references/*.yaml``, one file per paper, one block per published
(sub)table, transcribed in the paper's own row and column order (see the comment at the top of
``configs/references/infomin.yaml`` for the format). Each number becomes one :class:`Reference`,
keyed like our results: task (config stem, or ``linear_<dataset>`` for linear evaluation), mode
(``finetune`` | ``frozen``), backbone (a short key such as ``infomin``; ``label`` is the paper's row
name), metric family (``bbox`` | ``segm`` | ``keypoints`` | ``linear``) and metric (Detectron2's names:
``AP``, ``AP50``, ...; ``top1``, ``top5`` for ``linear``), plus the paper, its table and
the backbone's architecture (``R-18``, ``R-50``, ``X-101-32x8d``, ...), and, where the paper says, the
number of runs each number averages (``trials``) and the run-to-run std its authors report (``std``, with
``spread_source``). The architecture matters:
Wu et al. ran frozen ResNet-18s through our ResNet-50 configs (the weights set the depth), so a table
of R-50 runs must not show their numbers; :func:`select_references` filters on it.

Nothing here imports Detectron2 or torch.
"""
import math
import os
import re
from dataclasses import dataclass

import yaml

from pretrain.common.paths import CONFIGS_DIR
from pretrain.common.runs import MODES

REFERENCES_DIR = os.path.join(CONFIGS_DIR, "references")
FAMILIES = ("bbox", "segm", "keypoints", "linear")  # linear: top1/top5 of linear evaluation (linear_<dataset>)
_BLOCK_KEYS = {"table", "also", "setting", "task", "similar_tasks", "mode", "arch", "baseline", "columns", "rows",
               "note", "trials", "spread"}
_SPREAD_KEYS = {"std", "rows", "source"}
_ROW_KEYS = {"backbone", "label", "values", "origin"}


class ReferenceError(ValueError):
    """Reference data that cannot be used; the message names the file and the block or key."""


@dataclass(frozen=True)
class Reference:
    """One published number."""

    paper: str
    table: str
    setting: str
    task: str
    mode: str
    arch: str
    backbone: str
    label: str
    family: str
    metric: str
    value: float
    delta: float = None  # value minus the paper's baseline row in the same table (None: no baseline)
    is_baseline: bool = False
    baseline: str = None  # backbone key of the paper's baseline row
    origin: str = None  # another paper the number was copied from (e.g. MoCo's rows in InfoMin)
    similar_tasks: tuple = ()
    source: str = ""  # the YAML file
    order: int = 0  # row position in the paper's table
    trials: int = None  # runs the number is the mean of, where the paper says (block key `trials`)
    std: float = None  # the run-to-run std the authors report for it (block key `spread`), else None
    spread_source: str = None  # where they report it

    @property
    def citation(self):
        return f"{self.paper} {self.table}"


def arch_of_task(task):
    """The architecture a task's config names: ``coco_mask_rcnn_X_101_32x8d_FPN_1x`` -> ``X-101-32x8d``."""
    m = re.search(r"(?:^|_)([RX])_(\d+)(?:_(\d+x\d+d))?(?=_|$)", task)
    if not m:
        return None
    kind, depth, groups = m.groups()
    return f"{kind}-{depth}" + (f"-{groups}" if groups else "")


def arch_from_config(cfg):
    """The architecture of a run from its dumped Detectron2 config (nested dict), or None."""
    try:
        resnets = cfg["MODEL"]["RESNETS"]
        depth = int(resnets["DEPTH"])
    except (KeyError, TypeError, ValueError):
        return None
    groups = resnets.get("NUM_GROUPS", 1) or 1
    width = resnets.get("WIDTH_PER_GROUP", 64)
    try:
        groups, width = int(groups), int(width)
    except (TypeError, ValueError):
        return None
    return f"R-{depth}" if groups == 1 else f"X-{depth}-{groups}x{width}d"


def _fail(path, where, message):
    raise ReferenceError(f"{os.path.basename(path)}: {where}: {message}")


def _str(path, where, value, key, required=True):
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        _fail(path, where, f"`{key}` must be a non-empty string, got {value!r}")
    return value


def _parse_block(path, paper, block, index):
    where = f"block {index + 1}"
    if not isinstance(block, dict):
        _fail(path, where, "must be a mapping")
    where = f"{where} ({block.get('table', '?')})"
    unknown = set(block) - _BLOCK_KEYS
    if unknown:
        _fail(path, where, f"unknown keys {sorted(unknown)} (known: {sorted(_BLOCK_KEYS)})")
    table = _str(path, where, block.get("table"), "table")
    setting = _str(path, where, block.get("setting"), "setting")
    task = _str(path, where, block.get("task"), "task")
    arch = _str(path, where, block.get("arch"), "arch")
    mode = block.get("mode")
    if mode not in MODES:
        _fail(path, where, f"`mode` must be one of {MODES}, got {mode!r}")
    similar = block.get("similar_tasks") or []
    if not isinstance(similar, list) or not all(isinstance(t, str) for t in similar):
        _fail(path, where, "`similar_tasks` must be a list of task names")
    columns = block.get("columns")
    if not isinstance(columns, list) or not columns:
        _fail(path, where, "`columns` must be a non-empty list of FAMILY.METRIC")
    parsed_columns = []
    for col in columns:
        family, _, metric = str(col).partition(".")
        if family not in FAMILIES or not metric:
            _fail(path, where, f"column {col!r} is not FAMILY.METRIC with FAMILY in {FAMILIES}")
        parsed_columns.append((family, metric))
    if len(set(parsed_columns)) != len(parsed_columns):
        _fail(path, where, "duplicate column")
    rows = block.get("rows")
    if not isinstance(rows, list) or not rows:
        _fail(path, where, "`rows` must be a non-empty list")
    parsed_rows = []
    for r, row in enumerate(rows):
        rwhere = f"{where}, row {r + 1}"
        if not isinstance(row, dict):
            _fail(path, rwhere, "must be a mapping")
        unknown = set(row) - _ROW_KEYS
        if unknown:
            _fail(path, rwhere, f"unknown keys {sorted(unknown)} (known: {sorted(_ROW_KEYS)})")
        backbone = _str(path, rwhere, row.get("backbone"), "backbone")
        label = _str(path, rwhere, row.get("label", backbone), "label")
        origin = _str(path, rwhere, row.get("origin"), "origin", required=False)
        values = row.get("values")
        if not isinstance(values, list) or len(values) != len(parsed_columns):
            _fail(path, rwhere, f"`values` must list {len(parsed_columns)} numbers, one per column")
        for v in values:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                _fail(path, rwhere, f"value {v!r} is not a finite number")
        parsed_rows.append((backbone, label, origin, [float(v) for v in values]))
    keys = [b for b, _, _, _ in parsed_rows]
    if len(set(keys)) != len(keys):
        _fail(path, where, "a backbone appears in two rows")
    trials = block.get("trials")
    if trials is not None and (isinstance(trials, bool) or not isinstance(trials, int) or trials < 1):
        _fail(path, where, f"`trials` must be a positive integer, got {trials!r}")
    spread = _parse_spread(path, where, block.get("spread"), len(parsed_columns), keys)
    baseline = block.get("baseline")
    base_values = None
    if baseline is not None:
        if baseline not in keys:
            _fail(path, where, f"`baseline` {baseline!r} is not one of the rows {keys}")
        base_values = parsed_rows[keys.index(baseline)][3]
    refs = []
    for order, (backbone, label, origin, values) in enumerate(parsed_rows):
        for c, ((family, metric), value) in enumerate(zip(parsed_columns, values)):
            delta = None if base_values is None else value - base_values[c]
            std = spread["std"][c] if spread and backbone in spread["rows"] else None
            refs.append(Reference(paper=paper, table=table, setting=setting, task=task, mode=mode, arch=arch,
                                  backbone=backbone, label=label, family=family, metric=metric, value=value,
                                  delta=delta, is_baseline=backbone == baseline, baseline=baseline, origin=origin,
                                  similar_tasks=tuple(similar), source=path, order=order, trials=trials, std=std,
                                  spread_source=spread["source"] if std is not None else None))
    return refs


def _parse_spread(path, where, spread, n_columns, keys):
    """A block's ``spread``: ``std`` (one number or null per column), ``rows`` (the backbones it applies to;
    default all) and ``source`` (where the authors state it); None when absent."""
    if spread is None:
        return None
    where = f"{where}, spread"
    if not isinstance(spread, dict):
        _fail(path, where, "must be a mapping with `std`, `rows` and `source`")
    unknown = set(spread) - _SPREAD_KEYS
    if unknown:
        _fail(path, where, f"unknown keys {sorted(unknown)} (known: {sorted(_SPREAD_KEYS)})")
    stds = spread.get("std")
    if not isinstance(stds, list) or len(stds) != n_columns:
        _fail(path, where, f"`std` must list {n_columns} numbers (or null), one per column")
    for v in stds:
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0):
            _fail(path, where, f"std {v!r} is not a number >= 0")
    rows = spread.get("rows", keys)
    if not isinstance(rows, list) or not rows or not set(rows) <= set(keys):
        _fail(path, where, f"`rows` must list backbones of the block's rows {keys}, got {rows!r}")
    source = _str(path, where, spread.get("source"), "source")
    return {"std": [None if v is None else float(v) for v in stds], "rows": set(rows), "source": source}


def load_reference_file(path):
    """The references of one YAML file (``paper``, ``tables: [...]``)."""
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as e:
        raise ReferenceError(f"{os.path.basename(path)}: cannot read: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict) or not isinstance(data.get("tables"), list):
        _fail(path, "top level", "must be a mapping with `paper` and a list `tables`")
    paper = _str(path, "top level", data.get("paper"), "paper")
    refs = []
    for i, block in enumerate(data["tables"]):
        refs.extend(_parse_block(path, paper, block, i))
    return refs


def load_references(directory=None):
    """Every reference under ``directory`` (default: ``configs/references``), checked for duplicates.

    Two numbers for the same task, mode, architecture, backbone and metric would make a table ambiguous,
    so they are an error (a table a paper prints twice is stored once; see the YAML comments).
    """
    directory = directory or REFERENCES_DIR
    if not os.path.isdir(directory):
        raise ReferenceError(f"reference directory not found: {directory}")
    refs = []
    for name in sorted(os.listdir(directory)):
        if name.endswith((".yaml", ".yml")):
            refs.extend(load_reference_file(os.path.join(directory, name)))
    seen = {}
    for ref in refs:
        key = (ref.task, ref.mode, ref.arch, ref.backbone, ref.family, ref.metric)
        if key in seen:
            other = seen[key]
            raise ReferenceError(f"{os.path.basename(ref.source)}: {ref.table}: {'/'.join(key)} is also in "
                                 f"{os.path.basename(other.source)} {other.table}")
        seen[key] = ref
    return refs


def find_references(refs, **criteria):
    """The references whose fields equal every criterion, e.g. ``find_references(refs, paper="InfoMin",
    table="Table 2(a)", backbone="infomin", family="bbox", metric="AP")``."""
    return [r for r in refs if all(getattr(r, k) == v for k, v in criteria.items())]


def select_references(refs, task, mode=None, archs=None, include_similar=True):
    """References for a table of ``task``: those filed under it, and (``include_similar``) those filed
    under another task that lists it as similar (e.g. Wu et al.'s LVIS numbers, filed under LVIS v0.5,
    for an LVIS v1.0 table). ``archs`` (a set, or one string) keeps only those architectures.

    Returns ``[(reference, exact)]``; ``exact`` is False for a similar task's numbers.
    """
    if isinstance(archs, str):
        archs = {archs}
    out = []
    for r in refs:
        exact = r.task == task
        if not exact and not (include_similar and task in r.similar_tasks):
            continue
        if mode is not None and r.mode != mode:
            continue
        if archs is not None and r.arch not in archs:
            continue
        out.append((r, exact))
    return out
