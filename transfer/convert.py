"""Convert a self-supervised ResNet checkpoint to verified Detectron2 weights (and back to torchvision).

The converter detects where the backbone lives in a checkpoint (the *layout*), infers the ResNet from
tensor shapes alone, writes Detectron2 weights with the config keys they need, and proves that
Detectron2's ResNet built from those keys computes the same features as the source network.

Layouts (``--format``; ``auto`` tries them in this order and takes the first that matches)
-----------------------------------------------------------------------------------------
=============  ==========================================================================================
``pretrain``   this project's pretraining checkpoints (DESIGN.md artifact 1), see below
``moco``       MoCo v1/v2: ``state_dict['module.encoder_q.*']``; ``--ema``: ``module.encoder_k.*``
``mocov3``     MoCo v3: ``state_dict['module.base_encoder.*']``; ``--ema``: ``module.momentum_encoder.*``
``pycontrast`` InfoMin / PyContrast: ``model['module.encoder.*']``; ``--ema``: ``model_ema['encoder.*']``
``solo-learn`` solo-learn (Lightning): ``state_dict['backbone.*']`` next to ``projector``,
               ``momentum_backbone``, ``classifier``, ...; ``--ema``: ``momentum_backbone.*``
``mmselfsup``  mmselfsup / mmpretrain: ``state_dict['backbone.*']`` (torchvision names inside)
``vissl``      VISSL: ``classy_state_dict.base_model.model.trunk['_feature_blocks.*']``
``detectron2`` Detectron2 names (``stem.conv1.*``, ``res2.0.conv1.norm.*``): a weights ``.pkl``
               (with or without ``meta``) or a trained model (``model['backbone.bottom_up.*']`` for FPN,
               ``backbone.*`` + ``roi_heads.res5.*`` for C4); validated and passed through
``caffe2``     Caffe2 / Detectron1 names (``conv1_w``, ``res_conv1_bn_s``, ``res2_0_branch2a_w``): the
               MSRA/FAIR ImageNet ``.pkl`` files of Detectron2's model zoo
``timm``       timm's training checkpoints: ``state_dict`` (``--ema``: ``state_dict_ema``) with
               torchvision names (timm's ResNets use torchvision's names)
``torchvision`` a plain state dict with torchvision names (``conv1.weight``, ``layer1.0.conv1.weight``,
               optionally ``module.``-prefixed), also under ``model`` as torchvision's references save it
               (``--ema``: ``model_ema``); timm hub weights are read as this layout
=============  ==========================================================================================

Inside the backbone, projection heads (``fc``, ``head``), predictors, momentum encoders, queues and
memory banks, optimizer state and ``num_batches_tracked`` are dropped and counted by category.
Checkpoints of CMC (two encoders, on L and ab channels) are refused: they are not an RGB backbone.

This project's pretraining checkpoint (``--format pretrain``)
-------------------------------------------------------------
``torch.save`` of a dict, loadable with ``torch.load(weights_only=True)``::

    {"state_dict": {"encoder_q.<torchvision ResNet name>": tensor,   # query / online encoder
                    "encoder_k.<torchvision ResNet name>": tensor,   # key / momentum encoder, optional
                    "queue": tensor, "queue_ptr": tensor, "head.*": ..., ...},
     "arch": "resnet50",       # torchvision model name (width multipliers: e.g. "resnet50x2")
     "method": "moco", "config": "<YAML text>", "iter": int, "epoch": int, ...}

A single-encoder method stores its encoder under ``encoder.`` instead of ``encoder_q.``. Inside an
encoder the names are torchvision's ``ResNet`` names (``conv1``, ``bn1``, ``layer1.0.conv1``, ...,
``fc`` for the projection head, which is dropped). ``method`` marks the layout; ``--ema`` converts
``encoder_k.``.

Conventions written to ``meta["cfg"]``
--------------------------------------
Architecture keys come from the tensors: ``MODEL.RESNETS.DEPTH`` from the blocks per stage and the block
type, ``NUM_GROUPS``/``WIDTH_PER_GROUP`` from the 3x3 convs of ``res2``, ``STEM_OUT_CHANNELS`` and
``RES2_OUT_CHANNELS`` from the stem and ``res2`` outputs (so wide ResNets and R50x2-style width
multipliers come out right). Input keys: every torchvision-style source takes RGB inputs normalised
with ImageNet's mean/std and puts the stride in the 3x3 conv (``STRIDE_IN_1X1 = False``). Detectron2
inputs keep the ``cfg`` of their ``meta`` when they have one. Without ``meta`` the convention cannot be
read from the weights, so it is assumed, and the summary says so:

- Detectron2 names: torchvision's convention (what torchvision/MoCo/PyContrast converters write);
- Caffe2 names: Detectron2's MSRA ImageNet models (BGR, Caffe means, std 1, ``STRIDE_IN_1X1 = True``),
  or for ResNeXt its FAIR models (BGR, std ``[57.375, 57.12, 58.395]``, ``STRIDE_IN_1X1 = False``);
  their BatchNorms hold only scale and bias, so running mean 0 and variance 1 are written, exactly what
  Detectron2 fills in when it loads those files.

Verification
------------
Detectron2's ResNet is built from ``meta["cfg"]`` with FrozenBN and loaded through
``DetectionCheckpointer`` with its name-matching heuristics, nested as ``backbone.bottom_up`` like an FPN
detector; every backbone weight must be loaded and every converted tensor used. The reference is
torchvision's ``ResNet`` built for the inferred architecture and loaded from the source weights. Both run
in float32, as a detector does, on the same random batch (2x3x64x64, seed 0); the error of each stage is
``max|res_k - layer_(k-1)| / max|layer_(k-1)|`` and the conversion fails above ``1e-4``.

API
---
:func:`convert` does everything (read, detect, infer, map, verify, write atomically) and returns a
:class:`ConversionResult` whose :meth:`~ConversionResult.summary` the CLI prints. The pieces:
:func:`extract_backbone`, :func:`infer_architecture`, :func:`torchvision_to_detectron2`,
:func:`detectron2_to_torchvision`, :func:`build_torchvision_resnet`, :func:`build_detectron2_resnet`,
:func:`verify_features`. Every error a user can cause raises :class:`ConversionError` (one line).
"""
import collections
import dataclasses
import logging
import os
import re
import time
from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from transfer.checkpoint_io import CheckpointError, atomic_path, dump_pickle, read_checkpoint, sha256_file

__all__ = [
    "ConversionError", "ResNetArch", "Backbone", "Verification", "ConversionResult", "LAYOUTS",
    "TORCHVISION_INPUT", "MAX_REL_ERROR", "convert", "extract_backbone", "infer_architecture",
    "torchvision_to_detectron2", "detectron2_to_torchvision", "build_torchvision_resnet",
    "build_detectron2_resnet", "verify_features", "detectron2_payload",
]

AUTHOR = "ssl-d2-transfer (transfer.convert)"
MAX_REL_ERROR = 1e-4
STAGES = ("res2", "res3", "res4", "res5")

