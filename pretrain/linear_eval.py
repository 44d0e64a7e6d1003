"""Linear evaluation: a logistic regression on frozen features of any checkpoint the project reads.

    python -m pretrain.linear_eval --config-file configs/linear/<dataset>.yaml --weights W [--out DIR] [--force]
        [--format LAYOUT] [--trust-pickle] KEY VALUE ...

Wu et al. (2020), Appendix B.3: "we freeze the parameters and begin the transfer phase by fitting a logistic
regression on top of the learned representations to predict the labels ... SGD with a learning rate of 0.01,
momentum 0.9, weight decay 1e-5 and batch size of 256 for 30 epochs. Like in pretraining, we drop the learning
rate twice with a patience of 10. In transfer learning, the same augmentations are used as in pretraining."
Those are the defaults below; ``configs/linear/`` has the paper's settings (Table 2(a)-(d)).

The encoder is :func:`pretrain.frozen.load_frozen_encoder` (this project's checkpoints, converted Detectron2
weights, every layout the converter reads), so the features are the pooled backbone features Detectron2 would
start from, normalised with the weights' own input convention. The data are :class:`pretrain.labeled.LabeledImages`
folders: ``DATA.ROOT/DATA.TRAIN_DIR`` and ``DATA.ROOT/DATA.VAL_DIR``, each an ImageFolder (ImageNet, CIFAR
exported as ``<class>/<image>``) or a folder with ``labels.csv`` (CDP: ``DATA.ATTRIBUTE`` names the column to
predict). Validation classes are matched to training classes by name.

Two paths
---------
- ``AUGMENT none`` (fast): the features of both splits are extracted once (``eval`` views: resize to 256/224
  of ``INPUT.SIZE``, centre crop) and the linear layer trains on the cached features.
- ``AUGMENT <recipe>`` (a name in :data:`pretrain.views.VIEWS`, e.g. ``moco_v1``, the InstDis/IR augmentations
  Wu et al. pretrain with; ``cmc`` for CMC): every epoch the training images go through the recipe (seeded by
  ``SEED``, the epoch and the image, so a rerun sees the same crops) and the frozen encoder. Validation
  features use the ``eval`` views and are extracted once.

``LINEAR.STANDARDIZE`` standardises every feature with the mean and std of the training features (``eval``
views; on the augmented path that costs one extra pass). The layer is ``Linear(D, C)`` initialised N(0, 0.01),
bias 0, trained with cross-entropy (multinomial logistic regression).

Schedules (``SOLVER.LR_SCHEDULER``): ``plateau`` (Wu et al.; the rule of :class:`pretrain.solver.LRSchedule`
on the validation top-1 after every epoch: a value better than the best so far resets the count; after
``PLATEAU_PATIENCE`` epochs without one the rate is multiplied by ``GAMMA``, at most ``PLATEAU_DROPS`` times,
each drop getting its own patience), ``step`` (x ``GAMMA`` at the epochs ``STEPS``), ``constant``. The plateau
schedule follows the validation split, as Wu et al.'s schedules do; the reported numbers are those of the last
epoch, never the best one.

Outputs in ``OUTPUT_DIR`` (default ``output/linear_<DATA.NAME>/<backbone>/frozen/seed<SEED>/``, or ``--out``):
``config.yaml``; ``metrics.jsonl`` (one line per epoch: ``epoch``, ``lr``, ``train_loss``, ``train_top1``,
``val_loss``, ``val_top1``, ``val_top5``, ``seconds``); ``linear_last.pth`` (the layer, optimizer and schedule
after every epoch); ``linear_final.pth`` (the trained layer with the standardisation and class names);
``results.json`` in the transfer schema (DESIGN.md artifact 3), so ``tools/make_table.py`` shows it next to
the detection tasks::

    {"backbone": ..., "task": "linear_<DATA.NAME>", "mode": "frozen", "seed": SEED, "weights": W,
     "iterations": <optimizer steps>, "metrics": {"linear": {"top1": .., "top5": ..}}, "commit": ..,  # top5: > 5 classes
     "arch": "R-18", "details": {...}}

Resume: a run whose ``results.json`` exists is not repeated (exit 0; ``--force`` runs it again from scratch).
An interrupted run continues from ``linear_last.pth`` after its last finished epoch when that checkpoint was
written with the same config (``SOLVER.STOP_EPOCH`` aside, which stops a run after that epoch as a preemption
would); otherwise it starts over. Features are extracted again on a resume (on the cached path that is most
of the cost). Per-epoch shuffling and augmentation depend only on ``SEED`` and the epoch, so a resumed run
trains on the same batches as an uninterrupted one.

Errors a user can cause (config key or value, weights file, data folder, label column, validation classes
that training lacks) end with one line and exit status 2, before anything is written.
"""
import argparse
import json
import logging
import math
import os
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn
from yacs.config import CfgNode as CN

