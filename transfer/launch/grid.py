"""A sweep's runs: the grid expanded into :class:`Run` records, and every run checked before submission.

Every Detectron2 run writes to ``ROOT/<task>/<backbone>/<mode>/seed<k>/`` (its ``OUTPUT_DIR``,
:func:`pretrain.common.runs.run_dir`; ``results.json`` there marks it done). Pretraining runs come
first, then the Detectron2 grid, then the frozen-feature evaluations (:mod:`transfer.launch.pipeline`);
a run that needs a pretrained backbone names that run in ``after``.
"""
import dataclasses
import os

from pretrain.common.runs import MI_FILE, RESULTS_FILE, run_dir, run_id
from pretrain.common.safe_load import TRUST_HINT
from transfer.launch.jobs import JOBS_BY_KIND
from transfer.launch.pipeline import pretrain_output
from transfer.launch.sweep_fields import SweepError

__all__ = ["Run", "expand", "transfer_run", "linear_run", "knn_run", "mi_run", "skipped_backbones", "check_runs"]


@dataclasses.dataclass(frozen=True)
class Run:
    id: str  # "<task>/<backbone>/<mode>/seed<k>", the output dir relative to the root
    task: str
    backbone: str
    weights: str
    mode: str
    seed: int
    config_file: str
    output_dir: str
    overrides: tuple = ()
    kind: str = "transfer"       # transfer | pretrain | linear | knn | mi | convert | watch
    after: tuple = ()            # ids of the runs this one needs (its pretraining, or its checkpoint's conversion)
    args: tuple = ()             # the command's arguments (kinds other than transfer)
    done_file: str = RESULTS_FILE    # in output_dir: its presence marks the run done
    convert: bool = True         # pretrain: convert the final checkpoint to weights.pkl

    @property
    def group(self):
        """Which resources the run's job asks for: transfer, pretrain, watch (a curve watcher) or eval."""
        return {"transfer": "transfer", "pretrain": "pretrain", "watch": "watch"}.get(self.kind, "eval")

    @property
    def opts(self):
        return [*self.overrides, "MODEL.WEIGHTS", self.weights, "TRANSFER.BACKBONE_NAME", self.backbone,
                "TRANSFER.MODE", self.mode, "SEED", str(self.seed), "OUTPUT_DIR", self.output_dir]

    @property
    def argv(self):
        """The run's command-line arguments (``transfer.training.train_net``'s for transfer runs)."""
        if self.kind != "transfer":
            return list(self.args)
        return ["--config-file", self.config_file, *self.opts]

    def command(self, resume=False):
        """The equivalent shell command (quoted); a pretraining stage always resumes."""
        return JOBS_BY_KIND[self.kind].command_line(self.argv, resume)


def _all_backbones(sweep, root):
    """name -> (weights, after): the given backbones, then the pretrained ones (weights they will have)."""
    out = {name: (weights, ()) for name, weights in sweep.backbones.items()}
    for name, spec in sweep.pretrain.items():
        out[name] = (spec.weights(root), (f"pretrain/{name}",))
    return out


def transfer_run(sweep, root, task, backbone, weights, mode, seed, after=()):
    """The Detectron2 run of ``task`` on ``backbone`` (its ``weights``) in ``mode`` with ``seed``."""
    return Run(run_id(task, backbone, mode, seed), task, backbone, weights, mode, seed, sweep.config_files[task],
               run_dir(root, task, backbone, mode, seed), tuple(sweep.overrides), after=after)


def linear_run(spec, root, backbone, weights, seed, after=()):
    """The linear evaluation ``spec`` of ``backbone`` with ``seed``: ``linear_<name>/<backbone>/frozen/seed<k>``."""
    task = f"linear_{spec.name}"
    out = run_dir(root, task, backbone, "frozen", seed)
    args = ("--config-file", spec.config, "--weights", weights, "--out", out, *spec.overrides,
            "DATA.NAME", spec.name, "BACKBONE_NAME", backbone, "SEED", str(seed))
    return Run(run_id(task, backbone, "frozen", seed), task, backbone, weights, "frozen", seed, spec.config, out,
               kind="linear", after=after, args=args)


def knn_run(spec, root, backbone, weights, seed, after=()):
    """The kNN evaluation ``spec`` of ``backbone`` with ``seed``: ``knn_<name>/<backbone>/frozen/seed<k>``."""
    task = f"knn_{spec.name}"
    out = run_dir(root, task, backbone, "frozen", seed)
    args = ("--config-file", spec.config, "--weights", weights, "--out", out, *spec.overrides,
            "DATA.NAME", spec.name, "BACKBONE_NAME", backbone, "SEED", str(seed))
    return Run(run_id(task, backbone, "frozen", seed), task, backbone, weights, "frozen", seed, spec.config, out,
               kind="knn", after=after, args=args)


def mi_run(spec, root, backbone, weights, pretrain_dir=None, after=()):
    """The MI estimate ``spec`` of ``backbone``: ``mi_<name>/<backbone>`` (one run, its own seeds)."""
    task = f"mi_{spec.name}"
    out = os.path.join(root, task, backbone)  # one estimate over its own seeds: no mode/seed folders
    args = ("--weights", weights, *spec.args(pretrain_dir), "--out", out, "--backbone-name", backbone)
    return Run(f"{task}/{backbone}", task, backbone, weights, "frozen", 0, "", out, kind="mi", after=after, args=args,
               done_file=MI_FILE)


