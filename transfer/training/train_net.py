"""Run one published transfer setting on a backbone: train, evaluate, write ``results.json``.

    python tools/train_net.py --config-file configs/transfer/<name>.yaml [--num-gpus N]
        [--num-machines M --machine-rank R --dist-url URL] [--eval-only [--random-init]] [--resume]
        [--trust-pickle] KEY VALUE ...
    python tools/train_net.py --config-file ... --print-config [--reference | --num-gpus N] KEY VALUE ...

Detectron2's argument conventions. Before any model is built this checks the config (duplicate keys,
the weights' meta, the mode) and the datasets it names; errors end with one line and exit code 2.
Processes are started and joined by :mod:`pretrain.common.distributed`; this module adds only what
Detectron2 needs on top (its per-machine process group). ``results.json`` is described in docs/artifacts.md.
"""
import argparse
import logging
import os
import random
import sys

import torch
from detectron2.engine import default_setup
from detectron2.utils import comm

from pretrain.common import distributed as du
from pretrain.common.cli import ArgumentParser, one_line_errors
from pretrain.common.runs import backbone_label, results_record, run_dir, write_results
from transfer.data.datasets import DatasetError, register_from_config
from transfer.data.shared_parse import check_while_loading
from transfer.data.validate import check_run_data
from pretrain.common.safe_load import CheckpointError
from transfer.training.checkpointer import CheckpointWriteError, SafeCheckpointer
from transfer.training.config import ConfigError, build_config, effective_config_text, reference_config
from transfer.training.protocol import describe, protocol_fields
from transfer.training.run_checks import check_output_dir, check_resume, check_weights, evaluated_weights
from transfer.training.trainer import TransferTrainer

__all__ = ["PROG", "argument_parser", "parse_args", "prepare", "run", "join_process_group",
           "run_in_process_group", "main", "task_name", "default_output_dir", "config_report"]

logger = logging.getLogger("transfer.training.train_net")
PROG = "train_net"
DEFAULT_OUTPUT_DIR = "./output"  # Detectron2's default OUTPUT_DIR


def argument_parser():
    """Detectron2's ``default_argument_parser`` flags, with one-line usage errors."""
    parser = ArgumentParser(prog=PROG, description="Train and evaluate one transfer setting (Detectron2).",
                            epilog="KEY VALUE pairs override config keys, e.g. MODEL.WEIGHTS weights/x.pkl "
                                   "TRANSFER.MODE frozen SEED 1")
    parser.add_argument("--config-file", default="", metavar="FILE", help="YAML config (configs/transfer/)")
    parser.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR's last checkpoint")
    parser.add_argument("--eval-only", action="store_true",
                        help="evaluate MODEL.WEIGHTS (or with --resume OUTPUT_DIR's last checkpoint) without training; "
                             "results.json then says eval_only, iterations 0")
    parser.add_argument("--random-init", action="store_true",
                        help="with --eval-only and no MODEL.WEIGHTS: evaluate a randomly initialised model on purpose")
    parser.add_argument("--trust-pickle", action="store_true",
                        help="allow full unpickling of MODEL.WEIGHTS and resume checkpoints (can run code from the "
                             "file: only for files you trust)")
    parser.add_argument("--num-gpus", type=int, default=1,
                        help="processes per machine (one per GPU; CPU processes with gloo without GPUs)")
    parser.add_argument("--num-machines", type=int, default=1, help="machines of the job")
    parser.add_argument("--machine-rank", type=int, default=0, help="this machine's rank (0 to M - 1)")
    parser.add_argument("--dist-url", default="auto",
                        help="rendezvous of the processes, e.g. tcp://HOST:PORT of machine 0 "
                             "(default auto: a free port on this machine)")
    parser.add_argument("--print-config", action="store_true",
                        help="print the run's effective config (after the weights' meta, the mode and the "
                             "overrides) for --num-gpus x --num-machines processes, with the protocol it "
                             "claims and every deviation from it, and exit (reads no data, builds no model)")
    parser.add_argument("--reference", action="store_true",
                        help="with --print-config: for the config's reference hardware (SOLVER.REFERENCE_WORLD_SIZE "
                             "processes with CUDA, the published 8 GPUs) instead")
    parser.add_argument("opts", nargs=argparse.REMAINDER, metavar="KEY VALUE", help="config overrides")
    return parser


def parse_args(argv=None):
    parser = argument_parser()
    args = parser.parse_args(argv)
    if args.num_gpus < 1 or args.num_machines < 1 or not 0 <= args.machine_rank < args.num_machines:
        parser.error("--num-gpus and --num-machines must be >= 1 and --machine-rank in [0, --num-machines)")
    if args.dist_url == "auto" and args.num_machines > 1:
        parser.error("--dist-url auto works on one machine only; give tcp://HOST:PORT")
    if args.reference and not args.print_config:
        parser.error("--reference goes with --print-config")
    if args.random_init and not args.eval_only:
        parser.error("--random-init goes with --eval-only")
    if not args.print_config and torch.cuda.is_available() and args.num_gpus > torch.cuda.device_count():
        parser.error(f"--num-gpus {args.num_gpus} but this machine has {torch.cuda.device_count()} GPUs")
    return args