from transfer.version import code_version
from transfer.fileio import atomic_path, write_json_atomic, write_text_atomic

__all__ = ["LinearEvalError", "get_cfg", "load_config", "topk_accuracy", "extract_features", "PlateauSchedule",
           "LinearEval", "run", "main", "parse_args", "output_dir", "task_name", "backbone_label"]

logger = logging.getLogger("pretrain.linear_eval")
PROG = "pretrain.linear_eval"
RESULTS, CONFIG, METRICS, LAST, FINAL = "results.json", "config.yaml", "metrics.jsonl", "linear_last.pth", \
    "linear_final.pth"
SCHEDULES = ("plateau", "step", "constant")


class LinearEvalError(ValueError):
    """A linear evaluation cannot run; one line naming the key, file or folder and what to do."""


# ----------------------------------------------------------------------------------------------- config
def _defaults():
    from pretrain.config import get_cfg as pretrain_cfg

    c = CN()
    c.WEIGHTS = ""                    # the checkpoint / weights file (--weights)
    c.FORMAT = "auto"                 # its layout (transfer.convert.LAYOUTS) or auto
    c.DATA = CN()
    c.DATA.NAME = ""                  # dataset name: the task is linear_<NAME>; "" = the folder name of ROOT
    c.DATA.ROOT = ""
    c.DATA.TRAIN_DIR = "train"        # relative to ROOT (or absolute)
    c.DATA.VAL_DIR = "val"
    c.DATA.ATTRIBUTE = ""             # labels.csv column to predict; "" = the only one (ImageFolder: class)
    c.DATA.NUM_WORKERS = 4
    # the pretraining INPUT keys the view recipes read (size, crop scale, jitter strength, blur, RandAugment)
    c.INPUT = pretrain_cfg().INPUT.clone()
    for key in ("VIEWS", "NUM_VIEWS", "PIXEL_MEAN", "PIXEL_STD"):  # the encoder normalises with its own convention
        del c.INPUT[key]
    c.AUGMENT = "none"                # train-time recipe from pretrain.views.VIEWS, or none (features cached once)
    c.LINEAR = CN()
    c.LINEAR.STANDARDIZE = False      # standardise features with the training features' mean / std
    c.LINEAR.FEATURE_BATCH_SIZE = 256  # images per forward pass of the frozen encoder
    c.SOLVER = CN()
    c.SOLVER.BASE_LR = 0.01
    c.SOLVER.MOMENTUM = 0.9
    c.SOLVER.WEIGHT_DECAY = 1e-5
    c.SOLVER.BATCH_SIZE = 256
    c.SOLVER.EPOCHS = 30
    c.SOLVER.LR_SCHEDULER = "plateau"  # plateau (on the val top-1), step or constant
    c.SOLVER.STEPS = (20, 25)         # "step": epochs after which the rate is multiplied by GAMMA
    c.SOLVER.GAMMA = 0.1
    c.SOLVER.PLATEAU_PATIENCE = 10
    c.SOLVER.PLATEAU_DROPS = 2
    c.SOLVER.STOP_EPOCH = 0           # > 0: stop after this epoch as if preempted (rerun to continue)
    c.SEED = 0
    c.BACKBONE_NAME = ""              # row label in tables; "" = the weights file's stem
    c.DEVICE = "auto"                 # auto, cpu or cuda
    c.OUTPUT_DIR = ""                 # "" = output/linear_<NAME>/<backbone>/frozen/seed<SEED>
    return c


def get_cfg():
    """A fresh copy of the defaults."""
    return _defaults()


def load_config(config_file=None, opts=()):
    """Defaults + ``config_file`` (``_BASE_`` allowed) + ``KEY VALUE`` pairs; raises :class:`LinearEvalError`."""
    # the merge rules (unknown keys, types, _BASE_) are pretraining's: one config idiom everywhere
    from pretrain.config import ConfigError
    from pretrain.config import load_config as load_tree

    try:
        return load_tree(config_file, opts, defaults=get_cfg())
    except ConfigError as e:
        raise LinearEvalError(str(e)) from None


def backbone_label(cfg):
    if cfg.BACKBONE_NAME:
        return cfg.BACKBONE_NAME
    name = os.path.basename(cfg.WEIGHTS)
    for ext in (".pth.tar", ".pkl", ".pth", ".pt", ".ckpt", ".safetensors"):
        if name.endswith(ext):
            return name[: -len(ext)]
    return os.path.splitext(name)[0] or "random"


