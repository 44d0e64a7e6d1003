"""The sweep file: a grid of transfer runs (backbone x task x mode x seed), read and checked.

A sweep file (``configs/sweeps/*.yaml``)::

    name: infomin_table2                 # letters, digits, _.+-
    backbones: {infomin: weights/infomin_R_50.pkl, random: ""}   # "" = random initialisation
    tasks: [coco_mask_rcnn_R_50_FPN_1x]  # config names under configs/transfer (or paths to YAML files)
    modes: [finetune, frozen]
    seeds: [0, 1]
    overrides: [KEY, VALUE, ...]         # applied to every run (optional)
    resources: {partition: gpu, gpus_per_node: 8}   # defaults for the resource flags (optional)
    pretrain: ...                        # backbones the sweep pretrains, and their transfer curves (optional)
    evaluations: ...                     # frozen-feature evaluations (optional)

The ``pretrain`` and ``evaluations`` sections: :mod:`transfer.launch.pipeline`. Every run gets
``TRANSFER.BACKBONE_NAME``, ``TRANSFER.MODE``, ``SEED``, ``MODEL.WEIGHTS`` and ``OUTPUT_DIR`` from the
grid (:mod:`transfer.launch.grid`); ``overrides`` may not set those. Errors are one line
(:class:`~transfer.launch.sweep_fields.SweepError`).
"""
import dataclasses
import os

from pretrain.common.paths import CONFIGS_DIR
from pretrain.common.runs import MODES
from pretrain.common.yamlio import read_yaml
from transfer.launch.pipeline import parse_evaluations, parse_pretrain
from transfer.launch.resources import Resources, SubmitError
from transfer.launch.sweep_fields import SweepError, is_valid_name, read_list, read_overrides

__all__ = ["Sweep", "load_sweep", "SWEEP_KEYS", "GRID_KEYS", "TRANSFER_CONFIGS_DIR"]

SWEEP_KEYS = ("name", "backbones", "tasks", "modes", "seeds", "overrides", "resources", "pretrain", "evaluations")
GRID_KEYS = ("OUTPUT_DIR", "SEED", "TRANSFER.MODE", "MODEL.WEIGHTS", "TRANSFER.BACKBONE_NAME")
TRANSFER_CONFIGS_DIR = os.path.join(CONFIGS_DIR, "transfer")


@dataclasses.dataclass
class Sweep:
    name: str
    path: str
    backbones: dict  # name -> weights path ("" = random initialisation)
    tasks: list      # config names
    modes: list
    seeds: list
    overrides: list
    resources: dict
    config_files: dict  # task -> config file
    pretrain: dict = dataclasses.field(default_factory=dict)   # name -> pipeline.PretrainSpec
    pretrain_resources: dict = dataclasses.field(default_factory=dict)
    linear: list = dataclasses.field(default_factory=list)    # [pipeline.LinearSpec]
    mi: list = dataclasses.field(default_factory=list)        # [pipeline.MISpec]
    eval_resources: dict = dataclasses.field(default_factory=dict)
    knn: list = dataclasses.field(default_factory=list)       # [pipeline.KNNSpec]
    curves: object = None   # pipeline.CurveSpec (task stems, modes and seeds filled in) or None


def _task_config(task, configs_dir, where):
    if task.endswith((".yaml", ".yml")) or os.sep in task:
        path = os.path.abspath(task)
    else:
        path = os.path.join(configs_dir, task + ".yaml")
    if not os.path.isfile(path):
        known = sorted(f[:-5] for f in os.listdir(configs_dir) if f.endswith(".yaml") and not f.startswith("Base-")) \
            if os.path.isdir(configs_dir) else []
        hint = f" (e.g. {', '.join(known[:3])}, ...; see {configs_dir})" if known else ""
        raise SweepError(f"{where}: unknown task {task!r}: no config {path}{hint}")
    return path


def _task_stem(task):
    """The task name of a config name or file: the file name without .yaml (``lvis_v0.5_...`` keeps its dot)."""
    base = os.path.basename(task)
    for ext in (".yaml", ".yml"):
        if base.endswith(ext):
            return base[:-len(ext)]
    return base


def _backbones(data, pretrain, path, check_weights):
    backbones = data.get("backbones")
    if backbones is None and pretrain:
        backbones = {}
    if not isinstance(backbones, dict) or not (backbones or pretrain):
        raise SweepError(f"{path}: 'backbones' must map names to weights files (\"\" for random init)")
    both = sorted(set(map(str, backbones)) & set(pretrain))
    if both:
        raise SweepError(f"{path}: backbone {both[0]!r} is both in 'backbones' and in 'pretrain'")
    clean = {}
    for bname, weights in backbones.items():
        bname = str(bname)
        if not is_valid_name(bname):
            raise SweepError(f"{path}: backbone name {bname!r} must be letters, digits and _.+- (it names a folder)")
        if weights is None:
            weights = ""
        if not isinstance(weights, str):
            raise SweepError(f"{path}: backbone {bname}: weights must be a file path or \"\", got {weights!r}")
        if weights and check_weights and not os.path.isfile(weights):
            raise SweepError(f"{path}: backbone {bname}: weights file not found: {weights} (convert a checkpoint "
                             "with tools/convert_backbone.py and put its path in the sweep file)")
        clean[bname] = os.path.abspath(weights) if weights else ""
    return clean


