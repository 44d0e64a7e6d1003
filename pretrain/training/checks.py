"""Checks a pretraining config passes before anything expensive starts.

Every mistake a user can make in the config, the data folder, the architecture or the method raises
:class:`PretrainError` with one line naming the key or folder and what to do instead.
"""
import os

import torch

from pretrain.backbones import HEADS, parse_arch
from pretrain.data.images import IMAGE_EXTENSIONS
from pretrain.data.views import VIEWS, build_views
from pretrain.methods import get_method_class

__all__ = ["PretrainError", "check_config", "has_image", "count_images"]


class PretrainError(RuntimeError):
    """A run cannot start; one line naming the key, file or folder and what to do."""


def has_image(folder, limit=100000):
    """Whether ``folder`` holds at least one image file (stops at the first one, or after ``limit`` files)."""
    seen = 0
    for _, dirs, files in os.walk(folder, followlinks=True):
        dirs.sort()
        if any(f.lower().endswith(IMAGE_EXTENSIONS) for f in files):
            return True
        seen += len(files)
        if seen > limit:
            break
    return False


def count_images(root, at_most):
    """The images of a training folder as :func:`pretrain.data.images.scan_folder` lists them (image files
    directly in ``root``, and in its class folders, hidden names left out), counted up to ``at_most``."""
    count = 0
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError:
        return 0
    count += sum(1 for e in entries if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS))
    for entry in entries:
        if count >= at_most:
            break
        if not entry.is_dir() or entry.name.startswith("."):
            continue
        for _, dirs, files in os.walk(entry.path, followlinks=True):
            dirs.sort()
            count += sum(1 for f in files if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith("."))
            if count >= at_most:
                break
    return min(count, at_most)


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
    if not (os.path.isdir(val_dir) and has_image(val_dir)) or not labelled:
        raise PretrainError(f"SOLVER.LR_SCHEDULER plateau needs the kNN accuracy on a labelled validation folder: "
                            f"{val_dir} with class folders (and class folders in {train_dir}); use another "
                            "SOLVER.LR_SCHEDULER without one")


def _check_data(cfg):
    """DATA.ROOT holds ``TRAIN_DIR/`` with at least one image; returns that folder."""
    root = cfg.DATA.ROOT
    if not root:
        raise PretrainError("DATA.ROOT is not set; pass DATA.ROOT /path/to/imagenet (a folder with train/)")
    if not os.path.isdir(root):
        raise PretrainError(f"DATA.ROOT {root}: no such folder")
    train_dir = os.path.join(root, cfg.DATA.TRAIN_DIR)
    if not os.path.isdir(train_dir):
        raise PretrainError(f"DATA.ROOT {root}: has no {cfg.DATA.TRAIN_DIR}/ folder (expected "
                            f"{cfg.DATA.TRAIN_DIR}/<class>/<image>)")
    if not has_image(train_dir):
        raise PretrainError(f"{train_dir}: no images ({', '.join(IMAGE_EXTENSIONS)}) in it or its class folders")
    return train_dir


def _check_choice(key, value, allowed):
    if value not in allowed:
        raise PretrainError(f"unknown {key} {value!r}; use {', '.join(allowed[:-1])} or {allowed[-1]}")


def check_config(cfg, world_size=1):
    """Validate ``cfg`` for a run of ``world_size`` processes; raises :class:`PretrainError` (one line)."""
    train_dir = _check_data(cfg)
    try:
        parse_arch(cfg.MODEL.ARCH)
        cls = get_method_class(cfg.MODEL.METHOD)
    except (ValueError, KeyError) as e:
        raise PretrainError(str(e).strip("'\"")) from None
    if cfg.INPUT.VIEWS not in VIEWS:
        raise PretrainError(f"unknown INPUT.VIEWS {cfg.INPUT.VIEWS!r}; registered: {', '.join(sorted(VIEWS))}")
    _check_choice("MODEL.HEAD", cfg.MODEL.HEAD, HEADS)
    _check_choice("MODEL.PRECISION", cfg.MODEL.PRECISION, ("auto", "fp32", "bf16", "fp16"))
    _check_choice("INPUT.VIEW_BACKEND", cfg.INPUT.VIEW_BACKEND, ("fast", "pil"))
    _check_choice("DEVICE", cfg.DEVICE, ("auto", "cpu", "cuda"))
    if cfg.DEVICE == "cuda" and not torch.cuda.is_available():
        raise PretrainError("DEVICE cuda: no CUDA device is available (use DEVICE auto or cpu)")
    _check_choice("SOLVER.LR_SCHEDULER", cfg.SOLVER.LR_SCHEDULER, ("cosine", "step", "plateau"))
    if cfg.SOLVER.LR_SCHEDULER == "plateau":
        _check_plateau(cfg, train_dir)
    _check_choice("KNN.FEATURE", cfg.KNN.FEATURE, ("embedding", "backbone"))
    b = cfg.SOLVER.BATCH_SIZE
    if b < 1 or b % world_size:
        raise PretrainError(f"SOLVER.BATCH_SIZE {b} must be a positive multiple of the number of processes "
                            f"({world_size})")
    # the sampler drops the last partial batch: an epoch needs at least one batch of images (the trainer
    # checks it again on the listed files; here it is refused before OUTPUT_DIR or log.txt exist)
    found = count_images(train_dir, b)
    if found < b:
        raise PretrainError(f"{train_dir}: {found} images, fewer than one batch of SOLVER.BATCH_SIZE {b}; lower "
                            "SOLVER.BATCH_SIZE")
    if cfg.SOLVER.EPOCHS <= 0 and cfg.SOLVER.MAX_ITER <= 0:
        raise PretrainError("set SOLVER.EPOCHS or SOLVER.MAX_ITER to a positive number")
    if cfg.INPUT.SIZE < 8 or cfg.INPUT.NUM_VIEWS < 1:
        raise PretrainError(f"INPUT.SIZE {cfg.INPUT.SIZE} / INPUT.NUM_VIEWS {cfg.INPUT.NUM_VIEWS} too small")
    lo, hi = cfg.INPUT.CROP_SCALE
    if not 0 < lo <= hi <= 1:
        raise PretrainError(f"INPUT.CROP_SCALE {tuple(cfg.INPUT.CROP_SCALE)} must satisfy 0 < low <= high <= 1")
    try:
        build_views(cfg)
        cls.check_config(cfg)
    except ValueError as e:
        raise PretrainError(str(e)) from None
    if cfg.LOG_PERIOD < 1:
        raise PretrainError("LOG_PERIOD must be >= 1")
    if cfg.SOLVER.SNAPSHOT_EPOCHS < 0:
        raise PretrainError(f"SOLVER.SNAPSHOT_EPOCHS {cfg.SOLVER.SNAPSHOT_EPOCHS} must be >= 0 (0: no snapshots)")
