"""Sweeps that start from pretraining: ``pretrain`` and ``evaluations`` sections of a sweep file.

A sweep (:mod:`transfer.sweep`) can build its backbones itself and evaluate them on frozen features
besides the Detectron2 tasks, so that one file reruns a whole paper table (Wu et al. Table 2: six
pretraining methods, linear evaluation, five frozen detection tasks)::

    pretrain:                                   # backbones the sweep pretrains
      overrides: [DATA.ROOT, datasets/imagenet] # for every pretraining run
      resources: {gpus_per_node: 8, timeout_min: 4320}   # over the sweep's resources, for these jobs
      backbones:
        ir: configs/pretrain/ir_R_18.yaml       # or {config: FILE, overrides: [KEY, VALUE, ...]}
    evaluations:                                # frozen-feature evaluations of every backbone
      resources: {gpus_per_node: 1}
      linear:                                   # python -m pretrain.linear_eval, one run per seed
        imagenet: {config: configs/linear/imagenet.yaml, overrides: [DATA.ROOT, datasets/imagenet]}
      mi:                                       # tools/estimate_mi.py, one run (its own seeds)
        cdp_all: {data: datasets/cdp/val, pairing: "class:all", k_est: 256, iters: 2000, seeds: 3}
        views: {data: datasets/cdp/val, pairing: simclr, views: pretrain}   # each backbone's own views

Run ids and output folders under the sweep root:

- ``pretrain/<backbone>/``: ``python -m pretrain.train`` (always resumable), then, in the same job, the
  final checkpoint converted to ``weights.pkl`` (verified, :mod:`transfer.convert`). Methods whose
  checkpoint is not one RGB ResNet (CMC: two encoders on L and ab) are not converted: their frozen
  evaluations read ``checkpoint_final.pth``, and the sweep leaves them out of the Detectron2 tasks (it
  says so when it is read).
- ``linear_<name>/<backbone>/frozen/seed<k>/results.json`` and ``mi_<name>/<backbone>/mi.json``. An MI
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
import subprocess
import sys

from transfer.submit import PretrainJob, _Job, job_distribution

__all__ = ["PretrainSpec", "LinearSpec", "MISpec", "PretrainStageJob", "CommandJob", "parse_pretrain",
           "parse_evaluations", "pretrain_output", "WEIGHTS_FILE", "REPO_ROOT"]

WEIGHTS_FILE = "weights.pkl"
FINAL_CHECKPOINT = "checkpoint_final.pth"
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ESTIMATE_MI = os.path.join(REPO_ROOT, "tools", "estimate_mi.py")
_PRETRAIN_KEYS = ("overrides", "resources", "backbones")
_EVAL_KEYS = ("resources", "linear", "mi")
_MI_KEYS = ("data", "pairing", "k_est", "iters", "seeds", "views", "extra_args")


@dataclasses.dataclass(frozen=True)
class PretrainSpec:
    name: str
    config: str           # absolute path of the pretraining config
    overrides: tuple      # the section's overrides, then the backbone's
    method: str           # MODEL.METHOD of the merged config
    rgb_backbone: bool    # False: not convertible to Detectron2 (CMC)

    def weights(self, root):
        """What the frozen evaluations and the Detectron2 runs read."""
        return os.path.join(pretrain_output(root, self.name), WEIGHTS_FILE if self.rgb_backbone else FINAL_CHECKPOINT)


@dataclasses.dataclass(frozen=True)
class LinearSpec:
    name: str
    config: str
    overrides: tuple


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
        """estimate_mi.py's arguments; ``pretrain_dir``: the backbone's pretraining folder (views: pretrain)."""
        views = self.views
        if views == "pretrain":
            views = os.path.join(pretrain_dir, "config.yaml")
        out = ["--data", self.data, "--pairing", self.pairing]
        for flag, value in (("--k-est", self.k_est), ("--iters", self.iters), ("--seeds", self.seeds),
                            ("--views", views)):
            if value is not None:
                out += [flag, str(value)]
        return out + list(self.extra_args)


def pretrain_output(root, backbone):
    return os.path.join(os.path.abspath(root), "pretrain", backbone)


def _error(message):
    from transfer.sweep import SweepError

    return SweepError(message)


def _overrides(value, where):
    from transfer.sweep import _override_text

    value = value or []
    if not isinstance(value, list) or len(value) % 2:
        raise _error(f"{where}: overrides must be a list of KEY, VALUE pairs")
    return tuple(_override_text(v) for v in value)


def _path(value, where):
    """An absolute path: relative paths are taken from the working directory, or else (configs shipped
    with the project, e.g. configs/pretrain/ir_R_18.yaml) from the project's root."""
    if not isinstance(value, str) or not value:
        raise _error(f"{where}: expected a file or folder path, got {value!r}")
    if os.path.isabs(value):
        return value
    here = os.path.abspath(value)
    shipped = os.path.join(REPO_ROOT, value)
    return shipped if not os.path.exists(here) and os.path.exists(shipped) else here


def _mapping(value, where, keys):
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _error(f"{where}: expected a mapping with keys {', '.join(keys)}")
    unknown = sorted(set(map(str, value)) - set(keys))
    if unknown:
        raise _error(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(keys)}")
    return value


def _config_entry(value, where, what):
    """``(config path, overrides)`` of a ``name: FILE`` or ``name: {config: FILE, overrides: [...]}`` entry."""
    if isinstance(value, str):
        value = {"config": value}
    value = _mapping(value, where, ("config", "overrides"))
    config = _path(value.get("config"), f"{where}: config")
    if not os.path.isfile(config):
        raise _error(f"{where}: {what} config not found: {value.get('config')}")
    return config, _overrides(value.get("overrides"), where)


