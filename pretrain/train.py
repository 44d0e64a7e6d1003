"""Contrastive pretraining entry point and train loop.

    python -m pretrain.train --config-file configs/pretrain/<name>.yaml [--num-gpus N] [--resume] KEY VALUE ...

One process by default; ``--num-gpus N`` spawns N local workers (NCCL on GPUs, gloo on CPU); under
torchrun, SLURM or submitit the environment names the processes (:mod:`pretrain.distributed`) and every
process runs one worker. Launchers call the library directly, in every task of the job::

    from pretrain.train import parse_args, setup, run
    cfg = setup(parse_args(["--config-file", path, "DATA.ROOT", root, ...]), world_size=num_tasks)
    run(cfg, resume=True)   # rank, world size and rendezvous from the environment (SLURM / torchrun)

(``resume=True`` is what a requeued, preempted job wants: it continues from ``checkpoint_last.pth`` when
there is one and starts fresh otherwise.) ``SOLVER.STOP_ITER`` ends a run early with a checkpoint, as a
preemption would, to split a long run into jobs.

Outputs in ``OUTPUT_DIR``: ``checkpoint_last.pth`` (every ``SOLVER.CHECKPOINT_PERIOD`` iterations, at
every epoch end and when stopping), ``checkpoint_final.pth`` (at the end), ``metrics.jsonl`` (one JSON
object per logged step: ``iter``, ``epoch``, ``loss``, ``lr``, ``mi_bound``, ``mi_ceiling``,
``images_per_sec``, ``data_time``, ...; and kNN lines with ``knn_top1``), TensorBoard scalars, ``log.txt``
and ``config.yaml``. ``--resume`` continues from ``checkpoint_last.pth`` and reproduces the loss sequence
of an uninterrupted run exactly on CPU (same seed, same number of processes).

Errors a user can cause (config, data folder, architecture, method) end with one line and exit status 2,
before anything expensive starts.
"""
import argparse
import json
import logging
import math
import os
import sys
import time

import torch
import torch.distributed as dist

from pretrain import distributed as du
from pretrain.backbones import parse_arch
from pretrain.checkpoint import CheckpointError, atomic_save, capture_rng, load_checkpoint, restore_rng
from pretrain.config import ConfigError, load_config
from pretrain.data import IMAGE_EXTENSIONS, DataError, ImageFolder, ResumableDistributedSampler, build_loader
from pretrain.methods import build_method, get_method_class
from pretrain.solver import (CPU_BF16_MIN_INPUT, LRSchedule, autocast_dtype, build_optimizer, cpu_has_native_bf16,
                             resolve_precision)
from pretrain.views import VIEWS, build_views

__all__ = ["PretrainError", "argument_parser", "parse_args", "train_step", "setup", "check_config", "run", "main",
           "Trainer", "LAST", "FINAL", "METRICS"]

logger = logging.getLogger("pretrain")

LAST, FINAL, METRICS = "checkpoint_last.pth", "checkpoint_final.pth", "metrics.jsonl"
PROG = "pretrain.train"


class PretrainError(RuntimeError):
    """A run cannot start; one line naming the key, file or folder and what to do."""


