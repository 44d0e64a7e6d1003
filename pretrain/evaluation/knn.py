"""kNN evaluation on frozen features: the weighted k-nearest-neighbour classifier of Wu et al. (2018, InstDis)
on any backbone the project reads, as a command of its own (a sweep's ``knn`` evaluations, transfer curves).

    tools/knn_eval.py --config-file configs/linear/<dataset>.yaml --weights W [--out DIR] [--force]
        [--format LAYOUT] [--trust-pickle] KEY VALUE ...          (KNN.K 200, KNN.T 0.07)

The data, views and encoder are the linear evaluation's (:mod:`pretrain.evaluation.linear`; its config files
serve as they are): the labelled ``DATA.ROOT/DATA.TRAIN_DIR`` and ``DATA.VAL_DIR`` splits, the ``eval`` views
(resize, centre crop at ``INPUT.SIZE``), the pooled backbone features of
:func:`pretrain.evaluation.frozen.load_frozen_encoder`. The features are L2-normalised; every validation image
takes the ``KNN.K`` training images of largest cosine similarity s, each voting for its class with weight
exp(s / ``KNN.T``) (:func:`pretrain.training.knn.knn_predict`, the rule of the pretraining monitor). The
``SOLVER``, ``AUGMENT`` and ``LINEAR.STANDARDIZE`` keys are read and not used: nothing is trained.

Writes ``results.json`` in the run folder (``output/knn_<DATA.NAME>/<backbone>/frozen/seed<SEED>/`` or
``--out``): task ``knn_<DATA.NAME>``, mode ``frozen``, metrics ``{"knn": {"top1", "top5"}}`` (top-5 only with
more than 5 classes), ``iterations`` 0, ``arch`` and ``details`` (k, t, encoder, feature size, classes,
images), and ``config.yaml``. A run whose ``results.json`` exists is not repeated (``--force`` repeats it).
Errors a user can cause end with one line and exit status 2, before anything is written.
"""
import argparse
import json
import os
import time

import torch
import torch.nn.functional as F
from yacs.config import CfgNode as CN

from pretrain.common.cli import ArgumentParser, one_line_errors
from pretrain.common.fileio import write_text_atomic
from pretrain.common.runs import CONFIG_FILE, RESULTS_FILE, results_record, run_dir, write_results
from pretrain.evaluation.features import ViewedImages, extract_features, topk_accuracy, view_loader
from pretrain.evaluation.linear.config import (MODE, OUTPUT_ROOT, LinearEvalError, build_views_of, check_config,
                                               dataset_name, run_backbone)
from pretrain.evaluation.linear.config import get_cfg as linear_cfg
from pretrain.evaluation.linear.data import open_splits, worker_message
from pretrain.training.knn import knn_predict

__all__ = ["PROG", "get_cfg", "load_config", "check_knn_config", "task_name", "output_dir", "parse_args", "run",
           "main"]

PROG = "knn_eval"
_FLAGS = {"--force": "force", "--trust-pickle": "trust_pickle"}
_VALUED = {"--config-file": "config_file", "--weights": "weights", "--out": "out", "--format": "format"}


def get_cfg():
    """The linear evaluation's defaults plus ``KNN.K`` (neighbours) and ``KNN.T`` (temperature)."""
    c = linear_cfg()
    c.KNN = CN()
    c.KNN.K = 200
    c.KNN.T = 0.07
    return c


def load_config(config_file=None, opts=()):
    """Defaults + ``config_file`` + ``KEY VALUE`` pairs; raises :class:`LinearEvalError` (one line)."""
    from pretrain.config import ConfigError
    from pretrain.config import load_config as load_tree

    try:
        return load_tree(config_file, opts, defaults=get_cfg())
    except ConfigError as e:
        raise LinearEvalError(str(e)) from None


def check_knn_config(cfg):
    """The linear evaluation's checks (weights, data folders, name, views) and K, T; raises LinearEvalError."""
    check_config(cfg)
    if cfg.KNN.K < 1 or not cfg.KNN.T > 0:
        raise LinearEvalError(f"KNN.K {cfg.KNN.K} must be >= 1 and KNN.T {cfg.KNN.T} > 0")


def task_name(cfg):
    return f"knn_{dataset_name(cfg)}"


def output_dir(cfg):
    """``OUTPUT_DIR``, else ``output/knn_<name>/<backbone>/frozen/seed<SEED>``."""
    return cfg.OUTPUT_DIR or run_dir(OUTPUT_ROOT, task_name(cfg), run_backbone(cfg), MODE, cfg.SEED)