def dataset_name(cfg):
    return cfg.DATA.NAME or os.path.basename(os.path.normpath(cfg.DATA.ROOT or cfg.DATA.TRAIN_DIR))


def task_name(cfg):
    return f"linear_{dataset_name(cfg)}"


def output_dir(cfg):
    return cfg.OUTPUT_DIR or os.path.join("output", task_name(cfg), backbone_label(cfg), "frozen", f"seed{cfg.SEED}")


def _split_dir(cfg, which):
    return os.path.join(cfg.DATA.ROOT, which) if cfg.DATA.ROOT else which


def check_config(cfg):
    """Cheap checks before anything is loaded; raises :class:`LinearEvalError` (one line)."""
    from pretrain.views import VIEWS

    if not cfg.WEIGHTS:
        raise LinearEvalError("no weights: pass --weights FILE (a checkpoint or converted .pkl)")
    if not os.path.exists(cfg.WEIGHTS):
        raise LinearEvalError(f"{cfg.WEIGHTS}: no such file")
    if not cfg.DATA.ROOT and not (os.path.isabs(cfg.DATA.TRAIN_DIR) and os.path.isabs(cfg.DATA.VAL_DIR)):
        raise LinearEvalError("DATA.ROOT is not set; pass DATA.ROOT /path/to/data (with train/ and val/)")
    if cfg.DATA.ROOT and not os.path.isdir(cfg.DATA.ROOT):
        raise LinearEvalError(f"DATA.ROOT {cfg.DATA.ROOT}: no such folder")
    for key, which in (("DATA.TRAIN_DIR", cfg.DATA.TRAIN_DIR), ("DATA.VAL_DIR", cfg.DATA.VAL_DIR)):
        folder = _split_dir(cfg, which)
        if not os.path.isdir(folder):
            raise LinearEvalError(f"{folder}: no such folder ({key} {which!r} under DATA.ROOT)")
    name = dataset_name(cfg)
    if not name or any(c in name for c in "/\\ ") or name in (".", ".."):
        raise LinearEvalError(f"DATA.NAME {name!r} cannot name a task; set DATA.NAME (e.g. cifar10)")
    if cfg.AUGMENT != "none" and (cfg.AUGMENT not in VIEWS or cfg.AUGMENT == "eval"):
        known = ", ".join(sorted(v for v in VIEWS if v != "eval"))
        raise LinearEvalError(f"unknown AUGMENT {cfg.AUGMENT!r}; use none or a view recipe ({known})")
    s = cfg.SOLVER
    if s.LR_SCHEDULER not in SCHEDULES:
        raise LinearEvalError(f"unknown SOLVER.LR_SCHEDULER {s.LR_SCHEDULER!r}; use {', '.join(SCHEDULES)}")
    if s.EPOCHS < 1 or s.BATCH_SIZE < 1 or not s.BASE_LR > 0 or cfg.LINEAR.FEATURE_BATCH_SIZE < 1:
        raise LinearEvalError(f"SOLVER.EPOCHS {s.EPOCHS}, SOLVER.BATCH_SIZE {s.BATCH_SIZE}, SOLVER.BASE_LR "
                              f"{s.BASE_LR} and LINEAR.FEATURE_BATCH_SIZE must be positive")
    if s.LR_SCHEDULER != "constant" and not 0 < s.GAMMA < 1:
        raise LinearEvalError(f"SOLVER.GAMMA {s.GAMMA} must be in (0, 1)")
    if s.LR_SCHEDULER == "plateau" and (s.PLATEAU_PATIENCE < 1 or s.PLATEAU_DROPS < 0):
        raise LinearEvalError(f"SOLVER.PLATEAU_PATIENCE {s.PLATEAU_PATIENCE} must be >= 1 and PLATEAU_DROPS "
                              f"{s.PLATEAU_DROPS} >= 0")
    if cfg.INPUT.SIZE < 8:
        raise LinearEvalError(f"INPUT.SIZE {cfg.INPUT.SIZE} is too small (>= 8)")
    lo, hi = cfg.INPUT.CROP_SCALE
    if not 0 < lo <= hi <= 1:
        raise LinearEvalError(f"INPUT.CROP_SCALE {tuple(cfg.INPUT.CROP_SCALE)} must satisfy 0 < low <= high <= 1")
    if cfg.DEVICE not in ("auto", "cpu", "cuda"):
        raise LinearEvalError(f"unknown DEVICE {cfg.DEVICE!r}; use auto, cpu or cuda")
    if cfg.DEVICE == "cuda" and not torch.cuda.is_available():
        raise LinearEvalError("DEVICE cuda: no CUDA device is available (use DEVICE auto or cpu)")
    if cfg.DATA.NUM_WORKERS < 0:
        raise LinearEvalError(f"DATA.NUM_WORKERS {cfg.DATA.NUM_WORKERS} must be >= 0")


