"""The transfer config: Detectron2's ``get_cfg()`` plus the project's keys, added in this one place.

The effective config of a run is built in a fixed order (:func:`build_config`):

1. Detectron2's defaults and the project's keys (:func:`get_transfer_cfg`);
2. the config file and its ``_BASE_`` chain, each file checked for duplicate keys first;
3. ``meta["cfg"]`` of the weights file (architecture and pixel format of the backbone);
4. the settings of ``TRANSFER.MODE`` (frozen or fine-tuned backbone, SyncBN in the new layers);
5. the command-line overrides, which win, except that contradicting the weights' meta is an error;
6. the hardware: device, SyncBN flavour, and the linear scaling rule from
   ``SOLVER.REFERENCE_WORLD_SIZE`` to the actual number of processes.
"""
import logging
import os

import yaml
from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg

import transfer.heads  # noqa: F401  (registers the project's heads)
from transfer.checkpoint_io import CheckpointError, read_checkpoint
from transfer.yamlio import DuplicateKeyError, load_yaml

logger = logging.getLogger(__name__)

MODES = ("finetune", "frozen")
NORM_KEYS = ("MODEL.RESNETS.NORM", "MODEL.FPN.NORM", "MODEL.ROI_BOX_HEAD.NORM", "MODEL.ROI_MASK_HEAD.NORM")


# Overrides that make any setting tiny enough for a CPU in seconds per iteration (tests, demo): small
# images, few proposals and ROIs, narrow FPN and heads, one process's batch, no LR rescaling, and
# per-parameter gradient clipping (a frozen random-init backbone, whose FrozenBN statistics do not
# normalise anything, otherwise diverges within a hundred iterations: measured).
TINY_OVERRIDES = [
    "SOLVER.REFERENCE_WORLD_SIZE", "0", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.BASE_LR", "0.02",
    "SOLVER.WARMUP_ITERS", "10", "SOLVER.STEPS", "()", "SOLVER.CHECKPOINT_PERIOD", "100000",
    "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "192",
    "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "192",
    "MODEL.RPN.PRE_NMS_TOPK_TRAIN", "200", "MODEL.RPN.POST_NMS_TOPK_TRAIN", "100",
    "MODEL.RPN.PRE_NMS_TOPK_TEST", "200", "MODEL.RPN.POST_NMS_TOPK_TEST", "50",
    "MODEL.RPN.BATCH_SIZE_PER_IMAGE", "64", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32",
    "MODEL.FPN.OUT_CHANNELS", "32", "MODEL.ROI_BOX_HEAD.CONV_DIM", "32", "MODEL.ROI_BOX_HEAD.FC_DIM", "64",
    "MODEL.ROI_MASK_HEAD.CONV_DIM", "32", "MODEL.ROI_KEYPOINT_HEAD.CONV_DIMS", "(64,64)",
    "TEST.DETECTIONS_PER_IMAGE", "20", "TEST.PRECISE_BN.NUM_ITER", "2",
    "DATALOADER.NUM_WORKERS", "0", "SOLVER.CLIP_GRADIENTS.ENABLED", "True",
    "SOLVER.CLIP_GRADIENTS.CLIP_TYPE", "norm", "SOLVER.CLIP_GRADIENTS.CLIP_VALUE", "1.0",
]


class ConfigError(ValueError):
    """A config a run cannot start with, explained in one line."""


def add_transfer_config(cfg):
    """Add the project's keys (and their defaults) to a Detectron2 config."""
    cfg.TRANSFER = CN()
    # "finetune": backbone trained from res2 on with SyncBN; "frozen": whole backbone frozen (FrozenBN)
    cfg.TRANSFER.MODE = "finetune"
    # label of the backbone in results.json; "" = the weights file's stem, or "random" without weights
    cfg.TRANSFER.BACKBONE_NAME = ""
    # a norm layer after res5 in the C4 head (MoCo's fine-tuning protocol); used by Res5ROIHeadsAnyDepth
    cfg.TRANSFER.RES5_EXTRA_NORM = False
    # users' own COCO-format datasets: [[name, json_file, image_root], ...]
    cfg.TRANSFER.COCO_DATASETS = []
    return cfg


def get_transfer_cfg():
    """A fresh config with Detectron2's defaults and the project's keys."""
    return add_transfer_config(get_cfg())


# ------------------------------------------------------------------------------- duplicate-key lint

