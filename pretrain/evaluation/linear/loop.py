"""One linear evaluation: a logistic regression on frozen features of any checkpoint the project reads.

Wu et al. (2020), Appendix B.3: "we freeze the parameters and begin the transfer phase by fitting a logistic
regression on top of the learned representations to predict the labels ... In transfer learning, the same
augmentations are used as in pretraining." The settings are :mod:`pretrain.evaluation.linear.config`'s.

The encoder is :func:`pretrain.evaluation.frozen.load_frozen_encoder` (this project's checkpoints, converted
Detectron2 weights, every layout the converter reads), so the features are the pooled backbone features
Detectron2 would start from, normalised with the weights' own input convention; the splits are
:mod:`pretrain.evaluation.linear.data`'s.

Two paths
---------
- ``AUGMENT none`` (fast): the features of both splits are extracted once (``eval`` views: resize to 256/224
  of ``INPUT.SIZE``, centre crop) and the linear layer trains on the cached features.
- ``AUGMENT <recipe>`` (a name in :data:`pretrain.data.views.VIEWS`, e.g. ``moco_v1``, the InstDis/IR
  augmentations Wu et al. pretrain with; ``cmc`` for CMC): every epoch the training images go through the
  recipe (seeded by ``SEED``, the epoch and the image, so a rerun sees the same crops) and the frozen encoder.
  Validation features use the ``eval`` views and are extracted once.

``LINEAR.STANDARDIZE`` standardises every feature with the mean and std of the training features (``eval``
views; on the augmented path that costs one extra pass). The layer is ``Linear(D, C)`` initialised N(0, 0.01),
bias 0, trained with cross-entropy (multinomial logistic regression).

Schedules (``SOLVER.LR_SCHEDULER``), all :class:`pretrain.training.solver.LRSchedule` stepped per epoch:
``plateau`` (Wu et al.; on the validation top-1 after every epoch: after ``PLATEAU_PATIENCE`` epochs without
a better value the rate is multiplied by ``GAMMA``, at most ``PLATEAU_DROPS`` times), ``step`` (x ``GAMMA``
at the epochs ``STEPS``), ``constant``. The plateau schedule follows the validation split, as Wu et al.'s
schedules do; the reported numbers are those of the last epoch, never the best one.

Outputs in the run folder (``output/linear_<DATA.NAME>/<backbone>/frozen/seed<SEED>/`` by default):
``config.yaml``; ``metrics.jsonl`` (one line per epoch: ``epoch``, ``lr``, ``train_loss``, ``train_top1``,
``val_loss``, ``val_top1``, ``val_top5``, ``seconds``); ``linear_last.pth`` (the layer, optimizer and schedule
after every epoch); ``linear_final.pth`` (the trained layer with the standardisation and class names);
``results.json`` (:func:`pretrain.common.runs.results_record`, format in docs/artifacts.md), so the report
shows it next to the detection tasks::

    {"backbone": ..., "task": "linear_<DATA.NAME>", "mode": "frozen", "seed": SEED, "weights": W,
     "iterations": <optimizer steps>, "metrics": {"linear": {"top1": .., "top5": ..}}, "commit": ..,
     "arch": "R-18", "details": {...}}                                # top5 only with more than 5 classes

Resume: a run whose ``results.json`` exists is not repeated (``force`` runs it again from scratch). An
interrupted run continues from ``linear_last.pth`` after its last finished epoch when that checkpoint was
written with the same config (``SOLVER.STOP_EPOCH`` aside, which stops a run after that epoch as a preemption
would); otherwise it starts over. Features are extracted again on a resume (on the cached path that is most
of the cost). Per-epoch shuffling and augmentation depend only on ``SEED`` and the epoch, so a resumed run
trains on the same batches as an uninterrupted one.
"""
import json
import logging
import math
import os
import time

import torch
import torch.nn.functional as F
from torch import nn

from pretrain.common.fileio import atomic_path, write_text_atomic
from pretrain.common.runs import CONFIG_FILE, METRICS_FILE, RESULTS_FILE, results_record, write_results
from pretrain.evaluation.features import ViewedImages, extract_features, topk_accuracy, view_loader
from pretrain.evaluation.linear.config import (MODE, LinearEvalError, build_views_of, check_config, output_dir,
                                               run_backbone, task_name)