def _check_resources(values, where):
    try:
        Resources().updated(values, where)
    except SubmitError as e:
        raise SweepError(str(e)) from None


def load_sweep(path, configs_dir=None, check_weights=True):
    """Read and check a sweep file (no config is built here; see :func:`transfer.launch.grid.check_runs`).

    ``check_weights`` False accepts weights files that do not exist yet (to inspect a sweep whose
    paths are placeholders)."""
    configs_dir = configs_dir or TRANSFER_CONFIGS_DIR
    if not os.path.isfile(path):
        raise SweepError(f"sweep file not found: {path}")
    data = read_yaml(path, SweepError)
    if not isinstance(data, dict):
        raise SweepError(f"{path}: expected a mapping with keys {', '.join(SWEEP_KEYS)}")
    unknown = sorted(set(data) - set(SWEEP_KEYS))
    if unknown:
        raise SweepError(f"{path}: unknown key(s) {', '.join(map(str, unknown))}; known: {', '.join(SWEEP_KEYS)}")

    name = data.get("name")
    if not isinstance(name, str) or not is_valid_name(name):
        raise SweepError(f"{path}: 'name' must be letters, digits and _.+- (got {name!r})")

    pretrain, pretrain_resources, curves = parse_pretrain(data.get("pretrain"), path)
    linear, mi, knn, eval_resources = parse_evaluations(data.get("evaluations"), path)
    backbones = _backbones(data, pretrain, path, check_weights)

    evaluations = bool(linear or mi or knn or curves)
    if evaluations and not data.get("tasks"):
        data = {**data, "tasks": [], "modes": data.get("modes") or ["frozen"]}
    tasks = [str(t) for t in data["tasks"]] if evaluations and not data["tasks"] else \
        [str(t) for t in read_list(data, "tasks", path, "config names under configs/transfer")]
    config_files = {_task_stem(task): _task_config(task, configs_dir, path) for task in tasks}
    tasks = list(dict.fromkeys(_task_stem(t) for t in tasks))

    modes = [str(m) for m in read_list(data, "modes", path, f"modes: {', '.join(MODES)}")]
    for mode in modes:
        if mode not in MODES:
            raise SweepError(f"{path}: mode {mode!r} is not one of {', '.join(MODES)}")
    modes = list(dict.fromkeys(modes))

    seeds = read_list(data, "seeds", path, "integers")
    for seed in seeds:
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise SweepError(f"{path}: seed {seed!r} must be a non-negative integer")
    seeds = list(dict.fromkeys(seeds))

    overrides = list(read_overrides(data.get("overrides"), path))
    for key in overrides[::2]:
        if key in GRID_KEYS:
            raise SweepError(f"{path}: overrides may not set {key}: the grid sets {', '.join(GRID_KEYS)}")

    resources = data.get("resources") or {}
    if not isinstance(resources, dict):
        raise SweepError(f"{path}: 'resources' must be a mapping of {', '.join(Resources.keys())}")
    _check_resources(resources, f"{path}: resources")
    for where, extra in (("pretrain: resources", pretrain_resources), ("evaluations: resources", eval_resources),
                         ("pretrain: curves: resources", curves.resources if curves else {})):
        _check_resources(extra, f"{path}: {where}")
    if curves is not None:
        curves = _curves(curves, {"linear": linear, "knn": knn, "mi": mi}, modes, seeds, config_files, configs_dir,
                         path)
    return Sweep(name, os.path.abspath(path), backbones, tasks, modes, seeds, overrides, dict(resources),
                 config_files, pretrain, pretrain_resources, linear, mi, eval_resources, knn, curves)


def _curves(spec, evaluations, modes, seeds, config_files, configs_dir, path):
    """The curves entry with its names checked, task names as stems (their configs added to ``config_files``)
    and the sweep's modes and seeds where it gives none."""
    where = f"{path}: pretrain: curves"
    for kind, specs in evaluations.items():
        known = [e.name for e in specs]
        for name in getattr(spec, kind):
            if name not in known:
                raise SweepError(f"{where}: {kind}: {name!r} is not an entry of evaluations: {kind} "
                                 f"({', '.join(known) or 'none there'})")
    for mode in spec.modes:
        if mode not in MODES:
            raise SweepError(f"{where}: mode {mode!r} is not one of {', '.join(MODES)}")
    for task in spec.tasks:
        config_files.setdefault(_task_stem(task), _task_config(task, configs_dir, where))
    return dataclasses.replace(spec, tasks=tuple(dict.fromkeys(_task_stem(t) for t in spec.tasks)),
                               modes=spec.modes or tuple(modes), seeds=spec.seeds or tuple(seeds))