def _views(cfg, name):
    """A view pipeline of pretrain.views built from this config's INPUT keys (one view, no JigSaw)."""
    from pretrain.config import get_cfg as pretrain_cfg
    from pretrain.views import build_views

    p = pretrain_cfg()
    for key, value in cfg.INPUT.items():
        p.INPUT[key] = value.clone() if isinstance(value, CN) else value
    p.INPUT.NUM_VIEWS = 1
    p.JIGSAW.ENABLED = False
    try:
        return build_views(p, name)
    except (KeyError, ValueError) as e:
        raise LinearEvalError(f"AUGMENT {name}: {str(e).strip(chr(39))}") from None


# ----------------------------------------------------------------------------------------------- data
class _Split(torch.utils.data.Dataset):
    """One label column of a :class:`LabeledImages` through a view pipeline; items are ``(index, epoch)``
    pairs so that the views of an image depend only on (seed, epoch, index)."""

    def __init__(self, images, targets, views, seed):
        self.images, self.targets, self.views, self.seed = images, targets, views, int(seed)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, item):
        from pretrain.views import sample_seed

        index, epoch = item if isinstance(item, tuple) else (item, 0)
        view = self.views(self.images.load(index), sample_seed(self.seed, epoch, index))["view1"]
        return view, self.targets[index]


def _worker_init(_):
    torch.set_num_threads(1)


def _loader(dataset, order, batch_size, num_workers, device):
    kwargs = {"worker_init_fn": _worker_init} if num_workers > 0 else {}
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=order, num_workers=num_workers,
                                       pin_memory=device.type == "cuda", drop_last=False, **kwargs)


def _labels(images, attribute, where):
    """(column index, class names) of the attribute to predict."""
    attrs = images.attributes
    if attribute:
        if attribute not in attrs:
            raise LinearEvalError(f"{where}: no label column {attribute!r} (DATA.ATTRIBUTE); columns: "
                                  f"{', '.join(attrs)}")
        return attrs.index(attribute), images.classes[attribute]
    if len(attrs) != 1:
        raise LinearEvalError(f"{where}: {len(attrs)} label columns ({', '.join(attrs)}); choose one with "
                              "DATA.ATTRIBUTE")
    return 0, images.classes[attrs[0]]


def _open_splits(cfg):
    from pretrain.labeled import LABELS_CSV, LabeledImages

    train_dir, val_dir = _split_dir(cfg, cfg.DATA.TRAIN_DIR), _split_dir(cfg, cfg.DATA.VAL_DIR)
    train, val = LabeledImages(train_dir), LabeledImages(val_dir)

    def where(folder, images):
        csv_path = os.path.join(folder, LABELS_CSV)
        return csv_path if images.attributes != ["class"] or os.path.isfile(csv_path) else folder

    col, classes = _labels(train, cfg.DATA.ATTRIBUTE, where(train_dir, train))
    vcol, vclasses = _labels(val, cfg.DATA.ATTRIBUTE or train.attributes[col], where(val_dir, val))
    if len(classes) < 2:
        raise LinearEvalError(f"{where(train_dir, train)}: only one class ({classes[0]!r}) to predict")
    index = {c: i for i, c in enumerate(classes)}
    unknown = [c for c in vclasses if c not in index]
    if unknown:
        raise LinearEvalError(f"{where(val_dir, val)}: validation class(es) {', '.join(map(repr, unknown[:5]))} do not "
                              f"occur in the training split {train_dir}")
    train_targets = train.labels[:, col].clone()
    val_targets = torch.tensor([index[vclasses[k]] for k in val.labels[:, vcol].tolist()], dtype=torch.long)
    return train, train_targets, val, val_targets, classes


# ----------------------------------------------------------------------------------------------- pieces
def topk_accuracy(logits, targets, topk=(1, 5)):
    """Top-k accuracies (percent) of class scores ``logits`` (N x C) against ``targets`` (N); k is capped at C
    (with fewer than 5 classes top-5 counts every class)."""
    out = {}
    for k in topk:
        kk = min(k, logits.shape[1])
        pred = logits.topk(kk, dim=1).indices
        out[f"top{k}"] = (pred == targets[:, None]).any(dim=1).double().mean().item() * 100 if len(targets) else 0.0
    return out


