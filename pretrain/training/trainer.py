"""One process's pretraining: data, method, optimiser, schedule, checkpoints, kNN monitor, the loop.

:class:`Trainer` is built in every process of the job (:func:`pretrain.training.train.run` starts them)
and runs :func:`train_step` until ``SOLVER.MAX_ITER`` (or ``SOLVER.STOP_ITER``). Checkpoints hold
everything an exact continuation needs (format in docs/artifacts.md and
:mod:`pretrain.training.checkpoint`); a resumed run on CPU repeats the uninterrupted one bit for bit.
"""
import math
import os
import time

import torch
import torch.distributed as dist
import yaml

from pretrain.common import distributed as du
from pretrain.common.runs import CHECKPOINT_FINAL, CHECKPOINT_LAST, CONFIG_FILE, snapshot_file
from pretrain.data.images import DataError, ImageFolder, ResumableDistributedSampler, build_loader
from pretrain.data.views import build_views
from pretrain.methods import build_method
from pretrain.training.checkpoint import CheckpointError, atomic_save, capture_rng, load_checkpoint, restore_rng
from pretrain.training.logs import MetricsLog, logger, progress_bar, setup_logging
from pretrain.training.numerics import choose
from pretrain.training.solver import (CPU_BF16_MIN_INPUT, LRSchedule, autocast_dtype, build_optimizer,
                                      cpu_has_native_bf16, resolve_precision)

__all__ = ["Trainer", "train_step"]


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


