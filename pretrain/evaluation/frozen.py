"""A frozen feature extractor from any checkpoint the project reads (linear evaluation, MI estimation).

    encoder = load_frozen_encoder("weights.pkl")          # or a pretraining .pth, a MoCo/PyContrast/... file
    feats = encoder(images)                               # uint8 N x 3 x H x W (0..255, RGB) -> float32 N x D

One path for every single-RGB-ResNet source: the file is read as the converter reads it
(:func:`pretrain.common.safe_load.read_checkpoint`: ``weights_only`` torch files, restricted ``.pkl`` unpickling,
safetensors), the backbone is found by :func:`pretrain.checkpoints.backbone.extract_backbone` (every layout of
:data:`pretrain.checkpoints.layouts.LAYOUTS`: this project's pretraining checkpoints, Detectron2 ``.pkl`` with or
without ``meta``, torchvision, MoCo, PyContrast, solo-learn, ...), built as torchvision's ``ResNet`` by
:func:`pretrain.checkpoints.arch.build_torchvision_resnet` and loaded strictly (every weight used, none missing; the
``fc`` head is dropped). Inputs are normalised with the backbone's own convention (``input_cfg``: for a
Detectron2 ``.pkl`` its ``meta["cfg"]`` ``INPUT.FORMAT`` and ``MODEL.PIXEL_MEAN`` / ``PIXEL_STD`` on the 0-255
scale, so BGR weights get BGR inputs; torchvision's ImageNet convention for the other layouts). Features are
the global-average-pooled output of the last stage (``layer4`` / ``res5``), **not** L2-normalised.

This project's pretraining checkpoints whose state is not one RGB ResNet (CMC: an L and an ab encoder) are
refused by the converter; when the checkpoint's ``method`` is registered in :mod:`pretrain.methods`, the method
is rebuilt from the checkpoint's ``config`` (YAML text), its state loaded (tensors whose shape the rebuilt
method does not share, e.g. a memory bank of another dataset size, are left at their initial values; no
parameter may be missing) and its ``features(images, kind="backbone")`` is the extractor: those features are
whatever the method defines (the base class L2-normalises them).

The encoder is always in eval mode (BatchNorm uses its running statistics; ``train()`` cannot change that)
and computes no gradients. Every error a user can cause raises :class:`FrozenEncoderError`, one line naming
the file and what to do.
"""
import os
import re
from collections.abc import Mapping

import torch
from torch import nn

__all__ = ["FrozenEncoder", "FrozenEncoderError", "load_frozen_encoder"]


class FrozenEncoderError(ValueError):
    """A checkpoint cannot be used as a frozen encoder; one line naming the file and what to do."""


def _resolve_device(device):
    device = str(device or "cpu")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise FrozenEncoderError(f"device {device}: no CUDA device is available (use cpu or auto)")
    try:
        return torch.device(device)
    except RuntimeError:
        raise FrozenEncoderError(f"unknown device {device!r}; use cpu, cuda or auto") from None


class FrozenEncoder(nn.Module):
    """Frozen feature extractor in eval mode, no gradients: uint8 RGB images (N x 3 x H x W, 0..255) ->
    float32 features N x feature_dim (global-average-pooled backbone features, NOT L2-normalised).

    Build it with :func:`load_frozen_encoder`. ``net`` is a torchvision ``ResNet`` (its ``fc`` removed) fed
    with inputs normalised by ``pixel_mean`` / ``pixel_std`` (0..255 scale, in the channel order the weights
    expect; ``bgr``: flip RGB inputs to BGR first); or, with ``method``, a pretraining method whose
    ``features(images, kind="backbone")`` does the work. ``arch``: the architecture as the reference tables
    name it (``R-18``, ``R-50``, ``X-101-32x8d``), None when unknown.
    """

    def __init__(self, *, feature_dim, description, net=None, pixel_mean=None, pixel_std=None, bgr=False,
                 method=None, arch=None):
        super().__init__()
        if (net is None) == (method is None):
            raise ValueError("FrozenEncoder needs exactly one of net or method")
        self.feature_dim = int(feature_dim)
        self.description = str(description)
        self.arch = arch  # architecture name as the reference tables write it (R-18, R-50, X-101-32x8d), or None
        self.bgr = bool(bgr)
        self.net = net
        self.method = method
        if net is not None:
            self.register_buffer("pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32).view(1, 3, 1, 1),
                                 persistent=False)
            self.register_buffer("pixel_std", torch.tensor(pixel_std, dtype=torch.float32).view(1, 3, 1, 1),
                                 persistent=False)
        for p in self.parameters():
            p.requires_grad_(False)
        super().train(False)

    def train(self, mode=True):
        """Always eval: a frozen encoder keeps BatchNorm's running statistics."""
        return super().train(False)

    @property
    def device(self):
        for t in self.parameters():
            return t.device
        for t in self.buffers():
            return t.device
        return torch.device("cpu")

    def normalize(self, images):
        """uint8 (or float 0..255) RGB images -> the float32 input the network expects."""
        x = images.to(self.device, non_blocking=True).float()
        if self.bgr:
            x = x.flip(1)
        return (x - self.pixel_mean) / self.pixel_std

    @torch.no_grad()
    def forward(self, images):
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected RGB images N x 3 x H x W, got shape {tuple(images.shape)}")
        if self.method is not None:
            return self.method.features(images.to(self.device), kind="backbone").float()
        from pretrain.backbones import trunk_forward

        return trunk_forward(self.net, self.normalize(images)).float()

    def extra_repr(self):
        return f"feature_dim={self.feature_dim}, description={self.description!r}"


