"""Sweeps that start from pretraining: ``pretrain`` and ``evaluations`` sections of a sweep file.

A sweep (:mod:`transfer.launch.sweep`) can build its backbones itself and evaluate them on frozen features
besides the Detectron2 tasks, so that one file reruns a whole paper table (Wu et al. Table 2: six
pretraining methods, linear evaluation, five frozen detection tasks)::

    pretrain:                                   # backbones the sweep pretrains
      overrides: [DATA.ROOT, datasets/imagenet] # for every pretraining run
      resources: {gpus_per_node: 8, timeout_min: 4320}   # over the sweep's resources, for these jobs
      backbones:
        ir: configs/pretrain/ir_R_18.yaml       # or {config: FILE, overrides: [KEY, VALUE, ...]}
    evaluations:                                # frozen-feature evaluations of every backbone
      resources: {gpus_per_node: 1}
      linear:                                   # linear evaluation (linear_eval), one run per seed
        imagenet: {config: configs/linear/imagenet.yaml, overrides: [DATA.ROOT, datasets/imagenet]}
      knn:                                      # weighted kNN on frozen features (knn_eval), one run per seed
        imagenet: {config: configs/linear/imagenet.yaml, overrides: [DATA.ROOT, datasets/imagenet, KNN.K, 200]}
      mi:                                       # an MI estimate (estimate_mi's options), one run (its own seeds)
        cdp_all: {data: datasets/cdp/val, pairing: "class:all", k_est: 256, iters: 2000, seeds: 3}
        views: {data: datasets/cdp/val, pairing: simclr, views: pretrain}   # each backbone's own views

A ``curves`` entry in the ``pretrain`` section evaluates the checkpoints of every pretraining run as it goes
on (:mod:`transfer.launch.curves`)::

    pretrain:
      ...
      curves:
        every: 10                     # keep a checkpoint every 10 epochs (SOLVER.SNAPSHOT_EPOCHS) and evaluate it
        linear: [imagenet]            # names of the evaluations section's entries
        knn: [imagenet]
        mi: [cdp_all]
        tasks: [voc_faster_rcnn_R_50_C4_24k]   # Detectron2 tasks, with the sweep's overrides
        modes: [frozen, finetune]     # default: the sweep's modes
        seeds: [0]                    # default: the sweep's seeds
        resources: {timeout_min: 4320}   # the watcher job's (default: one CPU task, the pretraining's time limit)

Run ids and output folders under the sweep root:

- ``pretrain/<backbone>/``: pretraining (``pretrain.training.train``, always resumable), then, in the same job, the
  final checkpoint converted to ``weights.pkl`` (verified, :mod:`transfer.conversion.convert`). Methods whose
  checkpoint is not one RGB ResNet (CMC: two encoders on L and ab) are not converted: their frozen
  evaluations read ``checkpoint_final.pth``, and the sweep leaves them out of the Detectron2 tasks (it
  says so when it is read).
- ``linear_<name>/<backbone>/frozen/seed<k>/results.json``, ``knn_<name>/<backbone>/frozen/seed<k>/results.json``
  and ``mi_<name>/<backbone>/mi.json``. An MI
  estimate with ``views: pretrain`` pairs two views made by each backbone's own pretraining augmentations
  (its ``pretrain/<backbone>/config.yaml``; Lee et al. Fig. 5: "the same augmentation as in the training
  was used for the post-training MI estimation"), so it covers the pretrained backbones only.
- the Detectron2 runs as before, ``<task>/<backbone>/<mode>/seed<k>/``, with ``MODEL.WEIGHTS`` the
  backbone's ``weights.pkl``.

A run that needs a pretrained backbone waits for it: locally (and on the debug cluster) it is submitted
once the pretraining run is done (``--wait`` does that as runs finish; without it, the next
``submit.py sweep`` does); on SLURM it is submitted at once with ``--dependency=afterok:<job>`` and
``--kill-on-invalid-dep=yes`` (a failed pretraining cancels its dependants, and the next ``submit.py
sweep`` resubmits them all).
"""
import dataclasses
import os

from pretrain.common.runs import CHECKPOINT_FINAL, CONFIG_FILE, WEIGHTS_FILE
from transfer.launch.sweep_fields import (SweepError, is_valid_name, read_config_entry, read_mapping,
                                          read_overrides, read_path)

__all__ = ["PretrainSpec", "LinearSpec", "KNNSpec", "MISpec", "CurveSpec", "SNAPSHOT_KEY", "parse_pretrain",
           "parse_curves", "parse_evaluations", "pretrain_output"]