# --------------------------------------------------------------------------------------------- setup
class _Parser(argparse.ArgumentParser):
    def error(self, message):
        print(f"{PROG}: error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(2)


def argument_parser():
    parser = _Parser(prog=f"python -m {PROG}", description="Contrastive pretraining (MoCo v1/v2, InfoMin, IR, BALL, ANN, LA, BALL+, ANN+, CMC).",
                     formatter_class=argparse.RawDescriptionHelpFormatter,
                     epilog="KEY VALUE pairs override config keys, e.g. DATA.ROOT /data/imagenet "
                            "MODEL.ARCH resnet18 INPUT.SIZE 64 SOLVER.MAX_ITER 50")
    parser.add_argument("--config-file", default="", metavar="FILE", help="YAML config (configs/pretrain/)")
    parser.add_argument("--num-gpus", type=int, default=1,
                        help="local worker processes to spawn (one per GPU; CPU processes with gloo without GPUs)")
    parser.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR/checkpoint_last.pth")
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


def _has_image(folder, limit=100000):
    """Whether ``folder`` holds at least one image file (stops at the first one)."""
    seen = 0
    for _, dirs, files in os.walk(folder, followlinks=True):
        dirs.sort()
        if any(f.lower().endswith(IMAGE_EXTENSIONS) for f in files):
            return True
        seen += len(files)
        if seen > limit:
            break
    return False


def _check_plateau(cfg, train_dir):
    """SOLVER.LR_SCHEDULER plateau drops the rate when the kNN top-1 on the labelled val folder stops
    improving (Wu et al. 2020, B.3): it needs that accuracy after every epoch."""
    s = cfg.SOLVER
    if cfg.KNN.PERIOD != 1:
        raise PretrainError(f"SOLVER.LR_SCHEDULER plateau needs the kNN accuracy after every epoch: set KNN.PERIOD 1 "
                            f"(not {cfg.KNN.PERIOD})")
    if s.PLATEAU_PATIENCE < 1 or s.PLATEAU_DROPS < 0 or not 0 < s.GAMMA < 1:
        raise PretrainError(f"SOLVER.LR_SCHEDULER plateau: PLATEAU_PATIENCE {s.PLATEAU_PATIENCE} must be >= 1, "
                            f"PLATEAU_DROPS {s.PLATEAU_DROPS} >= 0 and GAMMA {s.GAMMA} in (0, 1)")
    val_dir = os.path.join(cfg.DATA.ROOT, cfg.DATA.VAL_DIR)
    labelled = any(e.is_dir() and not e.name.startswith(".") for e in os.scandir(train_dir))
    if not (os.path.isdir(val_dir) and _has_image(val_dir)) or not labelled:
        raise PretrainError(f"SOLVER.LR_SCHEDULER plateau needs the kNN accuracy on a labelled validation folder: "
                            f"{val_dir} with class folders (and class folders in {train_dir}); use another "
                            "SOLVER.LR_SCHEDULER without one")


def check_config(cfg, world_size=1):
    """Validate ``cfg`` for a run of ``world_size`` processes; raises :class:`PretrainError` (one line)."""
    root = cfg.DATA.ROOT
    if not root:
        raise PretrainError("DATA.ROOT is not set; pass DATA.ROOT /path/to/imagenet (a folder with train/)")
    if not os.path.isdir(root):
        raise PretrainError(f"DATA.ROOT {root}: no such folder")
    train_dir = os.path.join(root, cfg.DATA.TRAIN_DIR)
    if not os.path.isdir(train_dir):
        raise PretrainError(f"DATA.ROOT {root}: has no {cfg.DATA.TRAIN_DIR}/ folder (expected "
                            f"{cfg.DATA.TRAIN_DIR}/<class>/<image>)")
    if not _has_image(train_dir):
        raise PretrainError(f"{train_dir}: no images ({', '.join(IMAGE_EXTENSIONS)}) in it or its class folders")
    try:
        parse_arch(cfg.MODEL.ARCH)
        cls = get_method_class(cfg.MODEL.METHOD)
    except (ValueError, KeyError) as e:
        raise PretrainError(str(e).strip("'\"")) from None
    if cfg.INPUT.VIEWS not in VIEWS:
        raise PretrainError(f"unknown INPUT.VIEWS {cfg.INPUT.VIEWS!r}; registered: {', '.join(sorted(VIEWS))}")
    if cfg.MODEL.HEAD not in ("linear", "mlp"):
        raise PretrainError(f"unknown MODEL.HEAD {cfg.MODEL.HEAD!r}; use linear or mlp")
    if cfg.MODEL.PRECISION not in ("auto", "fp32", "bf16", "fp16"):
        raise PretrainError(f"unknown MODEL.PRECISION {cfg.MODEL.PRECISION!r}; use auto, fp32, bf16 or fp16")
    if cfg.DEVICE not in ("auto", "cpu", "cuda"):
        raise PretrainError(f"unknown DEVICE {cfg.DEVICE!r}; use auto, cpu or cuda")
    if cfg.DEVICE == "cuda" and not torch.cuda.is_available():
        raise PretrainError("DEVICE cuda: no CUDA device is available (use DEVICE auto or cpu)")
    if cfg.SOLVER.LR_SCHEDULER not in ("cosine", "step", "plateau"):
        raise PretrainError(f"unknown SOLVER.LR_SCHEDULER {cfg.SOLVER.LR_SCHEDULER!r}; use cosine, step or plateau")
    if cfg.SOLVER.LR_SCHEDULER == "plateau":
        _check_plateau(cfg, train_dir)
    if cfg.KNN.FEATURE not in ("embedding", "backbone"):
        raise PretrainError(f"unknown KNN.FEATURE {cfg.KNN.FEATURE!r}; use embedding or backbone")
    b = cfg.SOLVER.BATCH_SIZE
    if b < 1 or b % world_size:
        raise PretrainError(f"SOLVER.BATCH_SIZE {b} must be a positive multiple of the number of processes "
                            f"({world_size})")
    if cfg.SOLVER.EPOCHS <= 0 and cfg.SOLVER.MAX_ITER <= 0:
        raise PretrainError("set SOLVER.EPOCHS or SOLVER.MAX_ITER to a positive number")
    if cfg.INPUT.SIZE < 8 or cfg.INPUT.NUM_VIEWS < 1:
        raise PretrainError(f"INPUT.SIZE {cfg.INPUT.SIZE} / INPUT.NUM_VIEWS {cfg.INPUT.NUM_VIEWS} too small")
    lo, hi = cfg.INPUT.CROP_SCALE
    if not 0 < lo <= hi <= 1:
        raise PretrainError(f"INPUT.CROP_SCALE {tuple(cfg.INPUT.CROP_SCALE)} must satisfy 0 < low <= high <= 1")
    try:
        build_views(cfg)
    except ValueError as e:
        raise PretrainError(str(e)) from None
    try:
        cls.check_config(cfg)
    except ValueError as e:
        raise PretrainError(str(e)) from None
    for key in ("LOG_PERIOD",):
        if cfg[key] < 1:
            raise PretrainError(f"{key} must be >= 1")


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
    try:
        os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
    except OSError as e:
        raise PretrainError(f"OUTPUT_DIR {cfg.OUTPUT_DIR}: cannot create: {e.strerror or e}") from None
    if not os.access(cfg.OUTPUT_DIR, os.W_OK):
        raise PretrainError(f"OUTPUT_DIR {cfg.OUTPUT_DIR}: not writable")
    cfg.freeze()
    return cfg


def run(cfg, num_gpus=1, resume=False, dist_info="auto"):
    """Train with ``cfg`` (a validated config, e.g. from :func:`setup`) in every process of the job.

    ``dist_info``: "auto" reads the environment (torchrun/SLURM/submitit; one worker per process), or a
    :class:`~pretrain.distributed.DistInfo`, or None to spawn ``num_gpus`` local workers.
    """
    info = du.env_dist_info() if dist_info == "auto" else dist_info
    return du.launch(_worker, args=(cfg.dump(), bool(resume)), num_local=num_gpus, info=info)


def _worker(info, cfg_text, resume):
    cfg = load_config_text(cfg_text)
    try:
        trainer = Trainer(cfg, info, resume)
        try:
            return trainer.train()
        finally:
            trainer.close()
    except (PretrainError, DataError, CheckpointError) as e:
        if info.source != "spawn":
            raise
        # a spawned worker: one line (from rank 0; the others usually fail alike) and exit status 2
        if info.rank == 0:
            print(f"{PROG}: error: {e}", file=sys.stderr)
            sys.stderr.flush()
        else:
            time.sleep(2)  # let rank 0 say it before the parent stops the workers
        os._exit(2)


def load_config_text(text):
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write(text)
    try:
        return load_config(f.name)
    finally:
        os.unlink(f.name)


def main(argv=None):
    args = parse_args(argv)
    try:
        cfg = setup(args)
    except PretrainError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    try:
        run(cfg, num_gpus=args.num_gpus, resume=args.resume)
    except (PretrainError, DataError, CheckpointError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001
        from torch.multiprocessing import ProcessExitedException

        if isinstance(e, ProcessExitedException) and e.exit_code == 2:
            return 2  # a spawned worker already printed its one-line error
        raise
    return 0


# --------------------------------------------------------------------------------------------- logging
def _setup_logging(output_dir, rank):
    logger.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    logger.propagate = False
    for h in list(logger.handlers):
        logger.removeHandler(h)
        h.close()
    fmt = logging.Formatter(f"[%(asctime)s {'' if rank == 0 else f'rank{rank} '}%(name)s] %(message)s",
                            datefmt="%m/%d %H:%M:%S")
    stream = logging.StreamHandler(sys.stdout)
    stream.setFormatter(fmt)
    logger.addHandler(stream)
    if rank == 0:
        file = logging.FileHandler(os.path.join(output_dir, "log.txt"))
        file.setFormatter(fmt)
        logger.addHandler(file)
    for name in ("pretrain.data", "pretrain.knn"):
        logging.getLogger(name).parent = logger


def train_step(model, method, optimizer, scaler, batch, iteration, dtype, device_type):
    """One iteration: forward (autocast to ``dtype`` unless None), backward, optimizer step, then the
    method's ``on_step_end`` (momentum update, enqueue). ``model`` is ``method`` or its DDP wrapper."""
    with torch.autocast(device_type, dtype=dtype or torch.float32, enabled=dtype is not None):
        out = model(batch)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(out["loss"]).backward()
    scaler.step(optimizer)
    scaler.update()
    method.on_step_end(iteration)
    return out


class _TqdmStream:
    """A stream for the log handler that prints above tqdm's progress bar."""

    def write(self, text):
        from tqdm import tqdm

        if text.strip():
            tqdm.write(text.rstrip("\n"), file=sys.stdout)

    def flush(self):
        sys.stdout.flush()


# --------------------------------------------------------------------------------------------- trainer
class Trainer:
    """One process's training: data, method, optimiser, schedule, checkpoints, logs."""

    def __init__(self, cfg, info, resume=False):
        self.info = info
        self.rank, self.world = info.rank, info.world_size
        use_cuda = cfg.DEVICE == "cuda" or (cfg.DEVICE == "auto" and torch.cuda.is_available())
        du.init_process_group(info, cfg.DIST.BACKEND, use_cuda, cfg.DIST.TIMEOUT_MINUTES)
        if not use_cuda and info.local_size > 1:  # CPU processes on one machine share its cores
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // info.local_size))
        self.device = torch.device("cuda", torch.cuda.current_device()) if use_cuda else torch.device("cpu")
        if use_cuda:
            torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick the fastest kernels
        self.out_dir = cfg.OUTPUT_DIR
        os.makedirs(self.out_dir, exist_ok=True)
        _setup_logging(self.out_dir, self.rank)
        self.tb = None
        self.pbar = None

        if self.world > 1:  # processes launched separately (SLURM) each drew a SEED < 0 of their own
            seed = du.broadcast_object(cfg.SEED)
            if seed != cfg.SEED:
                cfg.defrost()
                cfg.SEED = seed
        ckpt = None
        last = os.path.join(self.out_dir, LAST)
        if resume:
            if os.path.isfile(last):
                ckpt = load_checkpoint(last)
            else:
                logger.info(f"--resume: no {last} yet, starting from scratch")
        if ckpt is not None:
            saved = load_config_text(ckpt["config"]) if ckpt.get("config") else None
            if saved is not None and saved.SEED != cfg.SEED:
                logger.warning(f"--resume: using the checkpoint's SEED {saved.SEED} (not {cfg.SEED})")
                cfg.defrost()
                cfg.SEED = saved.SEED
        cfg.freeze()
        self.cfg = cfg
        seed = cfg.SEED

        # ---- data
        views = build_views(cfg)
        train_dir = os.path.join(cfg.DATA.ROOT, cfg.DATA.TRAIN_DIR)
        self.train_set = ImageFolder(train_dir, views, seed=seed, draft=cfg.DATA.DRAFT_DECODE)
        self.local_batch = cfg.SOLVER.BATCH_SIZE // self.world
        self.sampler = ResumableDistributedSampler(self.train_set, self.world, self.rank, seed)
        self.iters_per_epoch = self.sampler.num_samples // self.local_batch
        if self.iters_per_epoch < 1:
            raise DataError(f"{train_dir}: {len(self.train_set)} images, fewer than one batch of "
                            f"SOLVER.BATCH_SIZE {cfg.SOLVER.BATCH_SIZE}; lower SOLVER.BATCH_SIZE")
        self.max_iter = cfg.SOLVER.MAX_ITER if cfg.SOLVER.MAX_ITER > 0 else cfg.SOLVER.EPOCHS * self.iters_per_epoch
        workers = cfg.DATA.NUM_WORKERS
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        if workers > max(1, cpus // info.local_size):
            workers = max(1, cpus // info.local_size)
            logger.info(f"DATA.NUM_WORKERS {cfg.DATA.NUM_WORKERS} > {cpus} CPUs / {info.local_size} process(es) "
                        f"on this machine: using {workers} loader workers per process")
        self.num_workers = workers
        self.loader = build_loader(self.train_set, self.sampler, self.local_batch, workers,
                                   pin_memory=cfg.DATA.PIN_MEMORY and self.device.type == "cuda",
                                   prefetch_factor=cfg.DATA.PREFETCH_FACTOR)

        # ---- model: identical initialisation in every process, then per-process random streams
        torch.manual_seed(seed)
        self.method = build_method(cfg, num_train_images=len(self.train_set)).to(self.device)
        if cfg.MODEL.CHANNELS_LAST:
            self.method.to(memory_format=torch.channels_last)
        jigsaw = getattr(views, "jigsaw", None)
        min_input = min([cfg.INPUT.SIZE] + ([jigsaw.tile_size] if jigsaw is not None else []))
        self.precision = resolve_precision(cfg.MODEL.PRECISION, self.device, min_input)
        if self.precision == "bf16" and self.device.type == "cpu":
            if not cpu_has_native_bf16():
                logger.warning("MODEL.PRECISION bf16 on a CPU without native bf16: emulated, likely slower than fp32")
            if min_input < CPU_BF16_MIN_INPUT:
                logger.warning(f"MODEL.PRECISION bf16 on CPU with {min_input} px inputs: oneDNN's bf16 conv backward "
                               "is unreliable when layer4 sees 1x1 inputs (nondeterministic, sometimes NaN); "
                               "use MODEL.PRECISION auto/fp32 or inputs of at least "
                               f"{CPU_BF16_MIN_INPUT} px")
        elif cfg.MODEL.PRECISION == "auto" and self.device.type == "cpu" and min_input < CPU_BF16_MIN_INPUT \
                and cpu_has_native_bf16():
            logger.info(f"fp32 rather than bf16: {min_input} px inputs reach layer4 at 1x1, where oneDNN's bf16 "
                        "conv backward is unreliable")
        self.schedule = LRSchedule(cfg, self.max_iter)
        self.start_iter = 0
        self.bad_paths = set()  # unreadable files this process has skipped (each counted once)
        if ckpt is not None:
            self._check_resumable(ckpt, last)
            self.method.load_state_dict(ckpt["state_dict"])
            self.method.load_extra_state(ckpt.get("method_state", {}))
        self.model = self.method
        if self.world > 1:  # every process starts from rank 0's weights, queue and buffers
            du.broadcast_tensors(list(self.method.parameters()) + list(self.method.buffers()))
            self.model = torch.nn.parallel.DistributedDataParallel(
                self.method, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                broadcast_buffers=False)
        self.optimizer = build_optimizer(cfg, self.method.trainable_parameters())
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        torch.manual_seed(seed + self.rank)  # runtime randomness (shuffle BN) differs per process
        if ckpt is not None:
            self.optimizer.load_state_dict(ckpt["optimizer"])
            changed = self.schedule.load_state_dict(ckpt.get("scheduler", {}))
            if changed:
                logger.warning("--resume: the learning-rate schedule differs from the checkpoint's: "
                               + "; ".join(changed))
            if self.scaler.is_enabled() and ckpt.get("grad_scaler"):
                self.scaler.load_state_dict(ckpt["grad_scaler"])
            rngs = ckpt.get("rng") or []
            if len(rngs) == self.world:
                restore_rng(rngs[self.rank])
            else:
                logger.warning(f"--resume: the checkpoint has RNG states of {len(rngs)} processes, this run has "
                               f"{self.world}; random streams restart (not an exact continuation)")
            self.start_iter = int(ckpt["iter"])
            saved_bad = ckpt.get("bad_paths") or []
            self.bad_paths = set(saved_bad[self.rank] if len(saved_bad) == self.world else [])
            logger.info(f"resumed from {last} at iteration {self.start_iter}")
        self.ckpt_resumed = ckpt is not None
        del ckpt

        if self.rank == 0:
            self._prepare_metrics()
            with open(os.path.join(self.out_dir, "config.yaml"), "w") as f:
                f.write(cfg.dump())
            if cfg.TENSORBOARD:
                try:
                    from torch.utils.tensorboard import SummaryWriter

                    self.tb = SummaryWriter(self.out_dir, purge_step=self.start_iter + 1 if self.start_iter else None)
                except Exception as e:  # noqa: BLE001 - monitoring must never stop training
                    logger.warning(f"TensorBoard disabled: {e}")
        self._val_set = None

    # ------------------------------------------------------------------ resume checks
    def _check_resumable(self, ckpt, path):
        cfg = self.cfg
        mismatches = []
        for key, mine in (("arch", cfg.MODEL.ARCH), ("method", cfg.MODEL.METHOD),
                          ("batch_size", cfg.SOLVER.BATCH_SIZE), ("num_train_images", len(self.train_set))):
            if key in ckpt and ckpt[key] != mine:
                mismatches.append(f"{key} {ckpt[key]} -> {mine}")
        if mismatches:
            raise CheckpointError(f"{path}: cannot resume, the run changed ({', '.join(mismatches)}); "
                                  "use another OUTPUT_DIR or the same settings")
        if ckpt.get("world_size", self.world) != self.world:
            logger.warning(f"--resume: {ckpt['world_size']} processes wrote the checkpoint, {self.world} resume it")

    # ------------------------------------------------------------------ metrics file
    def _prepare_metrics(self):
        path = os.path.join(self.out_dir, METRICS)
        keep = []
        if self.ckpt_resumed and os.path.isfile(path):  # drop what was logged after the checkpoint
            with open(path) as f:
                for line in f:
                    try:
                        if json.loads(line).get("iter", 0) <= self.start_iter:
                            keep.append(line if line.endswith("\n") else line + "\n")
                    except json.JSONDecodeError:
                        continue
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.writelines(keep)
        os.replace(tmp, path)

    def _write_metrics(self, record):
        if self.rank != 0:
            return
        with open(os.path.join(self.out_dir, METRICS), "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for key, value in record.items():
                if key not in ("iter",) and isinstance(value, (int, float)) and value is not None:
                    self.tb.add_scalar(key if "/" in key else f"pretrain/{key}", value, record["iter"])

    # ------------------------------------------------------------------ checkpoints
    def _sync_norm_buffers(self):
        """BatchNorm running statistics of rank 0 on every process. DDP does not broadcast buffers (shuffle
        BN keeps batch statistics per process), so they drift apart; the checkpoint stores rank 0's, and the
        kNN monitor and a resumed run must see the same ones, so both call this first."""
        if self.world <= 1:
            return
        buffers = [b for m in self.method.modules() if isinstance(m, torch.nn.modules.batchnorm._NormBase)
                   for b in m.buffers()]
        du.broadcast_tensors(buffers)

    def _checkpoint(self, name, it):
        self._sync_norm_buffers()
        rngs = du.all_gather_object(capture_rng())
        bad_paths = du.all_gather_object(sorted(self.bad_paths))
        if self.rank != 0:
            du.barrier()
            return
        epoch, position = divmod(it, self.iters_per_epoch)
        cfg = self.cfg
        state = {
            "state_dict": {k: v.detach().cpu().contiguous() for k, v in self.method.state_dict().items()},
            "arch": cfg.MODEL.ARCH, "method": cfg.MODEL.METHOD,
            "config": cfg.dump(), "iter": int(it), "epoch": int(epoch), "iters_per_epoch": self.iters_per_epoch,
            "max_iter": int(self.max_iter), "world_size": self.world, "batch_size": cfg.SOLVER.BATCH_SIZE,
            "num_train_images": len(self.train_set), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.schedule.state_dict(),
            "sampler": {"epoch": int(epoch), "position": int(position * self.local_batch), "seed": cfg.SEED},
            "rng": rngs, "method_state": self.method.extra_state(),
            "bad_images": len(set().union(*map(set, bad_paths))), "bad_paths": bad_paths,
            "precision": self.precision,
            "versions": {"torch": torch.__version__.split("+")[0]},
        }
        if self.scaler.is_enabled():
            state["grad_scaler"] = self.scaler.state_dict()
        atomic_save(state, os.path.join(self.out_dir, name))
        du.barrier()

    # ------------------------------------------------------------------ kNN
    def _knn(self, it):
        cfg = self.cfg
        val_dir = os.path.join(cfg.DATA.ROOT, cfg.DATA.VAL_DIR)
        if cfg.KNN.PERIOD <= 0 or not os.path.isdir(val_dir) or not self.train_set.labeled:
            return None
        from pretrain.knn import knn_monitor

        self._sync_norm_buffers()
        if self._val_set is None:
            try:
                self._val_set = ImageFolder(val_dir, build_views(cfg, "eval"), seed=cfg.SEED,
                                            draft=cfg.DATA.DRAFT_DECODE)
            except DataError as e:
                logger.warning(f"kNN monitor off: {e}")
                self.cfg.defrost()
                self.cfg.KNN.PERIOD = 0
                self.cfg.freeze()
                return None
            self._knn_train = self.train_set.with_views(build_views(cfg, "eval"), draft=cfg.DATA.DRAFT_DECODE)
        with torch.autocast(self.device.type, dtype=autocast_dtype(self.precision) or torch.float32,
                            enabled=self.precision != "fp32"):
            res = knn_monitor(self.method, self._knn_train, self._val_set, k=cfg.KNN.K, t=cfg.KNN.T,
                              batch_size=cfg.KNN.BATCH_SIZE, num_workers=min(self.num_workers, 4),
                              device=self.device, kind=cfg.KNN.FEATURE, max_train=cfg.KNN.MAX_TRAIN_IMAGES,
                              seed=cfg.SEED)
        logger.info(f"kNN (k={cfg.KNN.K}, t={cfg.KNN.T}) at iteration {it}: top-1 {res['top1']:.2f}%, top-5 "
                    f"{res['top5']:.2f}% ({res['train_images']} train / {res['val_images']} val images, "
                    f"{res['seconds']:.1f} s)")
        self._write_metrics({"iter": it, "epoch": round(it / self.iters_per_epoch, 4), "knn_top1": res["top1"],
                             "knn_top5": res["top5"]})
        return res

    # ------------------------------------------------------------------ the loop
    def _note_bad(self, bad):
        for entry in bad:
            path = entry.split(" (")[0]
            if path in self.bad_paths:
                continue
            self.bad_paths.add(path)
            n = len(self.bad_paths)
            if n <= 20 or n % 100 == 0:
                logger.warning(f"skipped unreadable image {entry} ({n} so far"
                               f"{' in this process' if self.world > 1 else ''})")

    @property
    def bad_images(self):
        return len(self.bad_paths)

    def _to_device(self, batch):
        return {k: v.to(self.device, non_blocking=True) if isinstance(v, torch.Tensor) else v
                for k, v in batch.items()}

    def _log(self, it, out, window):
        names = sorted(k for k, v in out.items() if isinstance(v, torch.Tensor) and v.numel() == 1)
        values = torch.stack([out[k].detach().float().reshape(()) for k in names])
        extra = torch.tensor([float(self.bad_images)], device=values.device)
        values = torch.cat([values, extra])
        if self.world > 1:
            dist.all_reduce(values)
            values[:-1] /= self.world
        values = values.tolist()
        stats = dict(zip(names, values[:-1]))
        loss = stats.pop("loss")
        if not math.isfinite(loss):
            raise FloatingPointError(f"loss is {loss} at iteration {it}; lower SOLVER.BASE_LR or use fp32")
        record = {"iter": it, "epoch": round(it / self.iters_per_epoch, 4), "loss": loss,
                  "lr": self.optimizer.param_groups[0]["lr"]}
        mi_loss = stats.pop("mi_loss", None)
        ceiling = self.method.mi_ceiling()
        if mi_loss is not None and ceiling is not None:
            record["mi_bound"] = ceiling - mi_loss
            record["mi_ceiling"] = ceiling
        record.update(stats)
        n, elapsed, data_time = window["iters"], window["time"], window["data"]
        record["images_per_sec"] = n * self.cfg.SOLVER.BATCH_SIZE / max(elapsed, 1e-9)
        record["data_time"] = data_time / max(n, 1)
        record["time"] = elapsed / max(n, 1)
        record["bad_images"] = int(values[-1])
        self._write_metrics(record)
        eta = (self.max_iter - it) * record["time"]
        text = (f"iter {it}/{self.max_iter} epoch {record['epoch']:.2f} loss {loss:.4f} lr {record['lr']:.5f}")
        if "mi_bound" in record:
            text += f" mi {record['mi_bound']:.3f}/{record['mi_ceiling']:.3f}"
        text += (f" {record['images_per_sec']:.1f} img/s data {record['data_time'] * 1000:.0f} ms "
                 f"eta {time.strftime('%H:%M:%S', time.gmtime(eta))}")
        if self.pbar is not None:
            self.pbar.set_postfix_str(f"loss {loss:.4f} {record['images_per_sec']:.0f} img/s")
        logger.info(text)
        return record

    def train(self):
        cfg, method = self.cfg, self.method
        ipe, max_iter = self.iters_per_epoch, self.max_iter
        if self.start_iter >= max_iter:
            logger.info(f"nothing to do: iteration {self.start_iter} of {max_iter} reached")
            if not os.path.isfile(os.path.join(self.out_dir, FINAL)):
                self._checkpoint(FINAL, self.start_iter)
            return {"iter": self.start_iter}
        logger.info(f"{cfg.MODEL.METHOD} {cfg.MODEL.ARCH}, views {cfg.INPUT.VIEWS} at {cfg.INPUT.SIZE} px, "
                    f"{len(self.train_set)} images, batch {cfg.SOLVER.BATCH_SIZE} ({self.world} x {self.local_batch}), "
                    f"{ipe} iterations/epoch, {max_iter} iterations, {self.device}, {self.precision}"
                    f"{', channels_last' if cfg.MODEL.CHANNELS_LAST else ''}")
        method.train()
        method.on_train_start({"iters_per_epoch": ipe, "max_iter": max_iter, "start_iter": self.start_iter,
                               "world_size": self.world, "num_train_images": len(self.train_set)})
        if self.rank == 0 and sys.stderr.isatty():
            try:
                from tqdm import tqdm

                self.pbar = tqdm(total=max_iter, initial=self.start_iter, desc="pretrain", dynamic_ncols=True)
                for h in logger.handlers:  # log lines above the bar, not through it
                    if type(h) is logging.StreamHandler:
                        h.setStream(_TqdmStream())
            except ImportError:
                self.pbar = None
        dtype = autocast_dtype(self.precision)
        stop_iter = cfg.SOLVER.STOP_ITER if 0 < cfg.SOLVER.STOP_ITER < max_iter else None
        window = {"iters": 0, "time": 0.0, "data": 0.0}
        data_iter, it, last_record = None, self.start_iter, None
        tick = time.perf_counter()
        while it < max_iter:
            epoch, position = divmod(it, ipe)
            if data_iter is None or position == 0:
                self.sampler.set_epoch(epoch)
                self.sampler.set_start(position * self.local_batch)
                data_iter = iter(self.loader)
                method.on_epoch_start(epoch)
            t0 = time.perf_counter()
            batch = next(data_iter)
            window["data"] += time.perf_counter() - t0
            self._note_bad(batch.pop("bad", []))
            batch = self._to_device(batch)
            lr = self.schedule(it)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            out = train_step(self.model, method, self.optimizer, self.scaler, batch, it, dtype, self.device.type)
            it += 1
            now = time.perf_counter()
            window["iters"] += 1
            window["time"] += now - tick
            tick = now
            if self.pbar is not None:
                self.pbar.update(1)
            stopping = stop_iter is not None and it >= stop_iter
            if it % cfg.LOG_PERIOD == 0 or it == max_iter or stopping:
                last_record = self._log(it, out, window)
                window = {"iters": 0, "time": 0.0, "data": 0.0}
            epoch_end = it % ipe == 0
            period = cfg.SOLVER.CHECKPOINT_PERIOD
            if epoch_end and cfg.KNN.PERIOD > 0 and (it // ipe) % cfg.KNN.PERIOD == 0 and it < max_iter:
                # before the checkpoint: the plateau schedule's state includes this epoch's report
                knn = self._knn(it)
                top1 = du.broadcast_object(knn and knn["top1"])  # the same drops in every process
                if self.schedule.report_metric(it // ipe, top1, iteration=it):
                    logger.info(f"kNN top-1 has not improved on {self.schedule.best:.2f}% for "
                                f"{cfg.SOLVER.PLATEAU_PATIENCE} epochs: learning rate x {cfg.SOLVER.GAMMA} "
                                f"(drop {self.schedule.drops} of {cfg.SOLVER.PLATEAU_DROPS})")
            if (period > 0 and it % period == 0) or epoch_end or stopping:
                self._checkpoint(LAST, it)
            if stopping:
                logger.info(f"stopping at iteration {it} (SOLVER.STOP_ITER); continue with --resume")
                return {"iter": it, "stopped": True, "last": last_record}
            tick = time.perf_counter()  # checkpoints and kNN do not count as training time
        self._checkpoint(LAST, it)
        self._checkpoint(FINAL, it)
        knn = self._knn(it) if cfg.KNN.PERIOD > 0 else None
        logger.info(f"done: {os.path.join(self.out_dir, FINAL)}")
        return {"iter": it, "last": last_record, "knn": knn}

    def close(self):
        if self.pbar is not None:
            self.pbar.close()
        if self.tb is not None:
            self.tb.close()
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