TORCHVISION_INPUT = {"INPUT.FORMAT": "RGB", "MODEL.PIXEL_MEAN": [123.675, 116.28, 103.53],
                     "MODEL.PIXEL_STD": [58.395, 57.12, 57.375]}
MSRA_INPUT = {"INPUT.FORMAT": "BGR", "MODEL.PIXEL_MEAN": [103.53, 116.28, 123.675],
              "MODEL.PIXEL_STD": [1.0, 1.0, 1.0]}
FAIR_INPUT = {"INPUT.FORMAT": "BGR", "MODEL.PIXEL_MEAN": [103.53, 116.28, 123.675],
              "MODEL.PIXEL_STD": [57.375, 57.12, 58.395]}
_INPUT_KEYS = tuple(TORCHVISION_INPUT)
_ARCH_KEYS = ("MODEL.RESNETS.DEPTH", "MODEL.RESNETS.NUM_GROUPS", "MODEL.RESNETS.WIDTH_PER_GROUP",
              "MODEL.RESNETS.STEM_OUT_CHANNELS", "MODEL.RESNETS.RES2_OUT_CHANNELS")
_STRIDE_KEY = "MODEL.RESNETS.STRIDE_IN_1X1"

_BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
_DEPTH = {("basic", (2, 2, 2, 2)): 18, ("basic", (3, 4, 6, 3)): 34, ("bottleneck", (3, 4, 6, 3)): 50,
          ("bottleneck", (3, 4, 23, 3)): 101, ("bottleneck", (3, 8, 36, 3)): 152}
_BN_PARAMS = ("weight", "bias", "running_mean", "running_var")


class ConversionError(Exception):
    """A checkpoint cannot be converted; the message is one line saying what and what to do."""


# ---------------------------------------------------------------------------------------------------
# Architecture
# ---------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ResNetArch:
    """A ResNet as both torchvision and Detectron2 can build it; widths are those of ``res2``."""

    depth: int
    bottleneck: bool
    stem_channels: int = 64
    res2_out_channels: int = 256
    num_groups: int = 1
    width_per_group: int = 64
    stride_in_1x1: bool = False

    @property
    def num_blocks(self):
        return _BLOCKS[self.depth]

    @property
    def bottleneck_channels(self):
        return self.num_groups * self.width_per_group

    @property
    def name(self):
        """Short name: R-18, R-50, X-50-32x4d, WR-50-2, R-50x2, ..."""
        if not self.bottleneck:
            name = f"R-{self.depth}"
            return name if self.stem_channels == 64 else f"{name} (stem {self.stem_channels})"
        mult = self.res2_out_channels / 256
        if self.num_groups > 1:
            name = f"X-{self.depth}-{self.num_groups}x{self.width_per_group}d"
        elif self.width_per_group == 64 * mult:
            name = f"R-{self.depth}"
        else:
            name = f"WR-{self.depth}-{self.width_per_group / (64 * mult):g}"
        if mult != 1:
            name += f"x{mult:g}"
        if self.stem_channels != 64 * mult:
            name += f" (stem {self.stem_channels})"
        return name

    @property
    def torchvision_name(self):
        """The torchvision model function building this network, or None."""
        if self.stem_channels != 64 or self.res2_out_channels != (256 if self.bottleneck else 64):
            return None
        if not self.bottleneck or (self.num_groups, self.width_per_group) == (1, 64):
            return f"resnet{self.depth}"
        if self.num_groups == 1 and self.width_per_group == 128:
            return f"wide_resnet{self.depth}_2"
        if self.num_groups > 1:
            return f"resnext{self.depth}_{self.num_groups}x{self.width_per_group}d"
        return None

    def describe(self):
        blocks = "bottleneck" if self.bottleneck else "basic"
        text = (f"{self.name}: {blocks} blocks {list(self.num_blocks)}, stem {self.stem_channels}, "
                f"res2 out {self.res2_out_channels}")
        if self.bottleneck:
            text += f", res2 bottleneck {self.num_groups}x{self.width_per_group}"
        if self.torchvision_name:
            text += f" (torchvision {self.torchvision_name})"
        return text

    def detectron2_cfg(self):
        """The ``MODEL.RESNETS.*`` keys Detectron2's ``build_resnet_backbone`` needs for this network."""
        return {"MODEL.RESNETS.DEPTH": self.depth,
                "MODEL.RESNETS.NUM_GROUPS": self.num_groups,
                "MODEL.RESNETS.WIDTH_PER_GROUP": self.width_per_group,
                "MODEL.RESNETS.STEM_OUT_CHANNELS": self.stem_channels,
                "MODEL.RESNETS.RES2_OUT_CHANNELS": self.res2_out_channels,
                _STRIDE_KEY: bool(self.stride_in_1x1)}


def build_torchvision_resnet(arch, device=None):
    """torchvision's ``ResNet`` for ``arch`` (any stem and res2 width; stride moved to the 1x1 conv of
    each stage's first block when ``arch.stride_in_1x1``, as in MSRA's ResNet v1)."""
    from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

    block = Bottleneck if arch.bottleneck else BasicBlock
    planes = arch.res2_out_channels // block.expansion
    with torch.device(device or "cpu"):
        model = ResNet(BasicBlock, [1, 1, 1, 1])  # shell; every layer is rebuilt below
        model.inplanes = arch.stem_channels
        model.groups = arch.num_groups
        model.base_width = arch.width_per_group * 64 / planes
        model.conv1 = nn.Conv2d(3, arch.stem_channels, kernel_size=7, stride=2, padding=3, bias=False)
        model.bn1 = nn.BatchNorm2d(arch.stem_channels)
        for i, n in enumerate(arch.num_blocks):
            layer = model._make_layer(block, planes * 2 ** i, n, stride=1 if i == 0 else 2)
            setattr(model, f"layer{i + 1}", layer)
        model.fc = nn.Linear(planes * 8 * block.expansion, 1000)
    if arch.stride_in_1x1 and arch.bottleneck:
        for i in (2, 3, 4):
            first = getattr(model, f"layer{i}")[0]
            first.conv1.stride, first.conv2.stride = first.conv2.stride, (1, 1)
    return model


def _expected_shapes(arch):
    model = build_torchvision_resnet(arch, device="meta")
    return {k: tuple(v.shape) for k, v in model.state_dict().items()
            if not k.startswith("fc.") and not k.endswith("num_batches_tracked")}


def _d2_cfg(cfg_dict, out_features=STAGES):
    from detectron2.config import get_cfg

    cfg = get_cfg()
    items = []
    for key, value in cfg_dict.items():
        if key.startswith("MODEL.RESNETS."):
            items += [key, list(value) if isinstance(value, tuple) else value]
    try:
        cfg.merge_from_list(items)
    except (KeyError, ValueError, AssertionError) as e:
        raise ConversionError(f"Detectron2 rejects the config keys {items}: {e}") from None
    cfg.MODEL.RESNETS.NORM = "FrozenBN"
    cfg.MODEL.RESNETS.OUT_FEATURES = list(out_features)
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    return cfg


