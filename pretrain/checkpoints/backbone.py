"""The ResNet backbone of any checkpoint the project reads, as a torchvision state dict.

    ckpt = read_checkpoint(path)                  # pretrain.common.safe_load
    backbone = extract_backbone(ckpt, source=path)
    net = build_torchvision_resnet(backbone.arch)  # pretrain.checkpoints.arch
    net.load_state_dict(backbone.state, strict=False)   # only fc is missing

The layout is detected (:mod:`pretrain.checkpoints.layouts`), the tensors are renamed to torchvision's
names (:mod:`pretrain.checkpoints.names`), the architecture is inferred from their shapes
(:mod:`pretrain.checkpoints.arch`) and the input convention is read or assumed
(:mod:`pretrain.checkpoints.conventions`). Inside the backbone, projection heads and ``num_batches_tracked``
are dropped; everything else in the checkpoint is dropped too, and both are counted by category.
"""
import collections
import dataclasses
import re
from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from pretrain.checkpoints.arch import TORCHVISION_RESNETS, ResNetArch, infer_architecture
from pretrain.checkpoints.conventions import input_convention
from pretrain.checkpoints.errors import ConversionError, describe_keys, not_resnet_error
from pretrain.checkpoints.layouts import category, detect_layout, find_mapping, is_tensor, tensor_paths
from pretrain.checkpoints.names import caffe2_to_torchvision_name, detectron2_to_torchvision_name

__all__ = ["Backbone", "extract_backbone", "to_tensor"]

_RENAME = {"torchvision": lambda name: name, "detectron2": detectron2_to_torchvision_name,
           "caffe2": caffe2_to_torchvision_name}


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


def to_tensor(value):
    """A CPU torch tensor of a tensor or numpy array (no gradient)."""
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(np.ascontiguousarray(value))
    return value.detach().to("cpu")


def extract_backbone(ckpt, fmt="auto", ema=False, source="the checkpoint"):
    """Find, rename and check the ResNet backbone in a loaded checkpoint.

    ``fmt``: a name from :data:`~pretrain.checkpoints.layouts.LAYOUTS` or ``"auto"``; ``ema``: take the
    EMA/momentum encoder. Returns a :class:`Backbone`; raises :class:`ConversionError`.
    """
    if isinstance(ckpt, nn.Module):  # torch.save(model) (readable only with --trust-pickle)
        ckpt = ckpt.state_dict()
    if not isinstance(ckpt, Mapping):
        raise ConversionError(f"{source} holds a {type(ckpt).__name__}, not a checkpoint dict")
    layout, found = detect_layout(ckpt, fmt, ema, source)
    model = find_mapping(ckpt, found.container)
    where = f"{source}{found.where}"
    dropped = collections.Counter()
    state, unknown = {}, []
    rename = _RENAME[found.names]
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
        state[tv_name] = to_tensor(value).float()
    if unknown:
        if not any(n == "conv1.weight" or n.startswith("layer") for n in state):
            raise not_resnet_error(where, unknown + list(state))
        raise ConversionError(f"{where} has tensors that are not part of a torchvision-style ResNet: "
                              f"{describe_keys(sorted(unknown), 4)}")
    # everything else in the checkpoint is dropped, counted by what it is
    base = "".join(f"{p}." for p in found.container)
    direct = {base + str(k): k for k, v in model.items() if is_tensor(v)}
    for path, _ in tensor_paths(ckpt):
        key = direct.get(path)
        if key is None:
            dropped[category(path)] += 1
        elif key not in found.backbone:
            dropped[category(str(key))] += 1
    if found.names == "caffe2":
        for norm in {k.rsplit(".", 1)[0] for k in state if re.search(r"(bn\d|downsample\.1)\.weight$", k)}:
            state.setdefault(f"{norm}.running_mean", torch.zeros_like(state[f"{norm}.weight"]))
            state.setdefault(f"{norm}.running_var", torch.ones_like(state[f"{norm}.weight"]))
    arch = infer_architecture(state, where)
    input_cfg, stride, extra_cfg, origin, notes = input_convention(found.names, ckpt, arch, source)
    arch = dataclasses.replace(arch, stride_in_1x1=bool(stride and arch.bottleneck))
    declared = ckpt.get("arch")
    if isinstance(declared, str) and arch.torchvision_name and declared in TORCHVISION_RESNETS \
            and declared != arch.torchvision_name:
        notes.append(f"the checkpoint says arch {declared!r}, but its tensors are a {arch.torchvision_name}")
    return Backbone(layout.name, found.where, state, arch, input_cfg, dict(dropped), notes, extra_cfg, origin)
