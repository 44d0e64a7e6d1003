"""The transfer config: Detectron2's ``get_cfg()`` plus the project's keys, added in this one place.

The effective config of a run is built in a fixed order (:func:`build_config`):

1. Detectron2's defaults and the project's keys (:func:`get_transfer_cfg`);
2. the config file and its ``_BASE_`` chain, each file checked for duplicate keys first;
3. ``meta["cfg"]`` of the weights file (architecture and pixel format of the backbone);
4. the settings of ``TRANSFER.MODE`` (:func:`mode_settings`: frozen or fine-tuned backbone, SyncBN in the
   backbone and FPN), then the config file's own block for that mode (``TRANSFER.FINETUNE`` or
   ``TRANSFER.FROZEN``: the keys in which the published protocol of that mode differs from the file, e.g.
   InfoMin's SyncBN 4conv1fc heads, MoCo's 24k VOC schedule);
5. the command-line overrides, which win, except that contradicting the weights' meta is an error;
6. the hardware: device, SyncBN flavour, and the linear scaling rule from
   ``SOLVER.REFERENCE_WORLD_SIZE`` to the actual number of processes.

The weights' meta and the mode's settings sit under the command line; a mode block's key that the
weights' meta sets is left to the meta. :func:`effective_config_text` shows the result (``--print-config``).
"""
import logging
import os

import yaml
from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg

from pretrain.checkpoints.arch import ARCH_KEYS, STRIDE_KEY
from pretrain.common.safe_load import CheckpointError, read_checkpoint
from pretrain.common.yamlio import DuplicateKeyError, load_yaml
from transfer.training.heads import C4_HEADS  # importing it registers the project's C4 head
from transfer.training.overrides import check_overrides, merge_file

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
    # "finetune": whole backbone trained with SyncBN; "frozen": whole backbone frozen (FrozenBN)
    cfg.TRANSFER.MODE = "finetune"
    # label of the backbone in results.json; "" = the weights file's stem, or "random" without weights
    cfg.TRANSFER.BACKBONE_NAME = ""
    # C4 head (transfer.training.heads): a norm layer after res5 (MoCo's Res5ROIHeadsExtraNorm) ...
    cfg.TRANSFER.RES5_EXTRA_NORM = False
    # ... and res5 with the backbone's block type and count (basic blocks for ResNet-18/34) instead of
    # Detectron2's three bottleneck blocks
    cfg.TRANSFER.RES5_MATCH_BACKBONE = False
    # users' own COCO-format datasets: [[name, json_file, image_root], ...]
    cfg.TRANSFER.COCO_DATASETS = []
    # in training, pad every process's images to the largest size in the global batch, so that a run on
    # N processes equals one process with the same batch (transfer.training.global_batch)
    cfg.TRANSFER.PAD_TO_GLOBAL_BATCH = True
    # the published protocol this config reproduces in each mode, "<protocol>:<setting>" of
    # configs/protocols/<protocol>.yaml ("" = none; see transfer.training.protocol)
    cfg.TRANSFER.PROTOCOL = CN()
    cfg.TRANSFER.PROTOCOL.FINETUNE = ""
    cfg.TRANSFER.PROTOCOL.FROZEN = ""
    # per-mode blocks of config keys (nested as in the file), applied over the mode's settings
    cfg.TRANSFER.FINETUNE = CN(new_allowed=True)
    cfg.TRANSFER.FROZEN = CN(new_allowed=True)
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

# the only keys a weights file's meta["cfg"] may set: what the backbone is and how its input is encoded
# (anything else, e.g. MODEL.WEIGHTS or OUTPUT_DIR, would let a weights file redirect a run)
META_KEYS = (*ARCH_KEYS, STRIDE_KEY, "INPUT.FORMAT", "MODEL.PIXEL_MEAN", "MODEL.PIXEL_STD")

def read_weights_meta(path, trust_pickle=False):
    """``meta`` of a Detectron2 weights .pkl written by the converter ({} for other files)."""
    if not path or not path.endswith(".pkl"):
        return {}
    try:
        data = read_checkpoint(path, trust_pickle=trust_pickle)
    except CheckpointError as e:
        raise ConfigError(f"MODEL.WEIGHTS {e}") from None
    meta = data.get("meta", {}) if isinstance(data, dict) else {}
    return meta if isinstance(meta, dict) else {}


# ---------------------------------------------------------------------------------- building a config

def config_value(cfg, key):
    """The value of the dotted ``key`` in ``cfg``."""
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