def parse_pretrain(data, path, name_ok):
    """``(specs {name: PretrainSpec}, resources dict)`` of a sweep file's ``pretrain`` section."""
    section = _mapping(data, f"{path}: pretrain", _PRETRAIN_KEYS)
    if not section:
        return {}, {}
    common = _overrides(section.get("overrides"), f"{path}: pretrain")
    resources = section.get("resources") or {}
    if not isinstance(resources, dict):
        raise _error(f"{path}: pretrain: resources must be a mapping")
    backbones = section.get("backbones")
    if not isinstance(backbones, dict) or not backbones:
        raise _error(f"{path}: pretrain: 'backbones' must map names to pretraining configs")
    specs = {}
    for bname, value in backbones.items():
        bname = str(bname)
        where = f"{path}: pretrain: {bname}"
        if not name_ok(bname):
            raise _error(f"{where}: a backbone name must be letters, digits and _.+- (it names a folder)")
        config, own = _config_entry(value, where, "pretraining")
        overrides = common + own
        for key in overrides[::2]:
            if key == "OUTPUT_DIR":
                raise _error(f"{where}: overrides may not set OUTPUT_DIR: the sweep puts each run in its folder")
        method, rgb = _method_of(config, overrides, where)
        specs[bname] = PretrainSpec(bname, config, overrides, method, rgb)
    return specs, dict(resources)


def _method_of(config, overrides, where):
    from pretrain.config import ConfigError, load_config
    from pretrain.methods import get_method_class

    try:
        cfg = load_config(config, list(overrides))
        cls = get_method_class(cfg.MODEL.METHOD)
    except (ConfigError, KeyError) as e:
        raise _error(f"{where}: {str(e).strip(chr(34) + chr(39))}") from None
    return cfg.MODEL.METHOD, bool(getattr(cls, "rgb_backbone", True))


def parse_evaluations(data, path):
    """``(linear [LinearSpec], mi [MISpec], resources dict)`` of a sweep file's ``evaluations``."""
    section = _mapping(data, f"{path}: evaluations", _EVAL_KEYS)
    resources = section.get("resources") or {}
    if not isinstance(resources, dict):
        raise _error(f"{path}: evaluations: resources must be a mapping")
    from transfer.sweep import _NAME

    linear, mi = [], []
    for kind in ("linear", "mi"):
        if not isinstance(section.get(kind) or {}, dict):
            raise _error(f"{path}: evaluations: {kind}: expected a mapping of names to evaluations")
        for name in section.get(kind) or {}:
            if not _NAME.match(str(name)):
                raise _error(f"{path}: evaluations: {kind}: {name}: a name must be letters, digits and _.+- "
                             "(it names a folder)")
    for name, value in (section.get("linear") or {}).items():
        config, overrides = _config_entry(value, f"{path}: evaluations: linear: {name}", "linear-evaluation")
        linear.append(LinearSpec(str(name), config, overrides))
    for name, value in (section.get("mi") or {}).items():
        where = f"{path}: evaluations: mi: {name}"
        value = _mapping(value, where, _MI_KEYS)
        if "data" not in value or "pairing" not in value:
            raise _error(f"{where}: needs 'data' (a folder) and 'pairing' (simclr or class:<attrs>)")
        data_dir = _path(value["data"], f"{where}: data")
        ints = {}
        for key in ("k_est", "iters", "seeds"):
            if value.get(key) is not None:
                if isinstance(value[key], bool) or not isinstance(value[key], int) or value[key] < 1:
                    raise _error(f"{where}: {key} must be a positive integer, got {value[key]!r}")
                ints[key] = value[key]
        extra = value.get("extra_args") or []
        if not isinstance(extra, list):
            raise _error(f"{where}: extra_args must be a list of command-line arguments")
        mi.append(MISpec(str(name), data_dir, str(value["pairing"]), views=value.get("views"),
                         extra_args=tuple(map(str, extra)), **ints))
    return linear, mi, dict(resources)


# ------------------------------------------------------------------------------------------ the jobs

class PretrainStageJob(PretrainJob):
    """Pretraining (resumed when there is a checkpoint), then, on rank 0, the final checkpoint converted
    to verified Detectron2 weights (``weights.pkl``) unless ``convert`` is False."""

    def __init__(self, argv, output_dir, cfg_text, convert=True, resume=True, cwd=None, env=None):
        super().__init__(argv, output_dir, cfg_text, resume=resume, cwd=cwd, env=env)
        self.convert = bool(convert)

    def __call__(self):
        final = super().__call__()
        if self.convert and job_distribution()["rank"] == 0:
            from transfer.convert import convert

            out = os.path.join(self.output_dir, WEIGHTS_FILE)
            result = convert(final, out)
            print(result.summary(), flush=True)
            return out
        return final


class CommandJob(_Job):
    """A single-process evaluation run as a subprocess (``python -m <module> ARGV`` or ``python SCRIPT ARGV``);
    fails with the command's last error line."""

    def __init__(self, target, argv, output_dir, resume=False, cwd=None, env=None):
        super().__init__(argv, output_dir, resume=resume, cwd=cwd, env=env)
        self.target = target

    @property
    def module(self):
        return None if self.target.endswith(".py") else self.target

    def command_argv(self):
        head = [self.target] if self.target.endswith(".py") else ["-m", self.target]
        return [sys.executable, *head, *self.argv]

    def __call__(self):
        self._enter()
        proc = subprocess.run(self.command_argv(), stdout=sys.stdout, stderr=subprocess.PIPE, text=True)
        if proc.stderr:
            sys.stderr.write(proc.stderr)
        if proc.returncode != 0:
            lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
            raise RuntimeError(f"{' '.join(self.command_argv()[1:3])} exited with status {proc.returncode}: "
                               f"{lines[-1] if lines else 'no error message'}")
        return self.output_dir
