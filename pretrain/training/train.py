"""Contrastive pretraining: the command line, the checked config, and the launch of every process.

    python tools/pretrain_backbone.py --config-file configs/pretrain/<name>.yaml [--num-gpus N] [--resume]
        [--trust-pickle] KEY VALUE ...

One process by default; ``--num-gpus N`` spawns N local workers (NCCL on GPUs, gloo on CPU); under
torchrun, SLURM or submitit the environment names the processes (:mod:`pretrain.common.distributed`) and every
process runs one worker (:class:`pretrain.training.trainer.Trainer`). Launchers call the library
directly, in every task of the job::

    from pretrain.training.train import parse_args, setup, run
    cfg = setup(parse_args(["--config-file", path, "DATA.ROOT", root, ...]), world_size=num_tasks)
    run(cfg, resume=True)   # rank, world size and rendezvous from the environment (SLURM / torchrun)

(``resume=True`` is what a requeued, preempted job wants: it continues from ``checkpoint_last.pth`` when
there is one and starts fresh otherwise.) ``SOLVER.STOP_ITER`` ends a run early with a checkpoint, as a
preemption would, to split a long run into jobs.

Outputs in ``OUTPUT_DIR`` (formats in docs/artifacts.md): ``checkpoint_last.pth`` (every
``SOLVER.CHECKPOINT_PERIOD`` iterations, at every epoch end and when stopping), ``checkpoint_final.pth``
(at the end), ``checkpoint_epochXXXX.pth`` (with ``SOLVER.SNAPSHOT_EPOCHS`` K > 0: after every K-th epoch, kept for
evaluations and never rewritten), ``metrics.jsonl`` (one JSON object per logged step: ``iter``, ``epoch``, ``loss``, ``lr``,
``mi_bound``, ``mi_ceiling``, ``images_per_sec``, ``data_time``, ...; and kNN lines with ``knn_top1``),
TensorBoard scalars, ``log.txt`` and ``config.yaml``. ``--resume`` continues from ``checkpoint_last.pth``
and reproduces the loss sequence of an uninterrupted run exactly on CPU (same seed, same number of
processes).

Errors a user can cause (config, data folder, architecture, method) end with one line and exit status 2,
before anything expensive starts (:mod:`pretrain.training.checks`).
"""
import argparse
import os
import sys
import tempfile
import time

from torch.multiprocessing import ProcessExitedException

from pretrain.common import distributed as du
from pretrain.common.cli import ArgumentParser, one_line_errors
from pretrain.common.fileio import unwritable_reason
from pretrain.config import ConfigError, load_config
from pretrain.data.images import DataError
from pretrain.training.checkpoint import CheckpointError
from pretrain.training.checks import PretrainError, check_config
from pretrain.training.trainer import Trainer

__all__ = ["PROG", "argument_parser", "parse_args", "setup", "run", "main", "load_config_text"]

PROG = "pretrain_backbone"
USER_ERRORS = (PretrainError, DataError, CheckpointError)  # one line, exit status 2


