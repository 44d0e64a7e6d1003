"""The config of a linear evaluation: its tree of defaults, loading, checks, and the names it derives.

Defaults are Wu et al. (2020), Appendix B.3 ("SGD with a learning rate of 0.01, momentum 0.9, weight decay
1e-5 and batch size of 256 for 30 epochs ... we drop the learning rate twice with a patience of 10");
``configs/linear/`` has the paper's settings (Table 2(a)-(d)). Files and ``KEY VALUE`` overrides merge as
pretraining configs do (:func:`pretrain.config.load_config`: unknown keys, types, ``_BASE_``).
"""
import os

import torch
from yacs.config import CfgNode as CN

from pretrain.common.runs import backbone_label, run_dir

__all__ = ["LinearEvalError", "SCHEDULES", "get_cfg", "load_config", "check_config", "dataset_name", "task_name",
           "output_dir", "run_backbone", "split_dir", "build_views_of"]

SCHEDULES = ("plateau", "step", "constant")
MODE = "frozen"
OUTPUT_ROOT = "output"


class LinearEvalError(ValueError):
    """A linear evaluation cannot run; one line naming the key, file or folder and what to do."""


def get_cfg():
    """A fresh copy of the defaults."""
    from pretrain.config import get_cfg as pretrain_cfg

    c = CN()
    c.WEIGHTS = ""                    # the checkpoint / weights file (--weights)
    c.FORMAT = "auto"                 # its layout (pretrain.checkpoints.layouts.LAYOUTS) or auto
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
    c.AUGMENT = "none"                # train-time recipe from pretrain.data.views.VIEWS, or none (features cached once)
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


def load_config(config_file=None, opts=()):
    """Defaults + ``config_file`` (``_BASE_`` allowed) + ``KEY VALUE`` pairs; raises :class:`LinearEvalError`."""
    from pretrain.config import ConfigError
    from pretrain.config import load_config as load_tree

    try:
        return load_tree(config_file, opts, defaults=get_cfg())
    except ConfigError as e:
        raise LinearEvalError(str(e)) from None


def dataset_name(cfg):
    return cfg.DATA.NAME or os.path.basename(os.path.normpath(cfg.DATA.ROOT or cfg.DATA.TRAIN_DIR))


def task_name(cfg):
    return f"linear_{dataset_name(cfg)}"


def run_backbone(cfg):
    """The backbone's label in tables (``BACKBONE_NAME``, else the weights file's stem)."""
    return backbone_label(cfg.BACKBONE_NAME, cfg.WEIGHTS)


def output_dir(cfg):
    """``OUTPUT_DIR``, else the run folder ``output/linear_<name>/<backbone>/frozen/seed<SEED>``."""
    return cfg.OUTPUT_DIR or run_dir(OUTPUT_ROOT, task_name(cfg), run_backbone(cfg), MODE, cfg.SEED)


def split_dir(cfg, which):
    """A split's folder: ``which`` under ``DATA.ROOT`` (or ``which`` itself without a root)."""
    return os.path.join(cfg.DATA.ROOT, which) if cfg.DATA.ROOT else which


def check_config(cfg):
    """Cheap checks before anything is loaded; raises :class:`LinearEvalError` (one line)."""
    from pretrain.data.views import VIEWS

    if not cfg.WEIGHTS:
        raise LinearEvalError("no weights: pass --weights FILE (a checkpoint or converted .pkl)")
    if not os.path.exists(cfg.WEIGHTS):
        raise LinearEvalError(f"{cfg.WEIGHTS}: no such file")
    if not cfg.DATA.ROOT and not (os.path.isabs(cfg.DATA.TRAIN_DIR) and os.path.isabs(cfg.DATA.VAL_DIR)):
        raise LinearEvalError("DATA.ROOT is not set; pass DATA.ROOT /path/to/data (with train/ and val/)")
    if cfg.DATA.ROOT and not os.path.isdir(cfg.DATA.ROOT):
        raise LinearEvalError(f"DATA.ROOT {cfg.DATA.ROOT}: no such folder")
    for key, which in (("DATA.TRAIN_DIR", cfg.DATA.TRAIN_DIR), ("DATA.VAL_DIR", cfg.DATA.VAL_DIR)):
        folder = split_dir(cfg, which)
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


def build_views_of(cfg, name):
    """The view pipeline ``name`` of :mod:`pretrain.data.views` built from this config's INPUT keys (one view,
    no JigSaw)."""
    from pretrain.config import get_cfg as pretrain_cfg
    from pretrain.data.views import build_views

    p = pretrain_cfg()
    for key, value in cfg.INPUT.items():
        p.INPUT[key] = value.clone() if isinstance(value, CN) else value
    p.INPUT.NUM_VIEWS = 1
    p.JIGSAW.ENABLED = False
    try:
        return build_views(p, name)
    except (KeyError, ValueError) as e:
        raise LinearEvalError(f"AUGMENT {name}: {str(e).strip(chr(39))}") from None