def lint_config_file(path, _chain=()):
    """Check ``path`` and every file of its ``_BASE_`` chain for duplicate keys; return the chain."""
    path = os.path.abspath(path)
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    if path in _chain:
        raise ConfigError(f"{path}: _BASE_ chain loops back to this file")
    try:
        data = load_yaml(path) or {}
    except DuplicateKeyError as e:
        raise ConfigError(str(e)) from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}".replace("\n", " ")) from None
    chain = (*_chain, path)
    base = data.get("_BASE_") if isinstance(data, dict) else None
    if base:
        base = os.path.expanduser(base)
        if not base.startswith(("/", "https://", "http://")):
            base = os.path.join(os.path.dirname(path), base)
        chain = lint_config_file(base, chain)
    return chain


# -------------------------------------------------------------------------------------- weights meta

def read_weights_meta(path):
    """``meta`` of a Detectron2 weights .pkl written by the converter ({} for other files)."""
    if not path or not path.endswith(".pkl"):
        return {}
    try:
        data = read_checkpoint(path)
    except CheckpointError as e:
        raise ConfigError(f"MODEL.WEIGHTS {e}") from None
    meta = data.get("meta", {}) if isinstance(data, dict) else {}
    return meta if isinstance(meta, dict) else {}


# ---------------------------------------------------------------------------------- building a config

def _get(cfg, key):
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def _set(cfg, key, value):
    *parents, leaf = key.split(".")
    node = cfg
    for part in parents:
        node = node[part]
    node[leaf] = value


def _same(a, b):
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        try:
            return abs(float(a) - float(b)) < 1e-6
        except (TypeError, ValueError):
            return False
    return a == b


def _parse_opts(opts):
    if len(opts) % 2:
        raise ConfigError(f"command-line overrides must be KEY VALUE pairs; got {len(opts)} words (last: {opts[-1]!r})")
    probe = get_transfer_cfg()
    probe.merge_from_list(list(opts))  # validates keys and value types the way Detectron2 does
    return {opts[i]: _get(probe, opts[i]) for i in range(0, len(opts), 2)}


def mode_settings(cfg):
    """The config values that ``TRANSFER.MODE`` implies for this config's detector."""
    mode = cfg.TRANSFER.MODE
    if mode not in MODES:
        raise ConfigError(f"TRANSFER.MODE '{mode}' is not one of {MODES}")
    c4 = cfg.MODEL.ROI_HEADS.NAME in ("Res5ROIHeads", "Res5ROIHeadsAnyDepth")
    settings = {}
    if c4:
        settings["MODEL.ROI_HEADS.NAME"] = "Res5ROIHeadsAnyDepth"
    if mode == "frozen":
        # Wu et al.: the whole backbone frozen with its BN statistics; the heads are Detectron2's
        settings.update({"MODEL.BACKBONE.FREEZE_AT": 5, "MODEL.RESNETS.NORM": "FrozenBN",
                         "TRANSFER.RES5_EXTRA_NORM": False})
        return settings
    # MoCo / InfoMin: fine-tune from res2 on with SyncBN, and SyncBN in every newly initialised layer
    settings.update({"MODEL.BACKBONE.FREEZE_AT": 0, "MODEL.RESNETS.NORM": "SyncBN",
                     "TEST.PRECISE_BN.ENABLED": True})
    if c4:
        settings["TRANSFER.RES5_EXTRA_NORM"] = True
    else:
        settings.update({"MODEL.FPN.NORM": "SyncBN", "MODEL.ROI_BOX_HEAD.NAME": "FastRCNNConvFCHead",
                         "MODEL.ROI_BOX_HEAD.NUM_CONV": 4, "MODEL.ROI_BOX_HEAD.NUM_FC": 1,
                         "MODEL.ROI_BOX_HEAD.NORM": "SyncBN"})
    if cfg.MODEL.MASK_ON:
        settings["MODEL.ROI_MASK_HEAD.NORM"] = "SyncBN"
    return settings