def build_detectron2_resnet(cfg_dict, out_features=STAGES, device=None):
    """Detectron2's ``build_resnet_backbone`` from a flat dict of config keys, with FrozenBN."""
    from detectron2.layers import ShapeSpec
    from detectron2.modeling.backbone.resnet import build_resnet_backbone

    cfg = _d2_cfg(cfg_dict, out_features)
    with torch.device(device or "cpu"):
        return build_resnet_backbone(cfg, ShapeSpec(channels=3))


def _describe_keys(keys, n=6):
    keys = list(keys)
    shown = ", ".join(keys[:n])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > n else "")


_VIT_KEYS = re.compile(r"(^|\.)(cls_token|pos_embed|patch_embed|blocks\.\d+\.attn|norm_pre|mask_token)")


def _not_resnet(where, keys):
    keys = sorted(keys)
    hint = ""
    if any(_VIT_KEYS.search(k) for k in keys):
        hint = " (these are Vision Transformer tensors)"
    return ConversionError(f"{where} holds no ResNet (no conv1.weight / layer1..4 tensors){hint}; keys seen: "
                           f"{_describe_keys(keys)}; only ResNet backbones convert to Detectron2's ResNet")


def infer_architecture(state, where="the backbone", stride_in_1x1=False):
    """Infer the :class:`ResNetArch` of a state dict with torchvision names from tensor shapes alone.

    Checks that the network is complete and that every tensor has the shape the architecture implies.
    """
    keys = set(state)
    stages = {i: sorted({int(m.group(1)) for k in keys for m in [re.match(rf"layer{i}\.(\d+)\.", k)] if m})
              for i in (1, 2, 3, 4)}
    if "conv1.weight" not in keys and not any(stages.values()):
        if any(k.startswith("conv1.0.") or k.startswith("stem.") for k in keys):
            raise ConversionError(f"{where} has a deep (3-conv) stem; Detectron2's BasicStem is a single "
                                  "7x7 conv, so ResNet-D style stems cannot be converted")
        raise _not_resnet(where, keys)
    missing = ([] if "conv1.weight" in keys else ["stem (conv1)"]) + \
        [f"res{i + 1} (layer{i})" for i in (1, 2, 3, 4) if not stages[i]]
    if missing:
        raise ConversionError(f"partial backbone in {where}: {', '.join(missing)} missing")
    conv1 = state["conv1.weight"]
    if conv1.ndim != 4:
        raise ConversionError(f"{where}: conv1.weight has shape {tuple(conv1.shape)}, not a conv kernel")
    if conv1.shape[1] in (1, 2):
        raise ConversionError(f"{where}: conv1 takes {conv1.shape[1]} input channel(s), as CMC's L/ab "
                              "encoders do; two encoders on L and ab inputs are not an RGB backbone")
    if conv1.shape[1] != 3:
        raise ConversionError(f"{where}: conv1 takes {conv1.shape[1]} input channels; Detectron2's ResNet "
                              "takes 3 (RGB or BGR)")
    if tuple(conv1.shape[2:]) != (7, 7):
        raise ConversionError(f"{where}: the stem conv is {conv1.shape[2]}x{conv1.shape[3]} (a CIFAR-style "
                              "ResNet?); Detectron2's BasicStem is a 7x7 stride-2 conv with max-pool")
    counts = []
    for i in (1, 2, 3, 4):
        if stages[i] != list(range(len(stages[i]))):
            gaps = sorted(set(range(max(stages[i]) + 1)) - set(stages[i]))
            raise ConversionError(f"partial backbone in {where}: res{i + 1} (layer{i}) lacks block(s) "
                                  f"{', '.join(map(str, gaps))}")
        counts.append(len(stages[i]))
    counts = tuple(counts)
    kind = "bottleneck" if "layer1.0.conv3.weight" in keys else "basic"
    depth = _DEPTH.get((kind, counts))
    if depth is None:
        raise ConversionError(f"{where}: {kind} blocks per stage {list(counts)} match no Detectron2 ResNet "
                              "depth (18, 34: basic [2,2,2,2], [3,4,6,3]; 50, 101, 152: bottleneck "
                              "[3,4,6,3], [3,4,23,3], [3,8,36,3])")
    stem = int(conv1.shape[0])
    if kind == "basic":
        out = int(_shape(state, "layer1.0.conv1.weight", where)[0])
        if out != 64:
            raise ConversionError(f"{where}: res2 of this R-{depth} is {out} channels wide; Detectron2 builds "
                                  "R-18/34 only with RES2_OUT_CHANNELS = 64")
        arch = ResNetArch(depth, False, stem, 64, 1, 64, False)
    else:
        width = int(_shape(state, "layer1.0.conv1.weight", where)[0])
        per_group = int(_shape(state, "layer1.0.conv2.weight", where)[1])
        out = int(_shape(state, "layer1.0.conv3.weight", where)[0])
        if per_group <= 0 or width % per_group:
            raise ConversionError(f"{where}: layer1.0.conv2.weight with {per_group} input channels does not "
                                  f"divide the bottleneck width {width} into groups")
        groups = width // per_group
        arch = ResNetArch(depth, True, stem, out, groups, per_group, bool(stride_in_1x1))
    _check_shapes(state, arch, where)
    return arch


def _shape(state, key, where):
    if key not in state:
        raise ConversionError(f"partial backbone in {where}: {key} missing")
    return tuple(state[key].shape)


def _check_shapes(state, arch, where):
    expected = _expected_shapes(arch)
    missing = [k for k in expected if k not in state]
    if missing:
        raise ConversionError(f"partial backbone in {where}: {len(missing)} tensor(s) of {arch.name} missing, "
                              f"e.g. {_describe_keys(missing, 3)}")
    unexpected = sorted(k for k in state if k not in expected)
    if unexpected:
        raise ConversionError(f"{where} has tensors that are not part of a torchvision-style {arch.name}: "
                              f"{_describe_keys(unexpected, 4)}")
    for key, shape in expected.items():
        if tuple(state[key].shape) != shape:
            raise ConversionError(f"shape mismatch in {where}: {key} is {tuple(state[key].shape)}, but "
                                  f"{arch.name} (inferred from the stem and res2) needs {shape}")


# ---------------------------------------------------------------------------------------------------
# Names: torchvision <-> Detectron2, Caffe2 -> torchvision
# ---------------------------------------------------------------------------------------------------
def _tv_to_d2_name(name):
    if name == "conv1.weight":
        return "stem.conv1.weight"
    m = re.fullmatch(r"bn1\.(\w+)", name)
    if m and m[1] in _BN_PARAMS:
        return f"stem.conv1.norm.{m[1]}"
    m = re.fullmatch(r"layer([1-4])\.(\d+)\.(.+)", name)
    if not m:
        return None
    block, rest = f"res{int(m[1]) + 1}.{m[2]}.", m[3]
    if re.fullmatch(r"conv\d\.weight", rest):
        return block + rest
    r = re.fullmatch(r"bn(\d)\.(\w+)", rest)
    if r and r[2] in _BN_PARAMS:
        return f"{block}conv{r[1]}.norm.{r[2]}"
    if rest == "downsample.0.weight":
        return block + "shortcut.weight"
    r = re.fullmatch(r"downsample\.1\.(\w+)", rest)
    if r and r[1] in _BN_PARAMS:
        return f"{block}shortcut.norm.{r[1]}"
    return None