def parse_args(argv=None):
    """Parse; options written after the KEY VALUE pairs count too (as ``tools/linear_eval.py``)."""
    parser = ArgumentParser(prog=PROG, description="Weighted kNN classification on frozen features (InstDis).",
                            epilog="KEY VALUE pairs override config keys, e.g. DATA.ROOT /data/cifar10 KNN.K 20")
    parser.add_argument("--config-file", default="", metavar="FILE", help="YAML config (configs/linear/)")
    parser.add_argument("--weights", metavar="FILE", help="checkpoint or converted Detectron2 .pkl (sets WEIGHTS)")
    parser.add_argument("--out", metavar="DIR", help="output folder (default: OUTPUT_DIR, else "
                                                     "output/knn_<name>/<backbone>/frozen/seed<k>)")
    parser.add_argument("--format", default=None, metavar="LAYOUT", help="checkpoint layout (default: FORMAT, auto)")
    parser.add_argument("--trust-pickle", action="store_true",
                        help="allow full unpickling of the weights file (only for files from a trusted source)")
    parser.add_argument("--force", action="store_true", help="run again even if results.json exists")
    parser.add_argument("opts", nargs=argparse.REMAINDER, metavar="KEY VALUE", help="config overrides")
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


def _features(encoder, images, targets, views, cfg):
    from pretrain.data.labeled import LabeledDataError

    loader = view_loader(ViewedImages(images, views, seed=cfg.SEED, targets=targets),
                         cfg.LINEAR.FEATURE_BATCH_SIZE, cfg.DATA.NUM_WORKERS, encoder.device)
    try:
        feats, labels = extract_features(encoder, loader, encoder.device)
    except LabeledDataError as e:
        raise LinearEvalError(worker_message(e)) from None
    return F.normalize(feats.float(), dim=1), labels.long()


def run(cfg, out, fmt=None, trust_pickle=False):
    """One kNN evaluation of ``cfg`` (checked) into the folder ``out``; returns the results record."""
    from pretrain.evaluation.frozen import FrozenEncoderError, load_frozen_encoder

    start = time.perf_counter()
    views = build_views_of(cfg, "eval")
    splits = open_splits(cfg)
    try:
        encoder = load_frozen_encoder(cfg.WEIGHTS, fmt=fmt or cfg.FORMAT, trust_pickle=trust_pickle, device=cfg.DEVICE)
    except FrozenEncoderError as e:
        raise LinearEvalError(str(e)) from None
    if os.path.exists(out) and not os.path.isdir(out):
        raise LinearEvalError(f"{out}: exists and is not a folder (OUTPUT_DIR / --out)")
    os.makedirs(out, exist_ok=True)
    write_text_atomic(os.path.join(out, CONFIG_FILE), cfg.dump())
    with torch.no_grad():
        memory, memory_labels = _features(encoder, splits.train_images, splits.train_targets, views, cfg)
        query, query_labels = _features(encoder, splits.val_images, splits.val_targets, views, cfg)
    scores = knn_predict(query, memory, memory_labels, len(splits.classes), k=cfg.KNN.K, t=cfg.KNN.T)
    acc = topk_accuracy(scores, query_labels)
    metrics = {"top1": acc["top1"]}
    if len(splits.classes) > 5:  # with 5 classes or fewer top-5 is 100% by construction
        metrics["top5"] = acc["top5"]
    arch = getattr(encoder, "arch", None)
    details = {"k": min(cfg.KNN.K, len(splits.train_images)), "t": cfg.KNN.T, "encoder": encoder.description,
               "feature_dim": encoder.feature_dim, "classes": len(splits.classes),
               "train_images": len(splits.train_images), "val_images": len(splits.val_images),
               "seconds": round(time.perf_counter() - start, 2)}
    record = results_record(backbone=run_backbone(cfg), task=task_name(cfg), mode=MODE, seed=cfg.SEED,
                            weights=cfg.WEIGHTS, iterations=0, metrics={"knn": metrics},
                            **({"arch": arch} if arch else {}), details=details)
    write_results(out, record)
    return record


def main(argv=None):
    """Run the command with ``argv``; returns 0, or exits with status 2 and one line on stderr for a mistake
    the user can fix."""
    args = parse_args(argv)
    with one_line_errors(PROG, LinearEvalError):
        opts = list(args.opts) + (["WEIGHTS", args.weights] if args.weights else [])
        cfg = load_config(args.config_file or None, opts)
        if not cfg.DATA.NAME and args.config_file:
            cfg.DATA.NAME = os.path.splitext(os.path.basename(args.config_file))[0]
        check_knn_config(cfg)
        cfg.freeze()
        out = args.out or output_dir(cfg)
        if os.path.isfile(os.path.join(out, RESULTS_FILE)) and not args.force:
            print(f"{PROG}: {os.path.join(out, RESULTS_FILE)} exists; nothing to do (--force runs it again)")
            return 0
        record = run(cfg, out, fmt=args.format, trust_pickle=args.trust_pickle)
    print(json.dumps({"task": record["task"], "backbone": record["backbone"], **record["metrics"]["knn"]}))
    return 0