def scale_to_world_size(cfg, world_size):
    """Linear scaling rule from the reference world size to ``world_size`` (batch, LR, schedule)."""
    ref = cfg.SOLVER.REFERENCE_WORLD_SIZE
    if ref in (0, world_size):
        return cfg
    batch = cfg.SOLVER.IMS_PER_BATCH
    if (batch * world_size) % ref:
        raise ConfigError(
            f"SOLVER.IMS_PER_BATCH {batch} for SOLVER.REFERENCE_WORLD_SIZE {ref} cannot be scaled to "
            f"{world_size} processes (need a whole number of images per step); set REFERENCE_WORLD_SIZE 0 "
            "to use the config's batch as is")
    scale = world_size / ref
    solver = cfg.SOLVER
    solver.IMS_PER_BATCH = int(round(batch * scale))
    solver.BASE_LR = solver.BASE_LR * scale
    solver.MAX_ITER = int(round(solver.MAX_ITER / scale))
    solver.WARMUP_ITERS = int(round(solver.WARMUP_ITERS / scale))
    solver.STEPS = tuple(int(round(s / scale)) for s in solver.STEPS)
    cfg.TEST.EVAL_PERIOD = int(round(cfg.TEST.EVAL_PERIOD / scale))
    solver.CHECKPOINT_PERIOD = int(round(solver.CHECKPOINT_PERIOD / scale))
    solver.REFERENCE_WORLD_SIZE = world_size
    logger.info(f"scaled from {ref} to {world_size} processes: batch {batch} -> {solver.IMS_PER_BATCH}, "
                f"lr -> {solver.BASE_LR:g}, {solver.MAX_ITER} iterations")
    return cfg


def adapt_to_hardware(cfg, world_size, has_cuda):
    """Device, SyncBN flavour and scaling for the processes this run actually has."""
    if not has_cuda:
        if cfg.MODEL.DEVICE.startswith("cuda"):
            logger.info("no CUDA device: running on the CPU")
        cfg.MODEL.DEVICE = "cpu"
        if cfg.SOLVER.AMP.ENABLED:
            logger.warning("SOLVER.AMP.ENABLED needs CUDA; training in fp32 on the CPU")
            cfg.SOLVER.AMP.ENABLED = False
    # torch's SyncBatchNorm needs GPU tensors; Detectron2's NaiveSyncBN all-reduces through any
    # backend (gloo on CPU), weighs ranks by their batch (a rank may have no ROIs), and is plain BN
    # in one process
    if cfg.MODEL.DEVICE == "cpu":
        for key in NORM_KEYS:
            if _get(cfg, key) == "SyncBN":
                _set(cfg, key, "naiveSyncBN_N")
    return scale_to_world_size(cfg, world_size)


def build_config(config_file, opts=(), world_size=1, has_cuda=None):
    """The effective config of a run (see the module docstring for the order)."""
    import torch

    opts = list(opts)
    explicit = _parse_opts(opts)
    lint_config_file(config_file)

    cfg = get_transfer_cfg()
    cfg.merge_from_file(config_file)
    weights = explicit.get("MODEL.WEIGHTS", cfg.MODEL.WEIGHTS)
    meta = read_weights_meta(weights)
    meta_cfg = meta.get("cfg", {})

    changed = []
    for key, value in meta_cfg.items():
        try:
            current = _get(cfg, key)
        except KeyError:
            raise ConfigError(f"MODEL.WEIGHTS {weights}: meta key {key} is not a config key") from None
        if isinstance(current, tuple) and isinstance(value, list):
            value = tuple(value)
        if key in explicit and not _same(explicit[key], value):
            raise ConfigError(f"{key} {explicit[key]!r} on the command line contradicts {value!r} "
                              f"required by the weights {weights} (meta['cfg'])")
        if not _same(current, value):
            changed.append(f"{key} {current!r} -> {value!r}")
        _set(cfg, key, value)
    if changed:
        logger.info(f"weights meta of {weights} changed the config file's " + ", ".join(changed))

    # mode comes from the file or the command line; its settings sit under the command line
    if "TRANSFER.MODE" in explicit:
        cfg.TRANSFER.MODE = explicit["TRANSFER.MODE"]
    for key, value in mode_settings(cfg).items():
        if key in meta_cfg:
            continue
        _set(cfg, key, value)
    cfg.merge_from_list(opts)
    mode_keys = {"frozen": {"MODEL.BACKBONE.FREEZE_AT": 5}, "finetune": {"MODEL.BACKBONE.FREEZE_AT": 0}}
    for key, value in mode_keys[cfg.TRANSFER.MODE].items():
        if key in explicit and not _same(explicit[key], value):
            raise ConfigError(f"{key} {explicit[key]} on the command line contradicts TRANSFER.MODE "
                              f"{cfg.TRANSFER.MODE} (which means {key} {value})")

    adapt_to_hardware(cfg, world_size, torch.cuda.is_available() if has_cuda is None else has_cuda)
    cfg.freeze()
    return cfg