def _d2_to_tv_name(name):
    if name == "stem.conv1.weight":
        return "conv1.weight"
    m = re.fullmatch(r"stem\.conv1\.norm\.(\w+)", name)
    if m and m[1] in _BN_PARAMS:
        return f"bn1.{m[1]}"
    m = re.fullmatch(r"res([2-5])\.(\d+)\.(.+)", name)
    if not m:
        return None
    block, rest = f"layer{int(m[1]) - 1}.{m[2]}.", m[3]
    if re.fullmatch(r"conv\d\.weight", rest):
        return block + rest
    r = re.fullmatch(r"conv(\d)\.norm\.(\w+)", rest)
    if r and r[2] in _BN_PARAMS:
        return f"{block}bn{r[1]}.{r[2]}"
    if rest == "shortcut.weight":
        return block + "downsample.0.weight"
    r = re.fullmatch(r"shortcut\.norm\.(\w+)", rest)
    if r and r[1] in _BN_PARAMS:
        return f"{block}downsample.1.{r[1]}"
    return None


_C2_BN = {"s": "weight", "b": "bias", "rm": "running_mean", "riv": "running_var", "gamma": "weight",
          "beta": "bias", "running_mean": "running_mean", "running_var": "running_var"}


def _c2_to_tv_name(name):
    if name == "conv1_w":
        return "conv1.weight"
    m = re.fullmatch(r"res_conv1_bn_(\w+)", name)
    if m and m[1] in _C2_BN:
        return f"bn1.{_C2_BN[m[1]]}"
    m = re.fullmatch(r"res([2-5])_(\d+)_branch(1|2[abc])_(w|bn_\w+)", name)
    if not m:
        return None
    block = f"layer{int(m[1]) - 1}.{m[2]}."
    branch = m[3]
    if m[4] == "w":
        return block + ("downsample.0.weight" if branch == "1" else f"conv{'abc'.index(branch[1]) + 1}.weight")
    param = _C2_BN.get(m[4][3:])
    if param is None:
        return None
    return block + (f"downsample.1.{param}" if branch == "1" else f"bn{'abc'.index(branch[1]) + 1}.{param}")


def torchvision_to_detectron2(state):
    """Rename a torchvision ResNet state dict (backbone tensors only) to Detectron2's names."""
    out = {}
    for key, value in state.items():
        new = _tv_to_d2_name(key)
        if new is None:
            raise ConversionError(f"no Detectron2 name for the torchvision tensor {key}")
        out[new] = value
    return out


def detectron2_to_torchvision(state):
    """Rename Detectron2 ResNet backbone tensors (``stem.*``, ``res2..5.*``) to torchvision's names."""
    out = {}
    for key, value in state.items():
        new = _d2_to_tv_name(key)
        if new is None:
            raise ConversionError(f"no torchvision name for the Detectron2 tensor {key}")
        out[new] = value
    return out


# ---------------------------------------------------------------------------------------------------
# Layouts
# ---------------------------------------------------------------------------------------------------
def _is_tensor(value):
    return isinstance(value, (torch.Tensor, np.ndarray))


def _get(obj, path):
    for part in path:
        if not isinstance(obj, Mapping) or part not in obj:
            return None
        obj = obj[part]
    return obj if isinstance(obj, Mapping) else None


