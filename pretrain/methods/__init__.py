"""Pretraining methods, registered by name (``MODEL.METHOD``).

A method is one file defining a :class:`~pretrain.methods.base.Method` subclass, plus one line in
:data:`METHODS` below (``"name": "module:Class"``, imported on first use). The train loop only talks to
the :class:`Method` interface, so a method never needs a change to the loop.
"""
import importlib

from pretrain.methods.base import Method, mi_ceiling

__all__ = ["METHODS", "Method", "build_method", "get_method_class", "mi_ceiling"]

METHODS = {
    "moco": "pretrain.methods.moco:MoCo",   # MoCo v1/v2; with JIGSAW.ENABLED and InfoMin views: InfoMin
    "ir": "pretrain.methods.ir:IR",                 # instance discrimination (memory bank), InfoNCE or NCE form
    "ball": "pretrain.methods.ball:Ball",           # IR with negatives from the background set B_i
    "ball_plus": "pretrain.methods.ball:BallPlus",  # BALL with B_i annealed from the whole bank
    "ann": "pretrain.methods.ann:Ann",              # BALL without the close-neighbour set C_i (k-means)
    "ann_plus": "pretrain.methods.ann:AnnPlus",     # ANN with B_i and C_i annealed
    "la": "pretrain.methods.la:LocalAggregation",   # Local Aggregation, after LA.IR_EPOCHS of IR
    "cmc": "pretrain.methods.cmc:CMC",      # CMC on L and ab (Tian et al.); CMC-BALL/ANN(+) with CMC.NEGATIVES
}


def get_method_class(name):
    if name not in METHODS:
        raise KeyError(f"unknown MODEL.METHOD {name!r}; registered: {', '.join(sorted(METHODS))}")
    module, _, attr = METHODS[name].partition(":")
    return getattr(importlib.import_module(module), attr)


def build_method(cfg, num_train_images=None):
    """The method named by ``cfg.MODEL.METHOD``, built on the CPU (the loop moves it)."""
    return get_method_class(cfg.MODEL.METHOD)(cfg, num_train_images=num_train_images)