@torch.no_grad()
def extract_features(encoder, dataset, batch_size, num_workers=0, epoch=0, order=None):
    """(features N x D float32 on the CPU, targets N) of ``dataset`` (a :class:`_Split`) through ``encoder``."""
    device = encoder.device
    order = list(range(len(dataset))) if order is None else order
    loader = _loader(dataset, [(i, epoch) for i in order], batch_size, num_workers, device)
    feats, targets = [], []
    for images, y in loader:
        feats.append(encoder(images.to(device, non_blocking=True)).cpu())
        targets.append(y)
    return torch.cat(feats), torch.cat(targets)


class PlateauSchedule:
    """Per-epoch learning rate: ``plateau`` on a reported metric (higher is better), ``step`` or ``constant``;
    see the module docstring. ``state_dict`` / ``load_state_dict`` for resuming."""

    def __init__(self, name, base_lr, gamma=0.1, steps=(), patience=10, max_drops=2):
        self.name, self.base_lr, self.gamma = name, float(base_lr), float(gamma)
        self.steps, self.patience, self.max_drops = tuple(int(s) for s in steps), int(patience), int(max_drops)
        self.best, self.reference_epoch, self.drop_epochs = None, None, []

    def lr(self, epoch):
        """Rate of 0-based ``epoch``."""
        if self.name == "step":
            return self.base_lr * self.gamma ** sum(epoch >= s for s in self.steps)
        if self.name == "plateau":
            return self.base_lr * self.gamma ** sum(epoch >= d for d in self.drop_epochs)
        return self.base_lr

    def report(self, epoch, value):
        """The metric after 0-based ``epoch``; returns True when the rate drops from the next epoch on."""
        if self.name != "plateau":
            return False
        if self.best is None or value > self.best:
            self.best, self.reference_epoch = float(value), epoch
            return False
        if len(self.drop_epochs) >= self.max_drops or epoch - self.reference_epoch < self.patience:
            return False
        self.drop_epochs.append(epoch + 1)
        self.reference_epoch = epoch
        return True

    def state_dict(self):
        return {"best": self.best, "reference_epoch": self.reference_epoch, "drop_epochs": list(self.drop_epochs)}

    def load_state_dict(self, state):
        self.best, self.reference_epoch = state["best"], state["reference_epoch"]
        self.drop_epochs = list(state["drop_epochs"])


def _shuffle(seed, epoch, n):
    from pretrain.views import sample_seed

    g = torch.Generator().manual_seed(sample_seed(seed, epoch, 1 << 30))
    return torch.randperm(n, generator=g)