def argument_parser():
    parser = ArgumentParser(prog=PROG, description="Contrastive pretraining (MoCo v1/v2, InfoMin, IR, BALL, ANN, "
                                                   "LA, BALL+, ANN+, CMC).",
                            epilog="KEY VALUE pairs override config keys, e.g. DATA.ROOT /data/imagenet "
                                   "MODEL.ARCH resnet18 INPUT.SIZE 64 SOLVER.MAX_ITER 50")
    parser.add_argument("--config-file", default="", metavar="FILE", help="YAML config (configs/pretrain/)")
    parser.add_argument("--num-gpus", type=int, default=1,
                        help="local worker processes to spawn (one per GPU; CPU processes with gloo without GPUs)")
    parser.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR/checkpoint_last.pth")
    parser.add_argument("--trust-pickle", action="store_true",
                        help="with --resume: allow full unpickling of the checkpoint (can run code from the file: only "
                             "for files you trust)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, metavar="KEY VALUE", help="config overrides")
    return parser


def parse_args(argv=None):
    """Parse; flags written after the KEY VALUE pairs (``... SOLVER.MAX_ITER 50 --resume``) count too."""
    parser = argument_parser()
    args = parser.parse_args(argv)
    opts, rest = [], list(args.opts)
    while rest:
        item = rest.pop(0)
        if item == "--resume":
            args.resume = True
        elif item == "--trust-pickle":
            args.trust_pickle = True
        elif item in ("--num-gpus", "--config-file") or item.startswith(("--num-gpus=", "--config-file=")):
            name, _, value = item.partition("=")
            if not value:
                if not rest:
                    parser.error(f"argument {name}: expected one argument")
                value = rest.pop(0)
            if name == "--num-gpus":
                try:
                    args.num_gpus = int(value)
                except ValueError:
                    parser.error(f"argument --num-gpus: invalid int value: {value!r}")
            else:
                args.config_file = value
        else:
            opts.append(item)
    args.opts = opts
    if args.num_gpus < 1:
        parser.error("argument --num-gpus: must be >= 1")
    return args


def setup(args, world_size=None):
    """Config from parsed ``args`` (defaults + file + overrides), validated, SEED drawn if < 0, frozen."""
    try:
        cfg = load_config(args.config_file or None, args.opts)
    except ConfigError as e:
        raise PretrainError(str(e)) from None
    if world_size is None:
        info = du.env_dist_info()
        world_size = info.world_size if info else max(1, args.num_gpus)
    check_config(cfg, world_size)
    if cfg.SEED < 0:
        cfg.SEED = int.from_bytes(os.urandom(4), "little") & 0x7FFFFFFF
    reason = unwritable_reason(cfg.OUTPUT_DIR)  # checked, not created: a refused run leaves nothing behind
    if reason:
        raise PretrainError(f"OUTPUT_DIR {reason}")
    cfg.freeze()
    return cfg


def run(cfg, num_gpus=1, resume=False, dist_info="auto", trust_pickle=False):
    """Train with ``cfg`` (a validated config, e.g. from :func:`setup`) in every process of the job.

    ``dist_info``: "auto" reads the environment (torchrun/SLURM/submitit; one worker per process), or a
    :class:`~pretrain.common.distributed.DistInfo`, or None to spawn ``num_gpus`` local workers.
    ``trust_pickle``: read the resumed checkpoint with full unpickling (``--trust-pickle``).
    """
    info = du.env_dist_info() if dist_info == "auto" else dist_info
    return du.launch(_worker, args=(cfg.dump(), bool(resume), bool(trust_pickle)), num_local=num_gpus, info=info)


def _worker(info, cfg_text, resume, trust_pickle=False):
    cfg = load_config_text(cfg_text)
    try:
        trainer = Trainer(cfg, info, resume, trust_pickle=trust_pickle)
        try:
            return trainer.train()
        finally:
            trainer.close()
    except USER_ERRORS as e:
        if info.source != "spawn":
            raise
        # a spawned worker: one line (from rank 0; the others usually fail alike) and exit status 2
        if info.rank == 0:
            print(f"{PROG}: error: {' '.join(str(e).split())}", file=sys.stderr)
            sys.stderr.flush()
        else:
            time.sleep(2)  # let rank 0 say it before the parent stops the workers
        os._exit(2)


def load_config_text(text):
    """A config from its YAML text (``cfg.dump()``, a checkpoint's ``config``), read as a config file is."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write(text)
    try:
        return load_config(f.name)
    finally:
        os.unlink(f.name)


def main(argv=None):
    """``tools/pretrain_backbone.py``: returns the exit status (2 after a one-line error on stderr)."""
    args = parse_args(argv)
    made = []  # OUTPUT_DIR when this run creates it: removed again if a refused run leaves it empty
    try:
        with one_line_errors(PROG, *USER_ERRORS):
            cfg = setup(args)
            if not os.path.exists(cfg.OUTPUT_DIR):
                made.append(cfg.OUTPUT_DIR)
            run(cfg, num_gpus=args.num_gpus, resume=args.resume, trust_pickle=args.trust_pickle)
    except SystemExit as stop:  # one_line_errors has printed the line
        _remove_if_empty(made)
        return stop.code
    except ProcessExitedException as e:
        if e.exit_code == 2:
            _remove_if_empty(made)
            return 2  # a spawned worker already printed its one-line error
        raise
    return 0


def _remove_if_empty(folders):
    for folder in folders:
        try:
            os.rmdir(folder)  # only an empty folder: never anything a run wrote
        except OSError:
            pass