def task_name(config_file):
    return os.path.splitext(os.path.basename(config_file))[0]


def default_output_dir(cfg, task):
    """``./output/<task>/<backbone>/<mode>/seed<k>``: the layout of a sweep's runs."""
    backbone = backbone_label(cfg.TRANSFER.BACKBONE_NAME, cfg.MODEL.WEIGHTS)
    return run_dir(DEFAULT_OUTPUT_DIR, task, backbone, cfg.TRANSFER.MODE, cfg.SEED)


def config_report(args):
    """``--print-config``: the effective config and the protocol lines (claim, deviations) as text.

    For ``--num-gpus`` x ``--num-machines`` processes on this machine's devices, or with ``--reference``
    for the config's reference hardware. Reads the config files and the weights' meta only."""
    world_size = args.num_gpus * args.num_machines
    trust = args.trust_pickle
    text = effective_config_text(args.config_file, args.opts, world_size=world_size, reference=args.reference,
                                 trust_pickle=trust)
    if args.reference:
        cfg = reference_config(args.config_file, args.opts, trust_pickle=trust)
    else:
        cfg = build_config(args.config_file, args.opts, world_size=world_size, trust_pickle=trust)
    return text + describe(cfg)


def prepare(args, world_size, check_training_at_load=False):
    """Build and check the effective config in the launching process (fail fast, before spawning).

    Everything a user can get wrong is refused here in one line, before anything is written: the config
    (keys, values, weights' meta, mode), OUTPUT_DIR, the weights file, the architecture of a resumed run,
    what ``--eval-only`` evaluates, and the datasets. ``check_training_at_load`` (processes started right
    away on this machine): a COCO or LVIS training set whose check is not cached is checked by each of the
    run's processes on its own parse of the file for loading (:mod:`transfer.data.shared_parse`) instead;
    its name goes to ``args.check_at_load``."""
    opts = list(args.opts)
    trust = getattr(args, "trust_pickle", False)
    cfg = build_config(args.config_file, opts, world_size=world_size, trust_pickle=trust)
    protocol_fields(cfg)  # the claimed protocol exists and is one of this mode's (one line otherwise)
    if cfg.SEED < 0:
        # one seed for all processes, recorded in config.yaml and results.json
        opts += ["SEED", str(random.SystemRandom().randrange(2**31))]
        cfg = build_config(args.config_file, opts, world_size=world_size, trust_pickle=trust)
    out_dir = cfg.OUTPUT_DIR
    if "OUTPUT_DIR" not in opts[::2] and cfg.OUTPUT_DIR == DEFAULT_OUTPUT_DIR:
        # runs of other tasks, backbones, modes and seeds never share a folder
        out_dir = default_output_dir(cfg, task_name(args.config_file))
        if args.eval_only and not args.resume:  # never over a training run's results.json
            out_dir = os.path.join(out_dir, "eval_only")
        opts += ["OUTPUT_DIR", out_dir]
    check_output_dir(out_dir, ConfigError)
    check_weights(cfg.MODEL.WEIGHTS, trust, ConfigError)  # crafted or damaged: one line, before any model
    if args.resume:
        check_resume(cfg, out_dir, trust, ConfigError)  # before Detectron2 rewrites config.yaml
    if args.eval_only:
        evaluated_weights(cfg, out_dir, args.resume, getattr(args, "random_init", False), ConfigError)
    register_from_config(cfg.TRANSFER.COCO_DATASETS)
    # every annotation, and what this config needs of its datasets (cached while they are unchanged)
    summaries = check_run_data(cfg, eval_only=args.eval_only, defer_training=check_training_at_load)
    args.check_at_load = [] if args.eval_only else [n for n in cfg.DATASETS.TRAIN if n not in summaries]
    return opts