# ----------------------------------------------------------------------------------------------- the run
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
        from pretrain.frozen import FrozenEncoderError, load_frozen_encoder
        from pretrain.labeled import LabeledDataError

        cfg = self.cfg
        check_config(cfg)
        self.augment = None if cfg.AUGMENT == "none" else _views(cfg, cfg.AUGMENT)
        self.eval_views = _views(cfg, "eval")
        try:
            self.train_images, self.train_targets, self.val_images, self.val_targets, self.classes = _open_splits(cfg)
        except LabeledDataError as e:
            raise LinearEvalError(str(e)) from None
        try:
            self.encoder = load_frozen_encoder(cfg.WEIGHTS, fmt=self.fmt, trust_pickle=self.trust_pickle,
                                               device=cfg.DEVICE)
        except FrozenEncoderError as e:
            raise LinearEvalError(str(e)) from None
        if os.path.exists(self.out) and not os.path.isdir(self.out):
            raise LinearEvalError(f"{self.out}: exists and is not a folder (OUTPUT_DIR / --out)")
        return self

    # -------------------------------------------------------------- outputs
    def _path(self, name):
        return os.path.join(self.out, name)

    def _split(self, images, targets, views):
        return _Split(images, targets, views, self.cfg.SEED)

    def _features(self, images, targets, views, epoch=0, order=None):
        from pretrain.labeled import LabeledDataError

        try:
            return extract_features(self.encoder, self._split(images, targets, views),
                                    self.cfg.LINEAR.FEATURE_BATCH_SIZE, self.cfg.DATA.NUM_WORKERS, epoch, order)
        except LabeledDataError as e:
            raise LinearEvalError(_one_line(e)) from None

    def _resume_state(self, resume_key):
        path = self._path(LAST)
        if not os.path.isfile(path):
            return None
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - a damaged checkpoint: start over
            logger.warning(f"{path}: unreadable ({type(e).__name__}); starting over")
            return None
        if state.get("config") != resume_key:
            logger.info(f"{path} was written with another config; starting over")
            return None
        return state

    def train(self):
        cfg = self.cfg
        s = cfg.SOLVER
        device = self.encoder.device
        os.makedirs(self.out, exist_ok=True)
        config_text = cfg.dump()
        write_text_atomic(self._path(CONFIG), config_text)
        resume_key = _resume_key(cfg)
        start = time.perf_counter()
        enc = self.encoder
        logger.info(f"encoder: {enc.description}, {enc.feature_dim}-d features; {len(self.train_images)} train / "
                    f"{len(self.val_images)} val images, {len(self.classes)} classes; "
                    f"{'augmentation ' + cfg.AUGMENT if self.augment else 'cached features (AUGMENT none)'}")
        val_x, val_y = self._features(self.val_images, self.val_targets, self.eval_views)
        train_x = None
        if self.augment is None or cfg.LINEAR.STANDARDIZE:
            train_x, _ = self._features(self.train_images, self.train_targets, self.eval_views)
        mean = torch.zeros(enc.feature_dim)
        std = torch.ones(enc.feature_dim)
        if cfg.LINEAR.STANDARDIZE:
            mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
        if self.augment is not None:
            train_x = None  # the augmented path recomputes them every epoch
        extract_seconds = time.perf_counter() - start
        logger.info(f"features extracted in {extract_seconds:.1f} s")

        torch.manual_seed(cfg.SEED)
        layer = nn.Linear(enc.feature_dim, len(self.classes))
        nn.init.normal_(layer.weight, std=0.01)
        nn.init.zeros_(layer.bias)
        layer.to(device)
        optimizer = torch.optim.SGD(layer.parameters(), lr=s.BASE_LR, momentum=s.MOMENTUM,
                                    weight_decay=s.WEIGHT_DECAY)
        schedule = PlateauSchedule(s.LR_SCHEDULER, s.BASE_LR, s.GAMMA, s.STEPS, s.PLATEAU_PATIENCE, s.PLATEAU_DROPS)
        first, iterations, history = 0, 0, []
        state = self._resume_state(resume_key)
        if state is not None:
            layer.load_state_dict(state["layer"])
            optimizer.load_state_dict(state["optimizer"])
            schedule.load_state_dict(state["schedule"])
            first, iterations, history = state["epoch"], state["iterations"], list(json.loads(state["history"]))
            logger.info(f"resuming after epoch {first} from {self._path(LAST)}")
        self._write_history(history)
        mean_d, std_d = mean.to(device), std.to(device)
        n = len(self.train_images)
        for epoch in range(first, s.EPOCHS):
            t0 = time.perf_counter()
            lr = schedule.lr(epoch)
            for group in optimizer.param_groups:
                group["lr"] = lr
            order = _shuffle(cfg.SEED, epoch, n)
            layer.train()
            loss_sum, correct, seen = 0.0, 0, 0
            for x, y in self._batches(train_x, order, epoch):
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
            val = self._evaluate(layer, val_x, val_y, mean_d, std_d)
            record = {"epoch": epoch + 1, "lr": lr, "train_loss": loss_sum / max(seen, 1),
                      "train_top1": 100.0 * correct / max(seen, 1), "val_loss": val["loss"],
                      "val_top1": val["top1"], "val_top5": val["top5"], "seconds": time.perf_counter() - t0}
            if not math.isfinite(record["train_loss"]):
                raise LinearEvalError(f"the training loss is {record['train_loss']} at epoch {epoch + 1}: lower "
                                      "SOLVER.BASE_LR or set LINEAR.STANDARDIZE True")
            history.append(record)
            with open(self._path(METRICS), "a") as f:
                f.write(json.dumps(record) + "\n")
            dropped = schedule.report(epoch, val["top1"])
            logger.info(f"epoch {epoch + 1}/{s.EPOCHS}: lr {lr:g}, train loss {record['train_loss']:.4f}, "
                        f"val top-1 {val['top1']:.2f}%, top-5 {val['top5']:.2f}% ({record['seconds']:.1f} s)"
                        + (f"; no better val top-1 for {s.PLATEAU_PATIENCE} epochs: lr x {s.GAMMA}" if dropped else ""))
            with atomic_path(self._path(LAST)) as tmp:
                torch.save({"layer": layer.state_dict(), "optimizer": optimizer.state_dict(),
                            "schedule": schedule.state_dict(), "epoch": epoch + 1, "iterations": iterations,
                            "history": json.dumps(history), "config": resume_key}, tmp)
            if 0 < s.STOP_EPOCH <= epoch + 1 < s.EPOCHS:
                logger.info(f"stopping after epoch {epoch + 1} (SOLVER.STOP_EPOCH); run again to continue")
                return None
        final = history[-1]
        with atomic_path(self._path(FINAL)) as tmp:
            torch.save({"weight": layer.weight.detach().cpu(), "bias": layer.bias.detach().cpu(), "mean": mean,
                        "std": std, "classes": list(self.classes), "encoder": enc.description}, tmp)
        record = self._record(final, iterations, history, time.perf_counter() - start)
        write_json_atomic(self._path(RESULTS), record)
        logger.info(f"{record['task']} {record['backbone']}: top-1 {final['val_top1']:.2f}%, top-5 "
                    f"{final['val_top5']:.2f}% -> {self._path(RESULTS)}")
        return record

    def _batches(self, train_x, order, epoch):
        b = self.cfg.SOLVER.BATCH_SIZE
        if train_x is not None:
            for k in range(0, len(order), b):
                idx = order[k:k + b]
                yield train_x[idx], self.train_targets[idx]
            return
        from pretrain.labeled import LabeledDataError

        split = self._split(self.train_images, self.train_targets, self.augment)
        feature_batch = min(b, self.cfg.LINEAR.FEATURE_BATCH_SIZE)
        loader = _loader(split, [(i, epoch) for i in order.tolist()], feature_batch, self.cfg.DATA.NUM_WORKERS,
                         self.encoder.device)
        try:
            pending_x, pending_y = [], []
            for images, y in loader:  # encoder batches of FEATURE_BATCH_SIZE, optimizer batches of BATCH_SIZE
                pending_x.append(self.encoder(images))
                pending_y.append(y)
                if sum(len(t) for t in pending_y) >= b:
                    x, yy = torch.cat(pending_x), torch.cat(pending_y)
                    yield x[:b], yy[:b]
                    pending_x, pending_y = [x[b:]], [yy[b:]]
            if pending_y and sum(len(t) for t in pending_y):
                yield torch.cat(pending_x), torch.cat(pending_y)
        except LabeledDataError as e:
            raise LinearEvalError(_one_line(e)) from None

    @torch.no_grad()
    def _evaluate(self, layer, x, y, mean, std, chunk=4096):
        layer.eval()
        logits = torch.cat([layer((x[k:k + chunk].to(mean.device) - mean) / std).cpu()
                            for k in range(0, len(x), chunk)])
        out = topk_accuracy(logits, y)
        out["loss"] = float(F.cross_entropy(logits, y))
        return out

    def _write_history(self, history):
        text = "".join(json.dumps(r) + "\n" for r in history)
        write_text_atomic(self._path(METRICS), text)

    def _record(self, final, iterations, history, seconds):
        cfg = self.cfg
        enc = self.encoder
        best = max(history, key=lambda r: r["val_top1"])
        record = {"backbone": backbone_label(cfg), "task": task_name(cfg), "mode": "frozen", "seed": int(cfg.SEED),
                  "weights": cfg.WEIGHTS, "iterations": int(iterations),
                  "metrics": {"linear": {"top1": _finite(final["val_top1"])}}, "commit": code_version()}
        if len(self.classes) > 5:  # with 5 classes or fewer top-5 is 100% by construction: not a number to report
            record["metrics"]["linear"]["top5"] = _finite(final["val_top5"])
        arch = getattr(enc, "arch", None)
        if arch:
            record["arch"] = arch
        record["details"] = {
            "encoder": enc.description, "feature_dim": enc.feature_dim, "classes": len(self.classes),
            "attribute": cfg.DATA.ATTRIBUTE or self.train_images.attributes[0],
            "train_images": len(self.train_images), "val_images": len(self.val_images), "augment": cfg.AUGMENT,
            "standardize": bool(cfg.LINEAR.STANDARDIZE), "epochs": len(history),
            "lr_drops_after_epochs": [r["epoch"] for a, r in zip(history, history[1:]) if r["lr"] < a["lr"]],
            "best_val_top1": best["val_top1"], "best_epoch": best["epoch"], "train_top1": final["train_top1"],
            "seconds": round(seconds, 2)}
        return record


