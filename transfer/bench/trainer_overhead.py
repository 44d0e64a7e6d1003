"""Does a transfer run cost what Detectron2 costs? The project's trainer against Detectron2's ``DefaultTrainer``.

Both train the same effective config (:func:`transfer.training.config.build_config` of a shipped task with
the tiny CPU overrides and a ResNet-18: ``TINY_OVERRIDES``, ``MODEL.RESNETS.DEPTH 18``) on the same synthetic
COCO data, from the same seeds, in this process, taking turns (project, Detectron2, project, ...: a busy
machine slows both alike). Evaluation is left out (no test set); everything else of the run is in: the
data loader (the project's resumable one, Detectron2's own), the hooks (the project's precise BN over all
processes, RNG states in checkpoints), the writers. A third trainer, Detectron2's fed by the project's
loader, sees the project's batches: the two loaders pair the images differently (and a pair is padded
to its larger image), so the step costs of the first two differ by their batches too, and the third
separates that from the trainer's own cost.

Seconds per iteration are the intervals between the ends of consecutive iterations (what Detectron2's
``time`` metric measures), the first ``warmup`` of every round left out; the table gives the median over
all rounds and each round's median.
"""
import logging
import os
import statistics
import tempfile
import time

import torch

from pretrain.bench import format_table

__all__ = ["IterationClock", "tiny_config", "time_trainer", "bench_trainers", "format_result", "run_trainer_bench"]

TASK = "coco_mask_rcnn_R_50_FPN_1x"


def _hook_base():
    from detectron2.engine import hooks

    return hooks.HookBase


class IterationClock:
    """A hook factory: :meth:`hook` returns a Detectron2 hook that appends the time of every iteration's
    end to ``self.ends``."""

    def __init__(self):
        self.ends = []

    def hook(self):
        clock = self

        class _Clock(_hook_base()):
            def before_train(self):
                clock.ends.append(time.perf_counter())

            def after_step(self):
                clock.ends.append(time.perf_counter())

        return _Clock()

    def intervals(self):
        return [b - a for a, b in zip(self.ends, self.ends[1:])]


def tiny_config(output_dir, iters, mode="finetune", task=TASK):
    """The effective config both trainers run: the task with the tiny overrides, ResNet-18, no test set."""
    from pretrain.common.paths import CONFIGS_DIR
    from transfer.training.config import TINY_OVERRIDES, build_config

    opts = [*TINY_OVERRIDES, "MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64",
            "SOLVER.MAX_ITER", str(iters), "DATASETS.TEST", "()", "TEST.EVAL_PERIOD", "0",
            "TRANSFER.MODE", mode, "SEED", "0", "OUTPUT_DIR", output_dir]
    return build_config(os.path.join(CONFIGS_DIR, "transfer", task + ".yaml"), opts, world_size=1, has_cuda=False)


def _quiet_detectron2():
    """Detectron2's trainer sets up its console logger unless its logger is already enabled for INFO."""
    logger = logging.getLogger("detectron2")
    if not logger.handlers:
        logger.addHandler(logging.NullHandler())
    logger.setLevel(logging.INFO)
    logger.propagate = False


def time_trainer(trainer_class, cfg, warmup):
    """Train ``cfg`` once with ``trainer_class``; return the seconds of each iteration after ``warmup``."""
    import random

    import numpy as np

    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    trainer = trainer_class(cfg)
    clock = IterationClock()
    trainer.register_hooks([clock.hook()])
    trainer.resume_or_load(resume=False)
    trainer.train()
    return clock.intervals()[warmup:]


def bench_trainers(iters=20, warmup=5, rounds=3, mode="finetune", num_images=16, log=None):
    """``{"project": [s/iter ...], "detectron2": [...], "detectron2_project_loader": [...],
    "rounds": {name: [median per round]}}``; the third is Detectron2's trainer with the project's loader, so
    that its difference to the project's trainer is the trainer's alone (the same batches)."""
    from detectron2.engine import DefaultTrainer

    from transfer.data.datasets import set_datasets_root
    from transfer.data.synthetic import write_synthetic
    from transfer.training.trainer import TransferTrainer

    from transfer.data.loader import build_resumable_train_loader

    class DefaultTrainerProjectLoader(DefaultTrainer):
        """Detectron2's trainer fed by the project's loader: the project's trainer's images in each batch."""

        @classmethod
        def build_train_loader(cls, cfg):
            return build_resumable_train_loader(cfg)

    _quiet_detectron2()
    trainers = (("project", TransferTrainer), ("detectron2", DefaultTrainer),
                ("detectron2_project_loader", DefaultTrainerProjectLoader))
    result = {name: [] for name, _ in trainers}
    result["rounds"] = {name: [] for name, _ in trainers}
    with tempfile.TemporaryDirectory(prefix="bench_transfer_") as tmp:
        write_synthetic(os.path.join(tmp, "datasets"), kinds=("coco",), num_images=num_images, seed=0)
        set_datasets_root(os.path.join(tmp, "datasets"))
        for r in range(rounds):
            for name, cls in trainers:
                if log:
                    log(f"round {r + 1}/{rounds}: {name} ...")
                cfg = tiny_config(os.path.join(tmp, f"{name}{r}"), warmup + iters, mode)
                times = time_trainer(cls, cfg, warmup)
                result[name] += times
                result["rounds"][name].append(statistics.median(times))
    return result


def format_result(result, mode, iters, warmup, rounds):
    """The table and the ratio line."""
    rows = []
    for name, label in (("project", "project (transfer.training.trainer.TransferTrainer)"),
                        ("detectron2", "Detectron2 DefaultTrainer"),
                        ("detectron2_project_loader", "Detectron2 DefaultTrainer, project's loader")):
        times = result[name]
        rows.append((label, f"{statistics.median(times):.4f}", " ".join(f"{t:.4f}" for t in result["rounds"][name]),
                     len(times)))
    median = {name: statistics.median(result[name]) for name in ("project", "detectron2", "detectron2_project_loader")}
    head = (f"Transfer step: {TASK}, TRANSFER.MODE {mode}, ResNet-18 with the tiny CPU overrides, synthetic COCO; "
            f"{rounds} round(s) of {warmup} warm-up + {iters} timed iterations each, trainers taking turns; "
            f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs")
    table = format_table(("trainer", "s/iter (median)", "median per round", "iterations"), rows)
    return (f"{head}\n{table}\nproject / Detectron2: {median['project'] / median['detectron2']:.3f}x\n"
            f"project / Detectron2 with the project's loader (the same images per batch: the trainer alone): "
            f"{median['project'] / median['detectron2_project_loader']:.3f}x")


def run_trainer_bench(iters=20, warmup=5, rounds=3, mode="finetune", threads=0, out=print, log=None):
    """``tools/bench_transfer.py``: measure (:func:`bench_trainers`), print the table; returns the result."""
    if threads:
        torch.set_num_threads(threads)
    result = bench_trainers(iters=iters, warmup=warmup, rounds=rounds, mode=mode, log=log)
    out(format_result(result, mode, iters, warmup, rounds))
    return result