def _tensor_paths(obj, prefix=""):
    """(dotted path, tensor) for every tensor leaf in nested dicts/lists."""
    if _is_tensor(obj):
        yield prefix, obj
    elif isinstance(obj, Mapping):
        for key, value in obj.items():
            yield from _tensor_paths(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            yield from _tensor_paths(value, f"{prefix}.{i}" if prefix else str(i))


_CATEGORIES = (  # first match wins: a momentum encoder's num_batches_tracked counts as momentum encoder
    ("optimizer", re.compile(r"(^|\.)(optimizer\w*|optim|scaler|grad_scaler|lr_schedulers?|scheduler|amp)"
                             r"(\.|$)|_momentum$")),
    ("momentum_encoder", re.compile(r"(^|\.)(encoder_k|momentum_\w+|target_\w+|teacher\w*|model_ema|"
                                    r"state_dict_ema|ema|key_encoder)(\.|$)")),
    ("bookkeeping", re.compile(r"(^|\.)(num_batches_tracked|queue_ptr|n_averaged)$")),
    ("queue", re.compile(r"(^|\.)(queue\w*|memory\w*|contrast\w*|bank\w*)(\.|$)")),
    ("head", re.compile(r"(^|\.)(fc\d*|head\w*|heads|projector\w*|predictor\w*|classifier\w*|prototypes\w*|"
                        r"neck|mlp\w*|jigsaw\w*|clf)(\.|$)|(^|\.)fc1000_[wb]$")),
    ("detector", re.compile(r"(^|\.)(proposal_generator|roi_heads|fpn_\w+|top_block|sem_seg_head|"
                            r"panoptic\w*|pixel_mean|pixel_std)(\.|$)")),
    ("online_encoder", re.compile(r"(^|\.)(encoder_q|encoder|base_encoder|backbone|_feature_blocks|trunk|"
                                  r"module)(\.|$)")),
)


def _category(path):
    for name, pattern in _CATEGORIES:
        if pattern.search(path):
            return name
    return "other"


@dataclasses.dataclass
class _Found:
    where: str            # human description of where the backbone is
    container: tuple      # path of the dict holding the backbone inside the checkpoint
    backbone: dict        # key in the container -> its name inside the backbone (prefix stripped)
    names: str            # naming scheme inside the backbone: torchvision | detectron2 | caffe2


@dataclasses.dataclass(frozen=True)
class _Layout:
    name: str
    description: str
    containers: tuple = ((),)           # where the model dict may be, tried in order
    prefixes: tuple = ("",)             # backbone prefixes inside it, tried in order
    ema_containers: tuple = None        # for --ema (None: same as containers)
    ema_prefixes: tuple = None          # for --ema (None: the layout has no EMA encoder)
    require_top: tuple = ()             # top-level keys the checkpoint must have
    markers: tuple = ()                 # regexes; one key of the checkpoint must match one
    resnet_key_needed: bool = False     # a bare prefix must be followed by a torchvision ResNet name
    names: str = "torchvision"

    def find(self, ckpt, ema):
        if any(k not in ckpt for k in self.require_top):
            return None
        if self.markers:
            names = [str(k) for k in ckpt] + [path for path, _ in _tensor_paths(ckpt)]
            if not any(re.search(p, name) for name in names for p in self.markers):
                return None
        hit = self._search(ckpt, self.containers, self.prefixes)
        if hit is None or not ema:
            return hit
        if self.ema_prefixes is None:
            raise ConversionError(f"--ema: {self.name} checkpoints have no EMA or momentum encoder")
        containers = self.ema_containers or self.containers
        hit = self._search(ckpt, containers, self.ema_prefixes)
        if hit is None:
            looked = " or ".join(_where(c, p) for c in containers for p in self.ema_prefixes)
            raise ConversionError(f"--ema: this {self.name} checkpoint has no EMA/momentum encoder "
                                  f"(looked for {looked})")
        return hit

    def _search(self, ckpt, containers, prefixes):
        for container in containers:
            model = _get(ckpt, container)
            if model is None:
                continue
            for prefix in prefixes:
                selected = {k: k[len(prefix):] for k, v in model.items()
                            if isinstance(k, str) and k.startswith(prefix) and _is_tensor(v)}
                if not selected:
                    continue
                if self.resnet_key_needed and not any(
                        n == "conv1.weight" or re.match(r"layer[1-4]\.\d+\.", n) for n in selected.values()):
                    continue
                return _Found(_where(container, prefix), container, selected, self.names)
        return None


def _where(container, prefix):
    """Where a backbone is, as a subscript of the checkpoint: ['state_dict']['module.encoder_q.*']."""
    text = "".join(f"[{p!r}]" for p in container)
    return f"{text}[{prefix + '*'!r}]" if prefix else text


class _Detectron2Layout(_Layout):
    """Detectron2 names, under the prefix of the stem; C4's res5 may live in ``roi_heads``."""

    def _search(self, ckpt, containers, prefixes):
        pattern = re.compile(r"^(?P<p>(?:\w+\.)*?)(?:stem\.conv1\.|res[2-5]\.\d+\.)")
        for container in containers:
            model = _get(ckpt, container)
            if model is None:
                continue
            found = collections.Counter()
            for k, v in model.items():
                m = pattern.match(k) if isinstance(k, str) and _is_tensor(v) else None
                if m and not m["p"].endswith("roi_heads.") and not m["p"].startswith("roi_heads."):
                    found[m["p"]] += 1
            if not found:
                continue
            stem_prefixes = [p for p in found if p + "stem.conv1.weight" in model]
            prefix = stem_prefixes[0] if stem_prefixes else found.most_common(1)[0][0]
            selected = {k: k[len(prefix):] for k, v in model.items()
                        if k.startswith(prefix) and _is_tensor(v)
                        and re.match(r"(stem\.|res[2-5]\.)", k[len(prefix):])}
            where = _where(container, prefix)
            if not any(n.startswith("res5.") for n in selected.values()):
                outer = prefix[:-len("backbone.")] if prefix.endswith("backbone.") else prefix
                res5 = {k: k[len(outer) + len("roi_heads."):] for k, v in model.items()
                        if k.startswith(outer + "roi_heads.res5.") and _is_tensor(v)}
                if res5:
                    selected.update(res5)
                    where += f" + {_where(container, outer + 'roi_heads.res5.')}"
            return _Found(where, container, selected, "detectron2")
        return None


class _Caffe2Layout(_Layout):
    def _search(self, ckpt, containers, prefixes):
        pattern = re.compile(r"^(conv1_w|res_conv1_bn_\w+|res[2-5]_\d+_branch(1|2[abc])_\w+)$")
        for container in containers:
            model = _get(ckpt, container)
            if model is None or not any(isinstance(k, str) and pattern.match(k) for k in model):
                continue
            selected = {k: k for k, v in model.items() if isinstance(k, str) and pattern.match(k)
                        and _is_tensor(v) and not k.endswith("_momentum")}
            return _Found(_where(container, ""), container, selected, "caffe2")
        return None


_LAYOUT_LIST = (
    _Layout("pretrain", "this project's pretraining checkpoint: state_dict['encoder_q.*' or 'encoder.*'] "
            "with 'method' and 'arch'", containers=(("state_dict",),), prefixes=("encoder_q.", "encoder."),
            ema_prefixes=("encoder_k.",), require_top=("state_dict", "method")),
    _Layout("moco", "MoCo v1/v2: state_dict['module.encoder_q.*']", containers=(("state_dict",),),
            prefixes=("module.encoder_q.", "encoder_q."), ema_prefixes=("module.encoder_k.", "encoder_k.")),
    _Layout("mocov3", "MoCo v3: state_dict['module.base_encoder.*']", containers=(("state_dict",),),
            prefixes=("module.base_encoder.", "base_encoder."),
            ema_prefixes=("module.momentum_encoder.", "momentum_encoder.")),
    _Layout("pycontrast", "InfoMin/PyContrast: model['module.encoder.*'] (EMA: model_ema['encoder.*'])",
            containers=(("model",),), prefixes=("module.encoder.",), ema_containers=(("model_ema",),),
            ema_prefixes=("encoder.", "module.encoder.")),
    _Layout("solo-learn", "solo-learn: state_dict['backbone.*'] next to projector, momentum_backbone, ...",
            containers=(("state_dict",),), prefixes=("backbone.",), ema_prefixes=("momentum_backbone.",),
            markers=(r"^pytorch-lightning_version$", r"^hyper_parameters$",
                     r"^state_dict\.(projector|momentum_backbone|momentum_projector|classifier|predictor)\.")),
    _Layout("mmselfsup", "mmselfsup/mmpretrain: state_dict['backbone.*']", containers=(("state_dict",),),
            prefixes=("backbone.",)),
    _Layout("vissl", "VISSL: classy_state_dict.base_model.model.trunk['_feature_blocks.*']",
            containers=(("classy_state_dict", "base_model", "model", "trunk"), ("model", "trunk"),
                        ("model_state_dict",), ()),
            prefixes=("_feature_blocks.", "module._feature_blocks.", "trunk._feature_blocks.")),
    _Detectron2Layout("detectron2", "Detectron2 names (stem.conv1.*, res2.0.conv1.norm.*), as a weights .pkl "
                      "or a trained model", containers=(("model",), ()), names="detectron2"),
    _Caffe2Layout("caffe2", "Caffe2/Detectron1 names (conv1_w, res_conv1_bn_s, res2_0_branch2a_w)",
                  containers=(("blobs",), ("model",), ()), names="caffe2"),
    _Layout("timm", "timm training checkpoint: state_dict (EMA: state_dict_ema) with torchvision names",
            containers=(("state_dict",),), prefixes=("", "module."), ema_containers=(("state_dict_ema",),),
            ema_prefixes=("", "module."), resnet_key_needed=True),
    _Layout("torchvision", "torchvision state dict (conv1.weight, layer1.0.conv1.weight, ...), plain or "
            "under 'model' (EMA: 'model_ema')", containers=((), ("model",)), prefixes=("", "module."),
            ema_containers=(("model_ema",),), ema_prefixes=("module.", ""), resnet_key_needed=True),
)
_LAYOUTS = {layout.name: layout for layout in _LAYOUT_LIST}
LAYOUTS = {layout.name: layout.description for layout in _LAYOUT_LIST}
# CMC's official layout (l_to_ab / ab_to_l) and pretrain.methods.cmc's (encoder_l / encoder_ab)
_CMC_KEY = re.compile(r"(^|\.)(l_to_ab|ab_to_l|encoder_l|encoder_ab)(\.|$)")


@dataclasses.dataclass
class Backbone:
    """A ResNet backbone taken out of a checkpoint, in torchvision names."""

    layout: str
    where: str
    state: dict                 # torchvision name -> float32 tensor
    arch: ResNetArch
    input_cfg: dict             # INPUT.FORMAT, MODEL.PIXEL_MEAN, MODEL.PIXEL_STD
    dropped: dict               # category -> number of tensors dropped
    notes: list                 # assumptions and warnings, for the summary
    extra_cfg: dict = dataclasses.field(default_factory=dict)  # other keys of an input meta["cfg"]
    origin: dict = dataclasses.field(default_factory=dict)     # format/source of an input meta

    @property
    def cfg(self):
        """``meta["cfg"]``: the Detectron2 config keys these weights need."""
        return {**self.extra_cfg, **self.arch.detectron2_cfg(), **self.input_cfg}


def _detect(ckpt, fmt, ema, source):
    paths = list(_tensor_paths(ckpt))
    flat = [p for p, _ in paths]
    cmc = [p for p in flat if _CMC_KEY.search(p)]
    if not cmc and isinstance(ckpt, dict) and ckpt.get("method") == "cmc":
        cmc = ["method: cmc"]
    if cmc:
        raise ConversionError(f"{source}: a CMC checkpoint (e.g. {cmc[0]}): two encoders on L and ab inputs "
                              "are not an RGB backbone, so it cannot be converted to Detectron2's ResNet")
    gray = [(p, v.shape[1]) for p, v in paths
            if p.endswith("conv1.weight") and v.ndim == 4 and v.shape[1] in (1, 2)]
    if gray:
        raise ConversionError(f"{source}: {gray[0][0]} takes {gray[0][1]} input channel(s), as CMC's L and ab "
                              "encoders do; two encoders on L and ab inputs are not an RGB backbone")
    if fmt not in (None, "auto"):
        if fmt not in _LAYOUTS:
            raise ConversionError(f"unknown --format {fmt!r}; choose auto or one of {', '.join(_LAYOUTS)}")
        found = _LAYOUTS[fmt].find(ckpt, ema)
        if found is None:
            raise ConversionError(f"{source} is not a {fmt} checkpoint ({LAYOUTS[fmt]}); keys seen: "
                                  f"{_describe_keys(flat)}")
        return _LAYOUTS[fmt], found
    for layout in _LAYOUT_LIST:
        found = layout.find(ckpt, ema)
        if found is not None:
            return layout, found
    if any(_VIT_KEYS.search(p) for p in flat):
        raise _not_resnet(source, flat)
    raise ConversionError(f"{source}: unknown checkpoint layout; keys seen: {_describe_keys(flat)}; layouts "
                          f"tried: {', '.join(_LAYOUTS)} (force one with --format)")


def _to_tensor(value):
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(np.ascontiguousarray(value))
    return value.detach().to("cpu")


def _input_convention(layout, ckpt, arch, source):
    """(input cfg, stride_in_1x1, other cfg keys, origin, notes): the conventions of the source weights."""
    meta = ckpt.get("meta") if layout.names == "detectron2" else None
    if isinstance(meta, Mapping) and isinstance(meta.get("cfg"), Mapping):
        cfg = dict(meta["cfg"])
        ours = arch.detectron2_cfg()
        for key in _ARCH_KEYS:
            if key in cfg and cfg.pop(key) != ours[key]:
                raise ConversionError(f"{source}: meta['cfg'] says {key} = {meta['cfg'][key]!r} but the "
                                      f"tensors are a {arch.name} with {key} = {ours[key]!r}")
        notes = []
        input_cfg = {k: cfg.pop(k) for k in _INPUT_KEYS if k in cfg}
        missing = [k for k in _INPUT_KEYS if k not in input_cfg]
        if missing:
            input_cfg.update({k: TORCHVISION_INPUT[k] for k in missing})
            notes.append(f"the input's meta lacks {', '.join(missing)}: assumed torchvision's values")
        stride = cfg.pop(_STRIDE_KEY, None)
        if stride is None and arch.bottleneck:
            notes.append(f"the input's meta lacks {_STRIDE_KEY}: assumed False (torchvision)")
        origin = {k: meta[k] for k in ("format", "source", "source_sha256") if k in meta}
        return {k: input_cfg[k] for k in _INPUT_KEYS}, bool(stride), cfg, origin, notes
    if layout.names == "caffe2":
        bn_note = ("Caffe2 BatchNorms hold scale and bias only: wrote running_mean 0, running_var 1 "
                   "(as Detectron2 does)")
        if arch.num_groups > 1:
            return dict(FAIR_INPUT), False, {}, {}, [
                "Caffe2 ResNeXt without meta: assumed Detectron2's FAIR ImageNet convention (BGR, PIXEL_STD "
                "[57.375, 57.12, 58.395], STRIDE_IN_1X1 False)", bn_note]
        return dict(MSRA_INPUT), True, {}, {}, [
            "Caffe2 names without meta: assumed Detectron2's MSRA ImageNet convention (BGR, Caffe means, "
            "PIXEL_STD 1, STRIDE_IN_1X1 True)", bn_note]
    if layout.names == "detectron2":
        author = ckpt.get("__author__")
        said = f" (__author__ {author!r})" if isinstance(author, str) else ""
        return dict(TORCHVISION_INPUT), False, {}, {}, [
            f"Detectron2 weights without meta{said}: assumed torchvision's convention (RGB, ImageNet "
            "mean/std, STRIDE_IN_1X1 False), as torchvision/MoCo/PyContrast converters write"]
    return dict(TORCHVISION_INPUT), False, {}, {}, []


def extract_backbone(ckpt, fmt="auto", ema=False, source="the checkpoint"):
    """Find, rename and check the ResNet backbone in a loaded checkpoint.

    ``fmt``: a name from :data:`LAYOUTS` or ``"auto"``; ``ema``: take the EMA/momentum encoder.
    Returns a :class:`Backbone`; raises :class:`ConversionError`.
    """
    if isinstance(ckpt, nn.Module):  # torch.save(model) (readable only with --trust-pickle)
        ckpt = ckpt.state_dict()
    if not isinstance(ckpt, Mapping):
        raise ConversionError(f"{source} holds a {type(ckpt).__name__}, not a checkpoint dict")
    layout, found = _detect(ckpt, fmt, ema, source)
    model = _get(ckpt, found.container)
    where = f"{source}{found.where}"
    dropped = collections.Counter()
    state, unknown = {}, []
    rename = {"torchvision": lambda n: n, "detectron2": _d2_to_tv_name, "caffe2": _c2_to_tv_name}[found.names]
    for key, name in found.backbone.items():
        if name.endswith("num_batches_tracked"):
            dropped["bookkeeping"] += 1
            continue
        if re.match(r"(stem\.)?(fc|head|classifier)\d*([._]|$)", name):
            dropped["head"] += 1
            continue
        tv_name = rename(name)
        if tv_name is None:
            unknown.append(name)
            continue
        value = model[key]
        floating = (value.dtype.is_floating_point if isinstance(value, torch.Tensor)
                    else np.issubdtype(value.dtype, np.floating))
        if not floating:
            raise ConversionError(f"{where}: {key} has dtype {value.dtype}, expected floating-point weights")
        state[tv_name] = _to_tensor(value).float()
    if unknown:
        if not any(n == "conv1.weight" or n.startswith("layer") for n in state):
            raise _not_resnet(where, unknown + list(state))
        raise ConversionError(f"{where} has tensors that are not part of a torchvision-style ResNet: "
                              f"{_describe_keys(sorted(unknown), 4)}")
    # everything else in the checkpoint is dropped, counted by what it is
    base = "".join(f"{p}." for p in found.container)
    direct = {base + str(k): k for k, v in model.items() if _is_tensor(v)}
    for path, _ in _tensor_paths(ckpt):
        key = direct.get(path)
        if key is None:
            dropped[_category(path)] += 1
        elif key not in found.backbone:
            dropped[_category(str(key))] += 1
    if found.names == "caffe2":
        for norm in {k.rsplit(".", 1)[0] for k in state if re.search(r"(bn\d|downsample\.1)\.weight$", k)}:
            state.setdefault(f"{norm}.running_mean", torch.zeros_like(state[f"{norm}.weight"]))
            state.setdefault(f"{norm}.running_var", torch.ones_like(state[f"{norm}.weight"]))
    arch = infer_architecture(state, where)
    input_cfg, stride, extra_cfg, origin, notes = _input_convention(layout, ckpt, arch, source)
    arch = dataclasses.replace(arch, stride_in_1x1=bool(stride and arch.bottleneck))
    declared = ckpt.get("arch")
    if isinstance(declared, str) and arch.torchvision_name and declared in _TORCHVISION_RESNETS \
            and declared != arch.torchvision_name:
        notes.append(f"the checkpoint says arch {declared!r}, but its tensors are a {arch.torchvision_name}")
    return Backbone(layout.name, found.where, state, arch, input_cfg, dict(dropped), notes, extra_cfg, origin)


_TORCHVISION_RESNETS = {"resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d",
                        "resnext101_32x8d", "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2"}


# ---------------------------------------------------------------------------------------------------
# Verification
# ---------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Verification:
    max_rel_error: float
    per_stage: dict            # res2..res5 -> relative error
    input_shape: tuple
    dtype: str
    seconds: float

    def describe(self):
        stages = ", ".join(f"{k} {v:.1e}" for k, v in self.per_stage.items())
        shape = "x".join(map(str, self.input_shape))
        return (f"max relative error {self.max_rel_error:.2e} ({stages}) on a random {shape} {self.dtype} "
                f"batch; limit {MAX_REL_ERROR:g}")


class _Holder(nn.Module):
    """Nests a ResNet as ``backbone.bottom_up``, where an FPN detector keeps it."""

    def __init__(self, resnet):
        super().__init__()
        self.backbone = nn.Module()
        self.backbone.bottom_up = resnet


class _quiet_loggers:
    """Silence the checkpoint loggers while verifying; problems are reported by the verification."""

    names = ("fvcore.common.checkpoint", "detectron2.checkpoint.c2_model_loading")

    def __enter__(self):
        self.levels = [(logging.getLogger(n), logging.getLogger(n).level) for n in self.names]
        for logger, _ in self.levels:
            logger.setLevel(logging.CRITICAL)

    def __exit__(self, *exc):
        for logger, level in self.levels:
            logger.setLevel(level)


def _load_like_a_detector(model, payload):
    """Load a Detectron2 weights payload into ``model`` through ``DetectionCheckpointer``."""
    from detectron2.checkpoint import DetectionCheckpointer

    checkpoint = dict(payload)
    checkpoint["model"] = dict(payload["model"])  # the checkpointer converts and renames in place
    with _quiet_loggers():
        try:
            return DetectionCheckpointer(model)._load_model(checkpoint)
        except ValueError as e:  # ambiguous name matches
            raise ConversionError(f"verification failed: Detectron2 could not match the weights: {e}") from None


def _torchvision_features(model, x):
    x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    out = {}
    for stage in STAGES:
        x = getattr(model, f"layer{int(stage[3]) - 1}")(x)
        out[stage] = x
    return out


def verify_features(torchvision_state, payload, arch, *, batch=2, size=64, seed=0):
    """Check that Detectron2 weights compute the features of a torchvision ResNet.

    ``torchvision_state``: the reference weights (torchvision names, ``fc`` optional);
    ``payload``: Detectron2 weights as written to a ``.pkl`` (``{"model": ..., "__author__": ...,
    "matching_heuristics": True, ...}``). Detectron2's ResNet is built from ``payload["meta"]["cfg"]``
    and loaded with ``DetectionCheckpointer``. Raises :class:`ConversionError` when a weight is missing
    or unused or the features differ by more than :data:`MAX_REL_ERROR`; returns a :class:`Verification`.
    """
    start = time.perf_counter()
    # The reference takes the source tensors as its own (assign=True: no copy); fc stays unallocated.
    reference = build_torchvision_resnet(arch, device="meta")
    state = {k: _to_tensor(v).float() for k, v in torchvision_state.items()
             if not k.endswith("num_batches_tracked")}
    result = reference.load_state_dict(state, strict=False, assign=True)
    missing = [k for k in result.missing_keys
               if not k.startswith("fc.") and not k.endswith("num_batches_tracked")]
    if missing or result.unexpected_keys:
        raise ConversionError(f"verification failed: the torchvision reference {arch.name} is missing "
                              f"{_describe_keys(missing, 3) or 'nothing'} and does not use "
                              f"{_describe_keys(result.unexpected_keys, 3) or 'nothing'}")
    resnet = build_detectron2_resnet(payload["meta"]["cfg"], device="meta").to_empty(device="cpu")
    holder = _Holder(resnet)
    incompatible = _load_like_a_detector(holder, payload)
    problems = []
    if incompatible.missing_keys:
        problems.append(f"Detectron2 left {len(incompatible.missing_keys)} backbone weight(s) unloaded, e.g. "
                        f"{_describe_keys(incompatible.missing_keys, 3)}")
    if incompatible.unexpected_keys:
        problems.append(f"{len(incompatible.unexpected_keys)} converted tensor(s) went unused, e.g. "
                        f"{_describe_keys(incompatible.unexpected_keys, 3)}")
    if incompatible.incorrect_shapes:
        key, got, want = incompatible.incorrect_shapes[0]
        problems.append(f"{len(incompatible.incorrect_shapes)} shape mismatch(es), e.g. {key}: "
                        f"{got} vs {want}")
    if problems:
        raise ConversionError("verification failed: " + "; ".join(problems))
    reference.eval()
    resnet.eval()
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, size, size, generator=generator)
    with torch.no_grad():
        ours = resnet(x)
        theirs = _torchvision_features(reference, x)
    errors = {}
    for stage in STAGES:
        a, b = ours[stage], theirs[stage]
        if a.shape != b.shape:
            raise ConversionError(f"verification failed: {stage} has shape {tuple(a.shape)} in Detectron2 but "
                                  f"{tuple(b.shape)} in torchvision")
        errors[stage] = float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))
    worst = max(errors.values())
    verification = Verification(worst, errors, tuple(x.shape), "float32", time.perf_counter() - start)
    if not worst <= MAX_REL_ERROR:  # also catches NaN
        stage = max(errors, key=lambda k: errors[k])
        raise ConversionError(f"verification failed: Detectron2's {stage} differs from torchvision's by a "
                              f"relative error of {worst:.2e} (limit {MAX_REL_ERROR:g}); nothing written")
    return verification