def _one_line(exc):
    """The message of an error raised in a DataLoader worker (which re-raises it with the worker's traceback)."""
    text = str(exc)
    if "Traceback" in text:
        last = [line for line in text.splitlines() if line.strip()][-1]
        text = last.split(": ", 1)[1] if last.split(": ", 1)[0].endswith("Error") else last
    return " ".join(text.split())


def _resume_key(cfg):
    """The config a checkpoint must match to be resumed: everything but SOLVER.STOP_EPOCH."""
    key = cfg.clone()
    key.defrost()
    key.SOLVER.STOP_EPOCH = 0
    return key.dump()


def _finite(value):
    value = float(value)
    return value if math.isfinite(value) else None


def run(cfg, out_dir=None, force=False, fmt=None, trust_pickle=False):
    """Run one linear evaluation; returns its results record, or None when ``results.json`` already exists
    (and not ``force``) or the run stopped at ``SOLVER.STOP_EPOCH``. Raises :class:`LinearEvalError` (one
    line) before writing anything."""
    out = out_dir or output_dir(cfg)
    results = os.path.join(out, RESULTS)
    if os.path.isfile(results) and not force:
        return None
    job = LinearEval(cfg, out, fmt=fmt, trust_pickle=trust_pickle).prepare()
    if force:
        for name in (LAST, RESULTS):
            if os.path.isfile(os.path.join(out, name)):
                os.unlink(os.path.join(out, name))
    return job.train()


