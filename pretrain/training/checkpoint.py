"""Pretraining checkpoints (format in docs/artifacts.md): written atomically, read with the safe reader.

:func:`load_checkpoint` reads through :func:`pretrain.common.safe_load.read_checkpoint` (``weights_only``):
a file that stores code or arbitrary Python objects is refused in one line naming ``--trust-pickle``, a
damaged one is called truncated or corrupt.

A checkpoint is ``torch.save`` of a dict of plain containers, tensors and numbers::

    {"state_dict": method.state_dict(),      # encoder_q.* / encoder.*, encoder_k.*, queue, queue_ptr, heads
     "arch": "resnet50", "method": "moco", "config": "<YAML text>", "iter": int, "epoch": int,
     "iters_per_epoch": int, "max_iter": int, "world_size": int, "batch_size": int, "num_train_images": int,
     "optimizer": optimizer.state_dict(), "scheduler": {...}, "grad_scaler": {...} (fp16 only),
     "sampler": {"epoch": int, "position": int, "seed": int},
     "rng": [per-process {"torch", "cuda", "numpy", "python"}],
     "method_state": method.extra_state(), "bad_images": int, "versions": {...}}

``iter`` is the number of completed iterations, ``epoch`` the number of completed epochs (an epoch
that is under way is not counted); ``sampler.position`` is where this epoch's data continues.
"""
import os
import random

import numpy as np
import torch

from pretrain.common import safe_load
from pretrain.common.fileio import atomic_path

__all__ = ["CheckpointError", "atomic_save", "load_checkpoint", "capture_rng", "restore_rng"]


class CheckpointError(RuntimeError):
    """A checkpoint cannot be read or does not fit this run; one line naming the file."""


def atomic_save(obj, path):
    """``torch.save(obj, path)`` through a temporary file in the same folder and ``os.replace``."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_checkpoint(path, trust_pickle=False):
    """A pretraining checkpoint; ``trust_pickle``: full unpickling (``--trust-pickle``, can run code)."""
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        ckpt = safe_load.read_checkpoint(path, trust_pickle=trust_pickle)
    except safe_load.CheckpointError as e:
        raise CheckpointError(str(e)) from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "iter" not in ckpt:
        raise CheckpointError(f"{path}: not a pretraining checkpoint of this project (no state_dict/iter)")
    return ckpt


def capture_rng():
    """This process's RNG states as plain tensors and numbers."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
             "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng(state):
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