def expand(sweep, root):
    """Every run: pretraining first, then the Detectron2 grid in the order task, backbone, mode, seed,
    then the frozen-feature evaluations. (The runs of the checkpoints kept for transfer curves appear as
    the pretraining writes them: :func:`transfer.launch.curves.curve_runs`.)"""
    root = os.path.abspath(root)
    runs = []
    for name, spec in sweep.pretrain.items():
        out = pretrain_output(root, name)
        runs.append(Run(f"pretrain/{name}", "pretrain", name, "", "pretrain", 0, spec.config, out,
                        kind="pretrain", args=("--config-file", spec.config, *spec.overrides, "OUTPUT_DIR", out),
                        done_file=spec.done_file, convert=spec.rgb_backbone))
    backbones = _all_backbones(sweep, root)
    for task in sweep.tasks:
        for backbone, (weights, after) in backbones.items():
            if backbone in sweep.pretrain and not sweep.pretrain[backbone].rgb_backbone:
                continue  # CMC and the like: no RGB ResNet for Detectron2 (see pipeline.parse_pretrain)
            for mode in sweep.modes:
                for seed in sweep.seeds:
                    runs.append(transfer_run(sweep, root, task, backbone, weights, mode, seed, after))
    for spec in sweep.linear:
        for backbone, (weights, after) in backbones.items():
            if weights:  # random initialisation: nothing to load for a frozen evaluation
                runs += [linear_run(spec, root, backbone, weights, seed, after) for seed in sweep.seeds]
    for spec in sweep.knn:
        for backbone, (weights, after) in backbones.items():
            if weights:
                runs += [knn_run(spec, root, backbone, weights, seed, after) for seed in sweep.seeds]
    for spec in sweep.mi:
        for backbone, (weights, after) in backbones.items():
            if not weights or (spec.views == "pretrain" and backbone not in sweep.pretrain):
                continue
            runs.append(mi_run(spec, root, backbone, weights, pretrain_output(root, backbone), after))
    return runs


def skipped_backbones(sweep):
    """Pretrained backbones left out of the Detectron2 tasks, with the reason (for the user)."""
    return {name: f"MODEL.METHOD {spec.method}: not one RGB ResNet, so no Detectron2 weights"
            for name, spec in sweep.pretrain.items() if not spec.rgb_backbone and sweep.tasks}


def check_runs(runs, res, group_resources=None):
    """Build the config of every (task, backbone, mode) for the job's processes and check the datasets
    they name, and every pretraining config and its data, before anything is submitted. Raises
    ConfigError/DatasetError/PretrainError/SweepError (one line). ``group_resources``: the resources of
    the pretrain and eval jobs (default ``res``)."""
    from transfer.data.datasets import register_from_config
    from transfer.data.validate import check_run_data
    from transfer.training.config import ConfigError, build_config

    group_resources = group_resources or {}
    configs, seen = [], set()
    for run in runs:
        if run.kind == "pretrain":
            _check_pretrain(run, group_resources.get("pretrain", res))
            continue
        if run.kind in ("linear", "knn"):
            _check_linear(run)
            continue
        if run.kind in ("convert", "watch"):
            continue
        if run.kind == "mi":
            data = run.args[run.args.index("--data") + 1]
            if not os.path.isdir(data):
                raise SweepError(f"{run.id}: MI data folder not found: {data}")
            continue
        key = (run.task, run.backbone, run.mode)
        if key in seen:
            continue
        seen.add(key)
        opts = list(run.opts)
        if run.after:  # the weights do not exist yet: check the config with a random initialisation
            opts[opts.index("MODEL.WEIGHTS") + 1] = ""
        try:
            cfg = build_config(run.config_file, opts, world_size=res.world_size, has_cuda=res.gpus_per_node > 0)
        except ConfigError as e:
            raise ConfigError(_sweep_hint(str(e))) from None
        register_from_config(cfg.TRANSFER.COCO_DATASETS)
        configs.append(cfg)
    # each dataset is read once (the checks are kept in memory and cached on disk while the files are
    # unchanged); the jobs do not check again (transfer.training.train_net.run)
    for cfg in configs:
        check_run_data(cfg)


# the reader's hint names a flag of the commands that load one file; sweep jobs read weights safely only
_SWEEP_TRUST_HINT = ("sweeps read weights safely only: if you trust the file's source, convert it once with "
                     "tools/convert_backbone.py --trust-pickle and name the converted .pkl")


def _sweep_hint(message):
    return message.replace(TRUST_HINT, _SWEEP_TRUST_HINT)


def _check_pretrain(run, res):
    """The pretraining config and its data folder, for the job's processes (pretrain.training.train.setup)."""
    from pretrain.training import train
    train.setup(train.argument_parser().parse_args(list(run.args)), world_size=res.world_size)


def _check_linear(run):
    """The linear- or kNN-evaluation config, its overrides and data folders (the command's own checks);
    weights that a pretraining run will write are not there yet, so only they are taken on trust."""
    from pretrain.evaluation import knn
    from pretrain.evaluation.linear import command
    from pretrain.evaluation.linear.config import LinearEvalError, check_config, load_config

    parse_args, load, check = (knn.parse_args, knn.load_config, knn.check_knn_config) if run.kind == "knn" else \
        (command.parse_args, load_config, check_config)
    args = parse_args(list(run.args))
    try:
        cfg = load(args.config_file, list(args.opts) + [
            "WEIGHTS", args.weights if os.path.exists(args.weights) or not run.after else os.devnull])
        check(cfg)
    except LinearEvalError as e:
        raise SweepError(f"{run.id}: {e}") from None