from pretrain.evaluation.linear.data import epoch_order, open_splits, worker_message
from pretrain.training.solver import LRSchedule

__all__ = ["LAST_FILE", "FINAL_FILE", "LinearEval", "run"]

logger = logging.getLogger("pretrain.evaluation.linear")
LAST_FILE, FINAL_FILE = "linear_last.pth", "linear_final.pth"


class LinearEval:
    """One linear evaluation (see the module docstring). ``prepare()`` loads and checks everything that can
    fail because of the user; ``train()`` runs and writes the outputs and returns the results record."""

    def __init__(self, cfg, out_dir=None, fmt=None, trust_pickle=False):
        self.cfg = cfg
        self.out = out_dir or output_dir(cfg)
        self.fmt = fmt or cfg.FORMAT
        self.trust_pickle = trust_pickle
        self.encoder = None

    def prepare(self):
        from pretrain.evaluation.frozen import FrozenEncoderError, load_frozen_encoder

        cfg = self.cfg
        check_config(cfg)
        self.augment = None if cfg.AUGMENT == "none" else build_views_of(cfg, cfg.AUGMENT)
        self.eval_views = build_views_of(cfg, "eval")
        self.splits = open_splits(cfg)
        try:
            self.encoder = load_frozen_encoder(cfg.WEIGHTS, fmt=self.fmt, trust_pickle=self.trust_pickle,
                                               device=cfg.DEVICE)
        except FrozenEncoderError as e:
            raise LinearEvalError(str(e)) from None
        if os.path.exists(self.out) and not os.path.isdir(self.out):
            raise LinearEvalError(f"{self.out}: exists and is not a folder (OUTPUT_DIR / --out)")
        return self

    def _path(self, name):
        return os.path.join(self.out, name)

    def _viewed(self, images, targets, views):
        return ViewedImages(images, views, seed=self.cfg.SEED, targets=targets)

    def _loader(self, dataset, batch_size, order=None, epoch=0):
        return view_loader(dataset, batch_size, self.cfg.DATA.NUM_WORKERS, self.encoder.device, order, epoch)

    def _features(self, images, targets, views):
        """Features (on the CPU) and targets of a whole split through ``views``."""
        from pretrain.data.labeled import LabeledDataError

        loader = self._loader(self._viewed(images, targets, views), self.cfg.LINEAR.FEATURE_BATCH_SIZE)
        try:
            return extract_features(self.encoder, loader, self.encoder.device)
        except LabeledDataError as e:
            raise LinearEvalError(worker_message(e)) from None

    def _resume_state(self, resume_key):
        path = self._path(LAST_FILE)
        if not os.path.isfile(path):
            return None
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - a damaged checkpoint: start over
            logger.warning(f"{path}: unreadable ({type(e).__name__}); starting over")
            return None
        if state.get("config") != resume_key or "milestones" not in state.get("schedule", {}):
            logger.info(f"{path} was written with another config or version; starting over")
            return None
        return state

    def train(self):
        cfg, sp, enc = self.cfg, self.splits, self.encoder
        s = cfg.SOLVER
        device = enc.device
        os.makedirs(self.out, exist_ok=True)
        write_text_atomic(self._path(CONFIG_FILE), cfg.dump())
        resume_key = _resume_key(cfg)
        start = time.perf_counter()
        logger.info(f"encoder: {enc.description}, {enc.feature_dim}-d features; {len(sp.train_images)} train / "
                    f"{len(sp.val_images)} val images, {len(sp.classes)} classes; "
                    f"{'augmentation ' + cfg.AUGMENT if self.augment else 'cached features (AUGMENT none)'}")
        val_x, val_y = self._features(sp.val_images, sp.val_targets, self.eval_views)
        train_x = None
        if self.augment is None or cfg.LINEAR.STANDARDIZE:
            train_x, _ = self._features(sp.train_images, sp.train_targets, self.eval_views)
        mean = torch.zeros(enc.feature_dim)
        std = torch.ones(enc.feature_dim)
        if cfg.LINEAR.STANDARDIZE:
            mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
        if self.augment is not None:
            train_x = None  # the augmented path recomputes them every epoch
        logger.info(f"features extracted in {time.perf_counter() - start:.1f} s")

        torch.manual_seed(cfg.SEED)
        layer = nn.Linear(enc.feature_dim, len(sp.classes))
        nn.init.normal_(layer.weight, std=0.01)
        nn.init.zeros_(layer.bias)
        layer.to(device)
        optimizer = torch.optim.SGD(layer.parameters(), lr=s.BASE_LR, momentum=s.MOMENTUM,
                                    weight_decay=s.WEIGHT_DECAY)
        schedule = LRSchedule.per_epoch(s.LR_SCHEDULER, s.BASE_LR, s.EPOCHS, steps=s.STEPS, gamma=s.GAMMA,
                                        patience=s.PLATEAU_PATIENCE, max_drops=s.PLATEAU_DROPS)
        first, iterations, history = 0, 0, []
        state = self._resume_state(resume_key)
        if state is not None:
            layer.load_state_dict(state["layer"])
            optimizer.load_state_dict(state["optimizer"])
            schedule.load_state_dict(state["schedule"])
            first, iterations, history = state["epoch"], state["iterations"], list(json.loads(state["history"]))
            logger.info(f"resuming after epoch {first} from {self._path(LAST_FILE)}")
        write_text_atomic(self._path(METRICS_FILE), "".join(json.dumps(r) + "\n" for r in history))
        mean_d, std_d = mean.to(device), std.to(device)
        for epoch in range(first, s.EPOCHS):
            t0 = time.perf_counter()
            lr = schedule(epoch)
            for group in optimizer.param_groups:
                group["lr"] = lr
            layer.train()
            loss_sum, correct, seen = 0.0, 0, 0
            for x, y in self._batches(train_x, epoch_order(cfg.SEED, epoch, len(sp.train_images)), epoch):
                x = (x.to(device, non_blocking=True) - mean_d) / std_d
                y = y.to(device, non_blocking=True)
                logits = layer(x)
                loss = F.cross_entropy(logits, y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                iterations += 1
                loss_sum += loss.item() * len(y)
                correct += int((logits.argmax(1) == y).sum())
                seen += len(y)
            val = _evaluate(layer, val_x, val_y, mean_d, std_d)
            record = {"epoch": epoch + 1, "lr": lr, "train_loss": loss_sum / max(seen, 1),
                      "train_top1": 100.0 * correct / max(seen, 1), "val_loss": val["loss"],
                      "val_top1": val["top1"], "val_top5": val["top5"], "seconds": time.perf_counter() - t0}
            if not math.isfinite(record["train_loss"]):
                raise LinearEvalError(f"the training loss is {record['train_loss']} at epoch {epoch + 1}: lower "
                                      "SOLVER.BASE_LR or set LINEAR.STANDARDIZE True")
            history.append(record)
            with open(self._path(METRICS_FILE), "a") as f:
                f.write(json.dumps(record) + "\n")
            dropped = schedule.report_metric(epoch + 1, val["top1"], iteration=epoch + 1)
            logger.info(f"epoch {epoch + 1}/{s.EPOCHS}: lr {lr:g}, train loss {record['train_loss']:.4f}, "
                        f"val top-1 {val['top1']:.2f}%, top-5 {val['top5']:.2f}% ({record['seconds']:.1f} s)"
                        + (f"; no better val top-1 for {s.PLATEAU_PATIENCE} epochs: lr x {s.GAMMA}" if dropped else ""))
            with atomic_path(self._path(LAST_FILE)) as tmp:
                torch.save({"layer": layer.state_dict(), "optimizer": optimizer.state_dict(),
                            "schedule": schedule.state_dict(), "epoch": epoch + 1, "iterations": iterations,
                            "history": json.dumps(history), "config": resume_key}, tmp)
            if 0 < s.STOP_EPOCH <= epoch + 1 < s.EPOCHS:
                logger.info(f"stopping after epoch {epoch + 1} (SOLVER.STOP_EPOCH); run again to continue")
                return None
        final = history[-1]
        with atomic_path(self._path(FINAL_FILE)) as tmp:
            torch.save({"weight": layer.weight.detach().cpu(), "bias": layer.bias.detach().cpu(), "mean": mean,
                        "std": std, "classes": list(sp.classes), "encoder": enc.description}, tmp)
        record = self._record(final, iterations, history, time.perf_counter() - start)
        path = write_results(self.out, record)
        logger.info(f"{record['task']} {record['backbone']}: top-1 {final['val_top1']:.2f}%, top-5 "
                    f"{final['val_top5']:.2f}% -> {path}")
        return record

    def _batches(self, train_x, order, epoch):
        """Optimizer batches ``(features, targets)`` of one epoch: slices of the cached features, or (augmented
        path) encoder batches of ``FEATURE_BATCH_SIZE`` regrouped into batches of ``BATCH_SIZE``."""
        b = self.cfg.SOLVER.BATCH_SIZE
        targets = self.splits.train_targets
        if train_x is not None:
            for k in range(0, len(order), b):
                idx = order[k:k + b]
                yield train_x[idx], targets[idx]
            return
        from pretrain.data.labeled import LabeledDataError

        dataset = self._viewed(self.splits.train_images, targets, self.augment)
        loader = self._loader(dataset, min(b, self.cfg.LINEAR.FEATURE_BATCH_SIZE), order.tolist(), epoch)
        try:
            pending_x, pending_y = [], []
            for images, y in loader:
                pending_x.append(self.encoder(images))
                pending_y.append(y)
                if sum(len(t) for t in pending_y) >= b:
                    x, yy = torch.cat(pending_x), torch.cat(pending_y)
                    yield x[:b], yy[:b]
                    pending_x, pending_y = [x[b:]], [yy[b:]]
            if pending_y and sum(len(t) for t in pending_y):
                yield torch.cat(pending_x), torch.cat(pending_y)
        except LabeledDataError as e:
            raise LinearEvalError(worker_message(e)) from None

    def _record(self, final, iterations, history, seconds):
        cfg, sp, enc = self.cfg, self.splits, self.encoder
        best = max(history, key=lambda r: r["val_top1"])
        metrics = {"top1": final["val_top1"]}
        if len(sp.classes) > 5:  # with 5 classes or fewer top-5 is 100% by construction: not a number to report
            metrics["top5"] = final["val_top5"]
        arch = getattr(enc, "arch", None)
        details = {
            "encoder": enc.description, "feature_dim": enc.feature_dim, "classes": len(sp.classes),
            "attribute": cfg.DATA.ATTRIBUTE or sp.train_images.attributes[0],
            "train_images": len(sp.train_images), "val_images": len(sp.val_images), "augment": cfg.AUGMENT,
            "standardize": bool(cfg.LINEAR.STANDARDIZE), "epochs": len(history),
            "lr_drops_after_epochs": [r["epoch"] for a, r in zip(history, history[1:]) if r["lr"] < a["lr"]],
            "best_val_top1": best["val_top1"], "best_epoch": best["epoch"], "train_top1": final["train_top1"],
            "seconds": round(seconds, 2)}
        return results_record(backbone=run_backbone(cfg), task=task_name(cfg), mode=MODE, seed=cfg.SEED,
                              weights=cfg.WEIGHTS, iterations=iterations, metrics={"linear": metrics},
                              **({"arch": arch} if arch else {}), details=details)


@torch.no_grad()
def _evaluate(layer, x, y, mean, std, chunk=4096):
    """Loss and top-1/top-5 of ``layer`` on standardised features ``x`` with targets ``y``."""
    layer.eval()
    logits = torch.cat([layer((x[k:k + chunk].to(mean.device) - mean) / std).cpu()
                        for k in range(0, len(x), chunk)])
    out = topk_accuracy(logits, y)
    out["loss"] = float(F.cross_entropy(logits, y))
    return out


def _resume_key(cfg):
    """The config a checkpoint must match to be resumed: everything but SOLVER.STOP_EPOCH."""
    key = cfg.clone()
    key.defrost()
    key.SOLVER.STOP_EPOCH = 0
    return key.dump()


def run(cfg, out_dir=None, force=False, fmt=None, trust_pickle=False):
    """Run one linear evaluation; returns its results record, or None when ``results.json`` already exists
    (and not ``force``) or the run stopped at ``SOLVER.STOP_EPOCH``. Raises :class:`LinearEvalError` (one
    line) before writing anything."""
    out = out_dir or output_dir(cfg)
    if os.path.isfile(os.path.join(out, RESULTS_FILE)) and not force:
        return None
    job = LinearEval(cfg, out, fmt=fmt, trust_pickle=trust_pickle).prepare()
    if force:
        for name in (LAST_FILE, RESULTS_FILE):
            if os.path.isfile(os.path.join(out, name)):
                os.unlink(os.path.join(out, name))
    return job.train()