_PRETRAIN_KEYS = ("overrides", "resources", "backbones", "curves")
_EVAL_KEYS = ("resources", "linear", "knn", "mi")
_CURVE_KEYS = ("every", "linear", "knn", "mi", "tasks", "modes", "seeds", "resources")
SNAPSHOT_KEY = "SOLVER.SNAPSHOT_EPOCHS"
_MI_KEYS = ("data", "pairing", "k_est", "iters", "seeds", "views", "extra_args")


@dataclasses.dataclass(frozen=True)
class PretrainSpec:
    name: str
    config: str           # absolute path of the pretraining config
    overrides: tuple      # the section's overrides, then the backbone's
    method: str           # MODEL.METHOD of the merged config
    rgb_backbone: bool    # False: not convertible to Detectron2 (CMC)

    @property
    def done_file(self):
        """What the pretraining run leaves when it is done: the converted weights, or its final checkpoint."""
        return WEIGHTS_FILE if self.rgb_backbone else CHECKPOINT_FINAL

    def weights(self, root):
        """What the frozen evaluations and the Detectron2 runs read."""
        return os.path.join(pretrain_output(root, self.name), self.done_file)


@dataclasses.dataclass(frozen=True)
class LinearSpec:
    name: str
    config: str
    overrides: tuple


@dataclasses.dataclass(frozen=True)
class KNNSpec:
    name: str
    config: str
    overrides: tuple


@dataclasses.dataclass(frozen=True)
class CurveSpec:
    """What to evaluate on the checkpoint kept every ``every`` epochs of each pretraining run (names of the
    ``evaluations`` section's entries, Detectron2 tasks as in ``tasks``; empty modes/seeds: the sweep's)."""
    every: int
    linear: tuple = ()
    knn: tuple = ()
    mi: tuple = ()
    tasks: tuple = ()
    modes: tuple = ()
    seeds: tuple = ()
    resources: dict = dataclasses.field(default_factory=dict, hash=False, compare=False)


@dataclasses.dataclass(frozen=True)
class MISpec:
    name: str
    data: str
    pairing: str
    k_est: int = None
    iters: int = None
    seeds: int = None
    views: str = None
    extra_args: tuple = ()

    def args(self, pretrain_dir=None):
        """The MI estimate's arguments; ``pretrain_dir``: the backbone's pretraining folder (views: pretrain)."""
        views = self.views
        if views == "pretrain":
            views = os.path.join(pretrain_dir, CONFIG_FILE)
        out = ["--data", self.data, "--pairing", self.pairing]
        for flag, value in (("--k-est", self.k_est), ("--iters", self.iters), ("--seeds", self.seeds),
                            ("--views", views)):
            if value is not None:
                out += [flag, str(value)]
        return out + list(self.extra_args)


def pretrain_output(root, backbone):
    """``ROOT/pretrain/<backbone>``: the folder of a sweep's pretraining run."""
    return os.path.join(os.path.abspath(root), "pretrain", backbone)


def _names(value, where):
    """A list of names (one name alone is a list of one; None: none)."""
    if value is None:
        return ()
    value = value if isinstance(value, list) else [value]
    for item in value:
        if not isinstance(item, (str, int)) or isinstance(item, bool) or not is_valid_name(str(item)):
            raise SweepError(f"{where}: expected names (letters, digits and _.+-), got {item!r}")
    return tuple(dict.fromkeys(str(v) for v in value))


def parse_curves(value, path):
    """The :class:`CurveSpec` of a ``pretrain: curves`` entry, or None without one. The names it gives are
    checked against the evaluations and tasks by :func:`transfer.launch.sweep_file.load_sweep`."""
    where = f"{path}: pretrain: curves"
    section = read_mapping(value, where, _CURVE_KEYS)
    if not section:
        return None
    every = section.get("every")
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise SweepError(f"{where}: 'every' must be a positive number of epochs, got {every!r}")
    seeds = section.get("seeds")
    seeds = [] if seeds is None else (seeds if isinstance(seeds, list) else [seeds])
    for seed in seeds:
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise SweepError(f"{where}: seed {seed!r} must be a non-negative integer")
    resources = section.get("resources") or {}
    if not isinstance(resources, dict):
        raise SweepError(f"{where}: resources must be a mapping")
    tasks = section.get("tasks") or []
    tasks = tasks if isinstance(tasks, list) else [tasks]
    names = {kind: _names(section.get(kind), f"{where}: {kind}") for kind in ("linear", "knn", "mi")}
    spec = CurveSpec(every, names["linear"], names["knn"], names["mi"], tuple(dict.fromkeys(str(t) for t in tasks)),
                     _names(section.get("modes"), f"{where}: modes"), tuple(dict.fromkeys(seeds)), dict(resources))
    if not (spec.linear or spec.knn or spec.mi or spec.tasks):
        raise SweepError(f"{where}: names no evaluation (linear, knn, mi) and no Detectron2 task (tasks)")
    return spec