def run(args, opts):
    """What every process runs: set up, train (unless --eval-only), evaluate, write results.json.

    The datasets are not checked here: :func:`prepare` checked them in the launching process, or the
    submission (``tools/submit.py``, a sweep) did before submitting this job; training sets it left to the
    run (``args.check_at_load``) are checked and loaded first here, on one parse of each file."""
    cfg = build_config(args.config_file, opts, world_size=comm.get_world_size())
    register_from_config(cfg.TRANSFER.COCO_DATASETS)
    if getattr(args, "check_at_load", None):
        check_while_loading(cfg, args.check_at_load)
    default_setup(cfg, args)
    if args.eval_only:
        model = TransferTrainer.build_model(cfg)
        checkpointer = SafeCheckpointer(model, save_dir=cfg.OUTPUT_DIR)
        checkpointer.trust_pickle = getattr(args, "trust_pickle", False)
        evaluated = evaluated_weights(cfg, cfg.OUTPUT_DIR, args.resume, getattr(args, "random_init", False),
                                      ConfigError)
        checkpointer.resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        metrics = TransferTrainer.test(cfg, model)
    else:
        trainer = TransferTrainer(cfg)
        trainer.checkpointer.trust_pickle = getattr(args, "trust_pickle", False)
        trainer.resume_or_load(resume=args.resume)
        trainer.train()
        # the evaluation hook evaluates after the last iteration and keeps the numbers here
        metrics = getattr(trainer, "_last_eval_results", None)
        if metrics is None:
            metrics = TransferTrainer.test(cfg, trainer.model)
    if comm.is_main_process():
        extra = protocol_fields(cfg)
        weights, iterations = cfg.MODEL.WEIGHTS, cfg.SOLVER.MAX_ITER
        if args.eval_only:  # an evaluation, not a transfer run: the report keeps it out of its tables
            weights, iterations = evaluated, 0
            extra["eval_only"] = True
        record = results_record(backbone=backbone_label(cfg.TRANSFER.BACKBONE_NAME, cfg.MODEL.WEIGHTS),
                                task=task_name(args.config_file), mode=cfg.TRANSFER.MODE, seed=cfg.SEED,
                                weights=weights, iterations=iterations, metrics=metrics or {}, **extra)
        logger.info(f"wrote {write_results(cfg.OUTPUT_DIR, record)}")
    return metrics


def join_process_group(info, backend="auto"):
    """Join the job's process group (NCCL with CUDA, gloo on CPU) and give Detectron2 its per-machine group.

    Detectron2's ``comm`` needs a process group of the processes on this machine (its ``launch`` makes
    one); one process needs no group.
    """
    use_cuda = torch.cuda.is_available()
    du.init_process_group(info, backend, use_cuda)
    if info.world_size <= 1:
        return
    per_machine = info.local_size
    for first in range(0, info.world_size, per_machine):
        # every process takes part in creating every group
        group = torch.distributed.new_group(list(range(first, first + per_machine)))
        if first <= info.rank < first + per_machine:
            comm._LOCAL_PROCESS_GROUP = group
    comm.synchronize()


def _process(info, args, opts):
    join_process_group(info)
    return run(args, opts)


def run_in_process_group(args, opts, rank=0, world_size=1, local_rank=0, local_world_size=1, dist_url=None,
                         backend="auto"):
    """Run one process of a job whose processes were started by someone else (SLURM tasks, submitit).

    Under a scheduler every task is already one worker: this joins the process group at ``dist_url``
    (see :func:`join_process_group`), then runs :func:`run`. ``opts`` is the list :func:`prepare`
    returned in the submitting process, so that every task (and every requeued attempt) builds the same
    config and seed. One process (``world_size`` 1) needs no group.
    """
    if world_size > 1 and not dist_url:
        raise ValueError("dist_url (tcp://HOST:PORT of rank 0) is required for more than one process")
    info = du.DistInfo(rank, world_size, local_rank, local_world_size, source="scheduler", url=dist_url)
    join_process_group(info, backend or "auto")
    return run(args, opts)


def _stopped(reason):
    """The one line for a run stopped by non-finite values (exit status 1)."""
    print(f"{PROG}: stopped: {reason} the last good checkpoint is kept (see last_checkpoint in OUTPUT_DIR)",
          file=sys.stderr)
    return 1


def main(argv=None):
    """``tools/train_net.py``: returns the exit status (2: a one-line error; 1: stopped by non-finite values)."""
    args = parse_args(argv)
    try:
        with one_line_errors(PROG, ConfigError, DatasetError, CheckpointError, CheckpointWriteError):
            if args.print_config:
                print(config_report(args), end="")
                return 0
            opts = prepare(args, args.num_gpus * args.num_machines, check_training_at_load=True)
            du.launch(_process, args=(args, opts), num_local=args.num_gpus, num_machines=args.num_machines,
                      machine_rank=args.machine_rank, url=None if args.dist_url == "auto" else args.dist_url)
    except SystemExit as stop:  # one_line_errors has printed the line
        return stop.code
    except FloatingPointError as e:
        return _stopped(str(e).splitlines()[0])
    except torch.multiprocessing.ProcessRaisedException as e:
        # a worker process failed; a non-finite loss is the one failure a user can act on directly
        message = next((line for line in str(e).splitlines() if "FloatingPointError" in line), None)
        for error in ("DatasetError", "CheckpointError", "CheckpointWriteError"):
            # data found broken during the run (an unreadable image), a refused or unwritable checkpoint
            broken = next((line for line in reversed(str(e).splitlines()) if f"{error}: " in line), None)
            if message is None and broken is not None:
                print(f"{PROG}: error: {broken.split(f'{error}: ', 1)[1].strip()}", file=sys.stderr)
                return 2
        if message is None:
            raise
        return _stopped(message.split(":", 1)[1].strip())
    return 0