def _resnet_encoder(backbone, path, device):
    from pretrain.checkpoints.arch import build_torchvision_resnet

    arch = backbone.arch
    net = build_torchvision_resnet(arch)
    result = net.load_state_dict(backbone.state, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith("fc.") and not k.endswith("num_batches_tracked")]
    if missing or result.unexpected_keys:
        what = ", ".join((missing + list(result.unexpected_keys))[:3])
        raise FrozenEncoderError(f"{path}: the {arch.name} backbone does not load into torchvision's ResNet "
                                 f"({len(missing)} missing, {len(result.unexpected_keys)} unexpected: {what})")
    feature_dim = net.fc.in_features
    net.fc = nn.Identity()
    conv = backbone.input_cfg
    name = arch.torchvision_name or arch.name
    encoder = FrozenEncoder(feature_dim=feature_dim, net=net, pixel_mean=conv["MODEL.PIXEL_MEAN"],
                            pixel_std=conv["MODEL.PIXEL_STD"], bgr=str(conv["INPUT.FORMAT"]).upper() == "BGR",
                            arch=arch.name,
                            description=f"{name} from {os.path.basename(path)} ({backbone.layout} layout)")
    return encoder.to(device)


def _is_our_checkpoint(ckpt):
    return (isinstance(ckpt, Mapping) and isinstance(ckpt.get("method"), str) and isinstance(ckpt.get("config"), str)
            and isinstance(ckpt.get("state_dict"), Mapping))


def _bank_size(state):
    """Rows of the largest 2-D buffer that looks like a memory bank (for methods that need the data size)."""
    sizes = [v.shape[0] for k, v in state.items()
             if isinstance(v, torch.Tensor) and v.ndim == 2 and ("memory" in k or "bank" in k)]
    return max(sizes) if sizes else None


def _method_encoder(ckpt, path, device, why):
    from pretrain.config import ConfigError
    from pretrain.methods import METHODS, build_method
    from pretrain.training.train import load_config_text

    name = ckpt["method"]
    if name not in METHODS:
        raise FrozenEncoderError(f"{path}: {why}; its method {name!r} is not registered in pretrain.methods "
                                 f"(registered: {', '.join(sorted(METHODS))}), so it cannot be rebuilt either")
    try:
        cfg = load_config_text(ckpt["config"])
    except ConfigError as e:
        raise FrozenEncoderError(f"{path}: its stored config does not load: {e}") from None
    state = {k: v for k, v in ckpt["state_dict"].items() if isinstance(v, torch.Tensor)}
    try:
        method = build_method(cfg, num_train_images=_bank_size(state))
    except (ValueError, KeyError, TypeError) as e:
        raise FrozenEncoderError(f"{path}: cannot rebuild method {name!r} from its config: "
                                 f"{' '.join(str(e).split())}") from None
    own = method.state_dict()
    usable = {k: v for k, v in state.items() if k in own and tuple(own[k].shape) == tuple(v.shape)}
    method.load_state_dict(usable, strict=False)
    params = {k for k, _ in method.named_parameters()}
    missing = sorted(params - set(usable))
    if missing:
        raise FrozenEncoderError(f"{path}: the checkpoint lacks {len(missing)} parameter(s) of method {name!r} "
                                 f"(e.g. {missing[0]}); is it a checkpoint of this method?")
    method.to(device).eval()
    for p in method.parameters():
        p.requires_grad_(False)
    with torch.no_grad():
        probe = torch.zeros(2, 3, 32, 32, dtype=torch.uint8, device=device)
        dim = method.features(probe, kind="backbone").shape[1]
    arch = str(getattr(cfg.MODEL, "ARCH", "?"))
    depth = re.fullmatch(r"resnet(\d+)", arch)
    return FrozenEncoder(feature_dim=dim, method=method, arch=f"R-{depth[1]}" if depth else None,
                         description=f"{name} {arch} from {os.path.basename(path)} (pretrain layout, method features)")


def load_frozen_encoder(path, *, fmt="auto", trust_pickle=False, device="cpu"):
    """A :class:`FrozenEncoder` for the checkpoint or weights file ``path`` (see the module docstring).

    ``fmt``: a layout name of :data:`pretrain.checkpoints.layouts.LAYOUTS` or ``"auto"``; ``trust_pickle``: allow full
    unpickling (only for files from a trusted source); ``device``: ``"cpu"``, ``"cuda"`` or ``"auto"``.
    Raises :class:`FrozenEncoderError`.
    """
    from pretrain.checkpoints.backbone import extract_backbone
    from pretrain.checkpoints.errors import ConversionError
    from pretrain.common.safe_load import CheckpointError, read_checkpoint

    path = os.fspath(path)
    device = _resolve_device(device)
    try:
        ckpt = read_checkpoint(path, trust_pickle=trust_pickle)
    except CheckpointError as e:
        raise FrozenEncoderError(str(e)) from None
    try:
        backbone = extract_backbone(ckpt, fmt=fmt, source=path)
    except ConversionError as e:
        if fmt in (None, "auto", "pretrain") and _is_our_checkpoint(ckpt):
            why = " ".join(str(e).split()).removeprefix(f"{path}: ")
            return _method_encoder(ckpt, path, device, why)
        raise FrozenEncoderError(" ".join(str(e).split())) from None
    return _resnet_encoder(backbone, path, device)