# ---------------------------------------------------------------------------------------------------
# The conversion
# ---------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class ConversionResult:
    input: str
    output: str
    target: str
    backbone: Backbone
    kept: int
    cfg: dict
    verification: Verification = None
    seconds: float = 0.0

    def summary(self):
        b = self.backbone
        dropped = sum(b.dropped.values())
        detail = ", ".join(f"{k} {v}" for k, v in sorted(b.dropped.items(), key=lambda kv: -kv[1]))
        what = "Detectron2 weights" if self.target == "detectron2" else "torchvision state dict"
        lines = [f"converted {self.input} -> {self.output} ({what}) in {self.seconds:.1f} s",
                 f"  layout        {b.layout}: {LAYOUTS[b.layout]}; backbone at {b.where or 'the top level'}",
                 f"  architecture  {b.arch.describe()}",
                 f"  tensors       kept {self.kept}; dropped {dropped}" + (f" ({detail})" if detail else ""),
                 "  verification  " + (self.verification.describe() if self.verification else
                                       "skipped (--no-verify)")]
        label = "config keys" if self.target == "detectron2" else "input needs"
        for i, (key, value) in enumerate(self.cfg.items()):
            lines.append(f"  {label if i == 0 else '':<13} {key} = {value!r}")
        if self.target == "torchvision":
            builder = f"torchvision.models.{b.arch.torchvision_name or '<resnet>'}()"
            lines.append(f"  load with     {builder}.load_state_dict(torch.load(path), strict=False): "
                         "only fc.weight and fc.bias are missing")
        lines += [f"  note          {n}" for n in b.notes]
        return "\n".join(lines)