# ----------------------------------------------------------------------------------------------- CLI
class _Parser(argparse.ArgumentParser):
    def error(self, message):
        print(f"{PROG}: error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(2)


def argument_parser():
    parser = _Parser(prog=f"python -m {PROG}",
                     description="Linear evaluation on frozen features (Wu et al. 2020, B.3).",
                     epilog="KEY VALUE pairs override config keys, e.g. DATA.ROOT /data/cifar10 SOLVER.EPOCHS 10 "
                            "AUGMENT none LINEAR.STANDARDIZE True")
    parser.add_argument("--config-file", default="", metavar="FILE", help="YAML config (configs/linear/)")
    parser.add_argument("--weights", metavar="FILE", help="checkpoint or converted Detectron2 .pkl (sets WEIGHTS)")
    parser.add_argument("--out", metavar="DIR", help="output folder (default: OUTPUT_DIR, else "
                                                     "output/linear_<name>/<backbone>/frozen/seed<k>)")
    parser.add_argument("--format", default=None, metavar="LAYOUT", help="checkpoint layout (default: FORMAT, auto)")
    parser.add_argument("--trust-pickle", action="store_true",
                        help="allow full unpickling of the weights file (only for files from a trusted source)")
    parser.add_argument("--force", action="store_true", help="run again even if results.json exists")
    parser.add_argument("opts", nargs=argparse.REMAINDER, metavar="KEY VALUE", help="config overrides")
    return parser


class _StdoutHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stdout`` is at the time of the record."""

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value):
        pass


def _setup_logging():
    logger.setLevel(logging.INFO)
    logger.propagate = False
    if not any(isinstance(h, _StdoutHandler) for h in logger.handlers):
        handler = _StdoutHandler()
        handler.setFormatter(logging.Formatter("[%(asctime)s %(name)s] %(message)s", datefmt="%m/%d %H:%M:%S"))
        logger.addHandler(handler)


_FLAGS = {"--force": "force", "--trust-pickle": "trust_pickle"}
_VALUED = {"--config-file": "config_file", "--weights": "weights", "--out": "out", "--format": "format"}


def parse_args(argv=None):
    """Parse; options written after the KEY VALUE pairs (``... SOLVER.EPOCHS 5 --force``) count too."""
    parser = argument_parser()
    args = parser.parse_args(argv)
    opts, rest = [], list(args.opts)
    while rest:
        item = rest.pop(0)
        name, eq, value = item.partition("=")
        if item in _FLAGS:
            setattr(args, _FLAGS[item], True)
        elif name in _VALUED:
            if not eq:
                if not rest:
                    parser.error(f"argument {name}: expected one argument")
                value = rest.pop(0)
            setattr(args, _VALUED[name], value)
        else:
            opts.append(item)
    args.opts = opts
    return args


def main(argv=None):
    args = parse_args(argv)
    _setup_logging()
    try:
        opts = list(args.opts)
        if args.weights:
            opts += ["WEIGHTS", args.weights]
        cfg = load_config(args.config_file or None, opts)
        if not cfg.DATA.NAME and args.config_file:
            cfg.DATA.NAME = os.path.splitext(os.path.basename(args.config_file))[0]
        check_config(cfg)
        cfg.freeze()
        out = args.out or output_dir(cfg)
        if os.path.isfile(os.path.join(out, RESULTS)) and not args.force:
            print(f"{PROG}: {os.path.join(out, RESULTS)} exists; nothing to do (--force runs it again)")
            return 0
        record = run(cfg, out, force=args.force, fmt=args.format, trust_pickle=args.trust_pickle)
    except LinearEvalError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    if record is None:
        print(f"{PROG}: stopped after epoch {cfg.SOLVER.STOP_EPOCH} (SOLVER.STOP_EPOCH); run again to continue")
        return 0
    print(json.dumps({"task": record["task"], "backbone": record["backbone"], **record["metrics"]["linear"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