class Trainer:
    """One process's training: data, method, optimiser, schedule, checkpoints, logs."""

    def __init__(self, cfg, info, resume=False, trust_pickle=False):
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
        setup_logging(self.out_dir, self.rank)
        self.metrics_log = None
        self.pbar = None

        if self.world > 1:  # processes launched separately (SLURM) each drew a SEED < 0 of their own
            seed = du.broadcast_object(cfg.SEED)
            if seed != cfg.SEED:
                cfg.defrost()
                cfg.SEED = seed
        ckpt = None
        last = os.path.join(self.out_dir, CHECKPOINT_LAST)
        if resume:
            if os.path.isfile(last):
                ckpt = load_checkpoint(last, trust_pickle=trust_pickle)
            else:
                logger.info(f"--resume: no {last} yet, starting from scratch")
        if ckpt is not None:
            saved_seed = (yaml.safe_load(ckpt["config"]) or {}).get("SEED") if ckpt.get("config") else None
            if saved_seed is not None and saved_seed != cfg.SEED:
                logger.warning(f"--resume: using the checkpoint's SEED {saved_seed} (not {cfg.SEED})")
                cfg.defrost()
                cfg.SEED = saved_seed
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
        jigsaw = getattr(views, "jigsaw", None)
        min_input = min([cfg.INPUT.SIZE] + ([jigsaw.tile_size] if jigsaw is not None else []))
        self.precision, self.channels_last = self._numerics(ckpt, min_input)
        self.method.channels_last = self.channels_last
        if self.channels_last:
            self.method.to(memory_format=torch.channels_last)
        if cfg.MODEL.PRECISION == "bf16" and self.device.type == "cpu":
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
            self.metrics_log = MetricsLog(self.out_dir, self.start_iter, resumed=self.ckpt_resumed,
                                          tensorboard=cfg.TENSORBOARD)
            with open(os.path.join(self.out_dir, CONFIG_FILE), "w") as f:
                f.write(cfg.dump())
        self._val_set = None

    # ------------------------------------------------------------------ numerics
    def _numerics(self, ckpt, min_input):
        """``(precision, channels_last)``: as configured, as the resumed checkpoint recorded for "auto" (an
        exact continuation), or timed on this machine (:mod:`pretrain.training.numerics`, rank 0 decides)."""
        cfg = self.cfg
        precision, channels_last = cfg.MODEL.PRECISION, cfg.MODEL.CHANNELS_LAST
        saved = (ckpt or {}).get("numerics") or {}
        resumed = False
        if precision == "auto" and saved.get("precision") in ("fp32", "bf16", "fp16"):
            precision, resumed = saved["precision"], True
        if channels_last == "auto" and isinstance(saved.get("channels_last"), bool):
            channels_last, resumed = saved["channels_last"], True
        choice = None
        if self.rank == 0:
            try:
                choice = choose(cfg.MODEL.ARCH, cfg.MODEL.HEAD, cfg.MODEL.DIM, cfg.INPUT.SIZE, self.local_batch,
                                self.device, precision, channels_last, min_input,
                                key_forward=hasattr(self.method, "encoder_k"), log=logger.info)
            except (RuntimeError, ValueError) as e:  # timing failed: fall back to the rules, never fail the run
                logger.warning(f"timing precision/layout failed ({' '.join(str(e).split())[:200]}); using the rules")
                choice = (resolve_precision(precision, self.device, min_input),
                          self.device.type == "cuda" if channels_last == "auto" else channels_last, "rules")
        precision, channels_last, how = du.broadcast_object(choice)
        if resumed and how == "configured":
            how = "as the resumed checkpoint recorded"
        logger.info(f"numerics: {precision}, {'channels_last' if channels_last else 'NCHW'} ({how})")
        return precision, channels_last

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

    def _write_metrics(self, record):
        if self.metrics_log is not None:
            self.metrics_log.write(record)

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
            "precision": self.precision, "numerics": {"precision": self.precision, "channels_last": self.channels_last},
            "versions": {"torch": torch.__version__.split("+")[0]},
        }
        if self.scaler.is_enabled():
            state["grad_scaler"] = self.scaler.state_dict()
        atomic_save(state, os.path.join(self.out_dir, name))
        du.barrier()

    def _snapshot(self, it):
        """``checkpoint_epochXXXX.pth`` after a multiple of ``SOLVER.SNAPSHOT_EPOCHS`` epochs, for evaluations that
        follow the run (a sweep's transfer curves). The method's weights and the run's shape, no optimizer or
        RNG state (it is not for resuming), written atomically and never rewritten: a run resumed from an
        earlier checkpoint that reaches this epoch again leaves the file that evaluations may already read."""
        epoch = it // self.iters_per_epoch
        path = os.path.join(self.out_dir, snapshot_file(epoch))
        self._sync_norm_buffers()
        if self.rank == 0 and not os.path.isfile(path):
            cfg = self.cfg
            atomic_save({"state_dict": {k: v.detach().cpu().contiguous() for k, v in self.method.state_dict().items()},
                         "arch": cfg.MODEL.ARCH, "method": cfg.MODEL.METHOD, "config": cfg.dump(), "iter": int(it),
                         "epoch": int(epoch), "iters_per_epoch": self.iters_per_epoch, "max_iter": int(self.max_iter),
                         "world_size": self.world, "batch_size": cfg.SOLVER.BATCH_SIZE,
                         "num_train_images": len(self.train_set), "precision": self.precision, "snapshot": True,
                         "versions": {"torch": torch.__version__.split("+")[0]}}, path)
            logger.info(f"snapshot after epoch {epoch}: {path}")
        du.barrier()

    # ------------------------------------------------------------------ kNN
    def _knn(self, it):
        cfg = self.cfg
        val_dir = os.path.join(cfg.DATA.ROOT, cfg.DATA.VAL_DIR)
        if cfg.KNN.PERIOD <= 0 or not os.path.isdir(val_dir) or not self.train_set.labeled:
            return None
        from pretrain.training.knn import knn_monitor

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
            if not os.path.isfile(os.path.join(self.out_dir, CHECKPOINT_FINAL)):
                self._checkpoint(CHECKPOINT_FINAL, self.start_iter)
            return {"iter": self.start_iter}
        logger.info(f"{cfg.MODEL.METHOD} {cfg.MODEL.ARCH}, views {cfg.INPUT.VIEWS} at {cfg.INPUT.SIZE} px, "
                    f"{len(self.train_set)} images, batch {cfg.SOLVER.BATCH_SIZE} ({self.world} x {self.local_batch}), "
                    f"{ipe} iterations/epoch, {max_iter} iterations, {self.device}, {self.precision}"
                    f"{', channels_last' if self.channels_last else ''}")
        method.train()
        method.on_train_start({"iters_per_epoch": ipe, "max_iter": max_iter, "start_iter": self.start_iter,
                               "world_size": self.world, "num_train_images": len(self.train_set)})
        if self.rank == 0:
            self.pbar = progress_bar(max_iter, self.start_iter)
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
            snapshots = cfg.SOLVER.SNAPSHOT_EPOCHS
            if epoch_end and snapshots > 0 and (it // ipe) % snapshots == 0:
                self._snapshot(it)  # before checkpoint_last: a resumed run never skips it
            if (period > 0 and it % period == 0) or epoch_end or stopping:
                self._checkpoint(CHECKPOINT_LAST, it)
            if stopping:
                logger.info(f"stopping at iteration {it} (SOLVER.STOP_ITER); continue with --resume")
                return {"iter": it, "stopped": True, "last": last_record}
            tick = time.perf_counter()  # checkpoints and kNN do not count as training time
        self._checkpoint(CHECKPOINT_LAST, it)
        self._checkpoint(CHECKPOINT_FINAL, it)
        knn = self._knn(it) if cfg.KNN.PERIOD > 0 else None
        logger.info(f"done: {os.path.join(self.out_dir, CHECKPOINT_FINAL)}")
        return {"iter": it, "last": last_record, "knn": knn}

    def close(self):
        if self.pbar is not None:
            self.pbar.close()
        if self.metrics_log is not None:
            self.metrics_log.close()
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()