def _check_paths(input, output, target):
    if target not in ("detectron2", "torchvision"):
        raise ConversionError(f"unknown target {target!r}; choose detectron2 or torchvision")
    if not os.path.exists(input):
        raise ConversionError(f"{input}: no such file")
    if os.path.isdir(input):
        raise ConversionError(f"{input}: is a directory, expected a checkpoint file")
    if target == "detectron2" and not output.endswith(".pkl"):
        raise ConversionError(f"{output}: Detectron2 weights must end in .pkl (Detectron2 applies its "
                              "name-matching heuristics only to .pkl files)")
    if target == "torchvision" and not output.endswith((".pth", ".pt", ".pth.tar")):
        raise ConversionError(f"{output}: a torchvision state dict must end in .pth or .pt")
    if os.path.isdir(output):
        raise ConversionError(f"{output}: is a directory; name the output file")
    folder = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(folder):
        raise ConversionError(f"{output}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise ConversionError(f"{output}: the folder {folder} is not writable")
    if os.path.exists(output) and os.path.samefile(input, output):
        raise ConversionError(f"{output}: is the input file; choose another output name")


def detectron2_payload(backbone, meta=None):
    """The ``.pkl`` content of DESIGN.md artifact 2 for a :class:`Backbone`."""
    model = {name: value.detach().cpu().float().contiguous().numpy()
             for name, value in torchvision_to_detectron2(backbone.state).items()}
    return {"model": model, "__author__": AUTHOR, "matching_heuristics": True,
            "meta": {"cfg": backbone.cfg, **(meta or {})}}


def _check_torchvision_export(backbone):
    arch = backbone.arch
    if arch.stride_in_1x1 and arch.bottleneck:
        raise ConversionError(f"these weights put the stride in the 1x1 conv ({_STRIDE_KEY} True, MSRA's "
                              "ResNet v1); torchvision's ResNet puts it in the 3x3 conv, so exported they "
                              "would compute different features")
    conv = backbone.input_cfg
    same = conv["INPUT.FORMAT"] == "RGB" and all(
        np.allclose(conv[k], TORCHVISION_INPUT[k], atol=1e-3) for k in ("MODEL.PIXEL_MEAN", "MODEL.PIXEL_STD"))
    if not same:
        raise ConversionError(f"these weights expect INPUT.FORMAT {conv['INPUT.FORMAT']}, PIXEL_MEAN "
                              f"{conv['MODEL.PIXEL_MEAN']}, PIXEL_STD {conv['MODEL.PIXEL_STD']}; torchvision "
                              "models take RGB normalised with ImageNet mean/std, so exported they would "
                              "compute different features")


def convert(input, output, *, fmt="auto", ema=False, verify=True, trust_pickle=False, to="detectron2"):
    """Convert the checkpoint ``input`` and write ``output`` atomically; see the module docstring.

    ``to="detectron2"`` writes a Detectron2 weights ``.pkl`` (DESIGN.md artifact 2); ``to="torchvision"``
    writes a torchvision state dict (``.pth``, backbone only: no ``fc``). Returns a
    :class:`ConversionResult`; raises :class:`ConversionError`, leaving no output file.
    """
    start = time.perf_counter()
    input, output = os.fspath(input), os.fspath(output)
    _check_paths(input, output, to)
    try:
        ckpt = read_checkpoint(input, trust_pickle=trust_pickle)
    except CheckpointError as e:
        raise ConversionError(str(e)) from None
    backbone = extract_backbone(ckpt, fmt=fmt, ema=ema, source=input)
    del ckpt
    if to == "torchvision":
        _check_torchvision_export(backbone)
    meta = {"format": backbone.layout, "source": os.path.abspath(input), "source_sha256": sha256_file(input),
            "arch": backbone.arch.name, "torchvision_arch": backbone.arch.torchvision_name,
            "backbone_at": backbone.where, "ema": bool(ema), "kept": len(backbone.state),
            "dropped": dict(backbone.dropped), "dropped_total": sum(backbone.dropped.values()),
            "notes": list(backbone.notes)}
    if backbone.origin:
        meta["origin"] = dict(backbone.origin)
    payload = detectron2_payload(backbone, meta)
    verification = None
    if verify:
        verification = verify_features(backbone.state, payload, backbone.arch)
        payload["meta"]["verification"] = {"max_rel_error": verification.max_rel_error,
                                           "per_stage": verification.per_stage,
                                           "input_shape": list(verification.input_shape),
                                           "dtype": verification.dtype}
    try:
        with atomic_path(output) as tmp:
            if to == "detectron2":
                dump_pickle(payload, tmp)
            else:
                torch.save({k: v.clone().contiguous() for k, v in backbone.state.items()}, tmp)
    except OSError as e:
        raise ConversionError(f"{output}: cannot write: {e.strerror or e}") from None
    cfg = backbone.cfg if to == "detectron2" else dict(backbone.input_cfg)
    return ConversionResult(input, output, to, backbone, len(backbone.state), cfg, verification,
                            time.perf_counter() - start)