def parse_pretrain(data, path):
    """``(specs {name: PretrainSpec}, resources dict, curves CurveSpec or None)`` of a sweep file's ``pretrain``
    section."""
    section = read_mapping(data, f"{path}: pretrain", _PRETRAIN_KEYS)
    if not section:
        return {}, {}, None
    curves = parse_curves(section.get("curves"), path)
    common = read_overrides(section.get("overrides"), f"{path}: pretrain")
    resources = section.get("resources") or {}
    if not isinstance(resources, dict):
        raise SweepError(f"{path}: pretrain: resources must be a mapping")
    backbones = section.get("backbones")
    if not isinstance(backbones, dict) or not backbones:
        raise SweepError(f"{path}: pretrain: 'backbones' must map names to pretraining configs")
    specs = {}
    for bname, value in backbones.items():
        bname = str(bname)
        where = f"{path}: pretrain: {bname}"
        if not is_valid_name(bname):
            raise SweepError(f"{where}: a backbone name must be letters, digits and _.+- (it names a folder)")
        config, own = read_config_entry(value, where, "pretraining")
        overrides = common + own
        for key in overrides[::2]:
            if key == "OUTPUT_DIR":
                raise SweepError(f"{where}: overrides may not set OUTPUT_DIR: the sweep puts each run in its folder")
            if key == SNAPSHOT_KEY and curves is not None:
                raise SweepError(f"{where}: overrides may not set {SNAPSHOT_KEY}: 'curves: every' sets it")
        if curves is not None:
            overrides += (SNAPSHOT_KEY, str(curves.every))
        method, rgb = _method_of(config, overrides, where)
        specs[bname] = PretrainSpec(bname, config, overrides, method, rgb)
    return specs, dict(resources), curves


def _method_of(config, overrides, where):
    from pretrain.config import ConfigError, load_config
    from pretrain.methods import get_method_class

    try:
        cfg = load_config(config, list(overrides))
        cls = get_method_class(cfg.MODEL.METHOD)
    except (ConfigError, KeyError) as e:
        raise SweepError(f"{where}: {str(e).strip(chr(34) + chr(39))}") from None
    return cfg.MODEL.METHOD, bool(getattr(cls, "rgb_backbone", True))


def parse_evaluations(data, path):
    """``(linear [LinearSpec], mi [MISpec], knn [KNNSpec], resources dict)`` of a sweep file's ``evaluations``."""
    section = read_mapping(data, f"{path}: evaluations", _EVAL_KEYS)
    resources = section.get("resources") or {}
    if not isinstance(resources, dict):
        raise SweepError(f"{path}: evaluations: resources must be a mapping")
    linear, mi, knn = [], [], []
    for kind in ("linear", "knn", "mi"):
        if not isinstance(section.get(kind) or {}, dict):
            raise SweepError(f"{path}: evaluations: {kind}: expected a mapping of names to evaluations")
        for name in section.get(kind) or {}:
            if not is_valid_name(name):
                raise SweepError(f"{path}: evaluations: {kind}: {name}: a name must be letters, digits and _.+- "
                                 "(it names a folder)")
    for name, value in (section.get("linear") or {}).items():
        config, overrides = read_config_entry(value, f"{path}: evaluations: linear: {name}", "linear-evaluation")
        linear.append(LinearSpec(str(name), config, overrides))
    for name, value in (section.get("knn") or {}).items():
        config, overrides = read_config_entry(value, f"{path}: evaluations: knn: {name}", "kNN-evaluation")
        knn.append(KNNSpec(str(name), config, overrides))
    for name, value in (section.get("mi") or {}).items():
        where = f"{path}: evaluations: mi: {name}"
        value = read_mapping(value, where, _MI_KEYS)
        if "data" not in value or "pairing" not in value:
            raise SweepError(f"{where}: needs 'data' (a folder) and 'pairing' (simclr or class:<attrs>)")
        data_dir = read_path(value["data"], f"{where}: data")
        ints = {}
        for key in ("k_est", "iters", "seeds"):
            if value.get(key) is not None:
                if isinstance(value[key], bool) or not isinstance(value[key], int) or value[key] < 1:
                    raise SweepError(f"{where}: {key} must be a positive integer, got {value[key]!r}")
                ints[key] = value[key]
        extra = value.get("extra_args") or []
        if not isinstance(extra, list):
            raise SweepError(f"{where}: extra_args must be a list of command-line arguments")
        mi.append(MISpec(str(name), data_dir, str(value["pairing"]), views=value.get("views"),
                         extra_args=tuple(map(str, extra)), **ints))
    return linear, mi, knn, dict(resources)
