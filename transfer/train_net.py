"""Run one published transfer setting on a backbone: train, evaluate, write ``results.json``.

    python -m transfer.train_net --config-file configs/transfer/<name>.yaml [--num-gpus N]
        [--num-machines M --machine-rank R --dist-url URL] [--eval-only] [--resume] KEY VALUE ...

Detectron2's argument conventions. Before any model is built this checks the config (duplicate keys,
the weights' meta, the mode) and the datasets it names; errors end with one line and exit code 2.
"""
import logging
import os
import random
import sys

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.engine import default_argument_parser, default_setup
from detectron2.utils import comm

from transfer.config import ConfigError, build_config
from transfer.datasets import DatasetError, register_from_config, validate_datasets
from transfer.engine import TransferTrainer, backbone_label, launch, results_record
from transfer.fileio import write_json_atomic

logger = logging.getLogger("transfer.train_net")
DEFAULT_OUTPUT_DIR = "./output"  # Detectron2's default OUTPUT_DIR


def task_name(config_file):
    return os.path.splitext(os.path.basename(config_file))[0]


def default_output_dir(cfg, task):
    """``./output/<task>/<backbone>/<mode>/seed<k>``: the layout of a sweep's runs."""
    return os.path.join(DEFAULT_OUTPUT_DIR, task, backbone_label(cfg), cfg.TRANSFER.MODE, f"seed{cfg.SEED}")


def prepare(args, world_size):
    """Build and check the effective config in the launching process (fail fast, before spawning)."""
    opts = list(args.opts)
    cfg = build_config(args.config_file, opts, world_size=world_size)
    if cfg.SEED < 0:
        # one seed for all processes, recorded in config.yaml and results.json
        opts += ["SEED", str(random.SystemRandom().randrange(2**31))]
        cfg = build_config(args.config_file, opts, world_size=world_size)
    if "OUTPUT_DIR" not in opts[::2] and cfg.OUTPUT_DIR == DEFAULT_OUTPUT_DIR:
        # runs of other tasks, backbones, modes and seeds never share a folder
        opts += ["OUTPUT_DIR", default_output_dir(cfg, task_name(args.config_file))]
    register_from_config(cfg.TRANSFER.COCO_DATASETS)
    names = list(cfg.DATASETS.TEST) + ([] if args.eval_only else list(cfg.DATASETS.TRAIN))
    validate_datasets(names)
    if cfg.MODEL.WEIGHTS and not os.path.isfile(cfg.MODEL.WEIGHTS):
        raise ConfigError(f"MODEL.WEIGHTS file not found: {cfg.MODEL.WEIGHTS}")
    return opts


def run(args, opts):
    """What every process runs: set up, train (unless --eval-only), evaluate, write results.json."""
    cfg = build_config(args.config_file, opts, world_size=comm.get_world_size())
    register_from_config(cfg.TRANSFER.COCO_DATASETS)
    default_setup(cfg, args)
    if args.eval_only:
        model = TransferTrainer.build_model(cfg)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        metrics = TransferTrainer.test(cfg, model)
    else:
        trainer = TransferTrainer(cfg)
        trainer.resume_or_load(resume=args.resume)
        trainer.train()
        # the evaluation hook evaluates after the last iteration and keeps the numbers here
        metrics = getattr(trainer, "_last_eval_results", None)
        if metrics is None:
            metrics = TransferTrainer.test(cfg, trainer.model)
    if comm.is_main_process():
        record = results_record(cfg, task_name(args.config_file), metrics or {})
        path = os.path.join(cfg.OUTPUT_DIR, "results.json")
        write_json_atomic(path, record)
        logger.info(f"wrote {path}")
    return metrics


def run_in_process_group(args, opts, rank=0, world_size=1, local_rank=0, local_world_size=1, dist_url=None,
                         backend=None):
    """Run one process of a job whose processes were started by someone else (SLURM tasks, submitit).

    Detectron2's ``launch`` spawns its workers itself; under a scheduler every task is already one
    worker. This joins the process group (NCCL with CUDA, gloo on CPU) and sets Detectron2's
    communication state, including its local process group, then runs :func:`run`. ``opts`` is the
    list :func:`prepare` returned in the submitting process, so that every task (and every requeued
    attempt) builds the same config and seed. One process (``world_size`` 1) needs no group.
    """
    from transfer.engine import init_distributed

    if world_size > 1:
        if not dist_url:
            raise ValueError("dist_url (tcp://HOST:PORT of rank 0) is required for more than one process")
        init_distributed(rank, world_size, local_rank, local_world_size, dist_url, backend=backend)
    return run(args, opts)


def main(argv=None):
    args = default_argument_parser().parse_args(argv)
    world_size = args.num_gpus * args.num_machines
    try:
        opts = prepare(args, world_size)
        launch(run, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
               dist_url=args.dist_url, args=(args, opts))
    except (ConfigError, DatasetError) as e:
        print(f"train_net: error: {e}", file=sys.stderr)
        return 2
    except FloatingPointError as e:
        print(f"train_net: stopped: {str(e).splitlines()[0]} the last good checkpoint is kept (see "
              "last_checkpoint in OUTPUT_DIR)", file=sys.stderr)
        return 1
    except torch.multiprocessing.ProcessRaisedException as e:
        # a worker process failed; a non-finite loss is the one failure a user can act on directly
        message = next((line for line in str(e).splitlines() if "FloatingPointError" in line), None)
        if message is None:
            raise
        print(f"train_net: stopped: {message.split(':', 1)[1].strip()} the last good checkpoint is kept "
              "(see last_checkpoint in OUTPUT_DIR)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