def same_value(a, b):
    """Equal config values: lists and tuples alike, floats to 1e-6."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        try:
            return abs(float(a) - float(b)) < 1e-6
        except (TypeError, ValueError):
            return False
    return a == b


def _parse_opts(opts):
    probe = get_transfer_cfg()
    check_overrides(probe, opts, ConfigError)  # one line per unknown key (closest key named) or bad value
    probe.merge_from_list(list(opts))  # validates keys and value types the way Detectron2 does
    return {opts[i]: config_value(probe, opts[i]) for i in range(0, len(opts), 2)}


def mode_settings(cfg):
    """The config values that ``TRANSFER.MODE`` implies for any detector (before the file's mode block).

    frozen (Wu et al. 2020, Appendix B.5): the backbone frozen with its BN statistics; everything else is
    the config file's, i.e. Detectron2's default settings of the task, and Detectron2's stock C4 head.
    finetune (MoCo, InfoMin): the backbone trained from the stem on with SyncBN, SyncBN in the FPN (MoCo
    issue 34: "SyncBN only on backbone and FPN"), precise BN before evaluation, and in C4 detectors MoCo's
    norm after res5. Heads stay the file's; InfoMin's 4conv1fc SyncBN heads are in those files' blocks.
    """
    mode = cfg.TRANSFER.MODE
    if mode not in MODES:
        raise ConfigError(f"TRANSFER.MODE '{mode}' is not one of {MODES}")
    c4 = cfg.MODEL.ROI_HEADS.NAME in C4_HEADS
    settings = {"MODEL.ROI_HEADS.NAME": "Res5ROIHeadsAnyDepth"} if c4 else {}
    if mode == "frozen":
        settings.update({"MODEL.BACKBONE.FREEZE_AT": 5, "MODEL.RESNETS.NORM": "FrozenBN"})
        if c4:
            settings.update({"TRANSFER.RES5_EXTRA_NORM": False, "TRANSFER.RES5_MATCH_BACKBONE": False})
        return settings
    settings.update({"MODEL.BACKBONE.FREEZE_AT": 0, "MODEL.RESNETS.NORM": "SyncBN",
                     "TEST.PRECISE_BN.ENABLED": True})
    if c4:
        settings.update({"TRANSFER.RES5_EXTRA_NORM": True, "TRANSFER.RES5_MATCH_BACKBONE": True})
    if "fpn" in cfg.MODEL.BACKBONE.NAME:
        settings["MODEL.FPN.NORM"] = "SyncBN"
    return settings


def flatten(node, prefix=""):
    """``{"A.B.C": value}`` for every leaf of a (nested) config node."""
    out = {}
    for key, value in node.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def mode_block(cfg):
    """The config file's keys for its ``TRANSFER.MODE`` (``TRANSFER.FINETUNE`` or ``TRANSFER.FROZEN``), flat."""
    return flatten(cfg.TRANSFER[cfg.TRANSFER.MODE.upper()])


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
            if config_value(cfg, key) == "SyncBN":
                _set(cfg, key, "naiveSyncBN_N")
    return scale_to_world_size(cfg, world_size)


def _apply_mode(cfg, meta_cfg):
    settings = mode_settings(cfg)
    block = mode_block(cfg)
    where = f"TRANSFER.{cfg.TRANSFER.MODE.upper()}"
    pairs = []
    for key, value in {**settings, **block}.items():
        if key.startswith("TRANSFER.") and key.split(".")[1] in ("FINETUNE", "FROZEN", "MODE", "PROTOCOL"):
            raise ConfigError(f"{where}.{key}: a mode block cannot set {key}")
        if key not in meta_cfg:
            pairs += [key, value]
    try:
        cfg.merge_from_list(pairs)
    except (KeyError, ValueError, AssertionError) as e:
        raise ConfigError(f"{where}: {e}".replace("\n", " ")) from None


def _build_before_hardware(config_file, opts, weights_meta, trust_pickle=False):
    opts = list(opts)
    explicit = _parse_opts(opts)
    lint_config_file(config_file)

    cfg = get_transfer_cfg()
    merge_file(cfg, config_file, ConfigError)
    weights = explicit.get("MODEL.WEIGHTS", cfg.MODEL.WEIGHTS)
    meta = read_weights_meta(weights, trust_pickle) if weights_meta is None else weights_meta
    if weights.endswith(".pkl") and weights_meta is None and "cfg" not in meta:
        logger.warning(f"MODEL.WEIGHTS {weights} carries no meta['cfg']: its input format, pixel mean/std and "
                       "architecture are not checked against the config; weights converted by the project's "
                       "converter (convert_backbone) set them")
    meta_cfg = meta.get("cfg", {})

    if not isinstance(meta_cfg, dict):
        raise ConfigError(f"MODEL.WEIGHTS {weights}: meta['cfg'] is a {type(meta_cfg).__name__}, not a dict of "
                          "config keys")
    refused = sorted(set(meta_cfg) - set(META_KEYS))
    if refused:
        raise ConfigError(f"MODEL.WEIGHTS {weights}: meta['cfg'] may set only the backbone's architecture and pixel "
                          f"format, not {', '.join(map(str, refused))}; re-convert the checkpoint with "
                          "tools/convert_backbone.py")
    changed = []
    for key, value in meta_cfg.items():
        try:
            current = config_value(cfg, key)
        except KeyError:
            raise ConfigError(f"MODEL.WEIGHTS {weights}: meta key {key} is not a config key") from None
        if isinstance(current, tuple) and isinstance(value, list):
            value = tuple(value)
        if key in explicit and not same_value(explicit[key], value):
            raise ConfigError(f"{key} {explicit[key]!r} on the command line contradicts {value!r} "
                              f"required by the weights {weights} (meta['cfg'])")
        if not same_value(current, value):
            changed.append(f"{key} {current!r} -> {value!r}")
        _set(cfg, key, value)
    if changed:
        logger.info(f"weights meta of {weights} changed the config file's " + ", ".join(changed))

    # mode comes from the file or the command line; its settings sit under the command line
    if "TRANSFER.MODE" in explicit:
        cfg.TRANSFER.MODE = explicit["TRANSFER.MODE"]
    _apply_mode(cfg, meta_cfg)
    cfg.merge_from_list(opts)
    mode_keys = {"frozen": {"MODEL.BACKBONE.FREEZE_AT": 5}, "finetune": {"MODEL.BACKBONE.FREEZE_AT": 0}}
    for key, value in mode_keys[cfg.TRANSFER.MODE].items():
        if key in explicit and not same_value(explicit[key], value):
            raise ConfigError(f"{key} {explicit[key]} on the command line contradicts TRANSFER.MODE "
                              f"{cfg.TRANSFER.MODE} (which means {key} {value})")
    return cfg


def build_config(config_file, opts=(), world_size=1, has_cuda=None, weights_meta=None, trust_pickle=False):
    """The effective config of a run (see the module docstring for the order).

    ``weights_meta``: the ``meta`` of the weights to assume instead of reading ``MODEL.WEIGHTS`` (audits);
    ``trust_pickle``: read that file with full unpickling (``--trust-pickle``).
    """
    import torch

    cfg = _build_before_hardware(config_file, opts, weights_meta, trust_pickle)
    adapt_to_hardware(cfg, world_size, torch.cuda.is_available() if has_cuda is None else has_cuda)
    cfg.freeze()
    return cfg


def reference_config(config_file, opts=(), weights_meta=None, trust_pickle=False):
    """The effective config on the hardware the config was written for: ``SOLVER.REFERENCE_WORLD_SIZE``
    processes (the published 8 GPUs) with CUDA; one process where the config has no reference."""
    cfg = _build_before_hardware(config_file, opts, weights_meta, trust_pickle)
    adapt_to_hardware(cfg, cfg.SOLVER.REFERENCE_WORLD_SIZE or 1, True)
    cfg.freeze()
    return cfg


def effective_config_text(config_file, opts=(), world_size=1, reference=False, has_cuda=None, trust_pickle=False):
    """The effective config as YAML, headed by the hardware it is for (``train_net --print-config``).

    ``world_size``: the processes of the run (``--num-gpus`` x ``--num-machines``); ``reference``: for the
    hardware of the published setting instead (:func:`reference_config`). Reads the config files and the
    weights' meta, nothing else (no datasets, no model).
    """
    import torch

    if reference:
        cfg = reference_config(config_file, opts, trust_pickle=trust_pickle)
        where = f"{cfg.SOLVER.REFERENCE_WORLD_SIZE or 1} processes with CUDA (the config's reference hardware)"
    else:
        cuda = torch.cuda.is_available() if has_cuda is None else has_cuda
        cfg = build_config(config_file, opts, world_size, cuda, trust_pickle=trust_pickle)
        where = f"{world_size} process{'es' if world_size != 1 else ''} " + ("with CUDA" if cuda else "on the CPU")
    head = (f"# effective config of {config_file} for {where}, TRANSFER.MODE {cfg.TRANSFER.MODE}\n"
            "# = Detectron2's defaults < the config files < the weights' meta < the mode's settings and the "
            "file's mode block < the command line < the hardware\n")
    return head + cfg.dump()
