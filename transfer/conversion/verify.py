"""Proof that Detectron2 weights compute the features of the torchvision ResNet they come from.

Detectron2's ResNet is built from ``meta["cfg"]`` with FrozenBN and loaded through
``DetectionCheckpointer`` with its name-matching heuristics, nested as ``backbone.bottom_up`` like an FPN
detector; every backbone weight must be loaded and every converted tensor used. The reference is
torchvision's ``ResNet`` built for the inferred architecture and loaded from the source weights. Both run
in float32, as a detector does, on the same random batch (2x3x64x64, seed 0); the error of each stage is
``max|res_k - layer_(k-1)| / max|layer_(k-1)|`` and the verification fails above :data:`MAX_REL_ERROR`.
"""
import dataclasses
import logging
import time

import torch
from torch import nn

from pretrain.checkpoints.arch import build_torchvision_resnet
from pretrain.checkpoints.backbone import to_tensor
from pretrain.checkpoints.errors import ConversionError, describe_keys

__all__ = ["MAX_REL_ERROR", "STAGES", "Verification", "build_detectron2_resnet", "verify_features"]

MAX_REL_ERROR = 1e-4
STAGES = ("res2", "res3", "res4", "res5")


@dataclasses.dataclass
class Verification:
    """The outcome of :func:`verify_features`."""

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


def _resnet_cfg(cfg_dict, out_features):
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

    cfg = _resnet_cfg(cfg_dict, out_features)
    with torch.device(device or "cpu"):
        return build_resnet_backbone(cfg, ShapeSpec(channels=3))


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


def _reference(torchvision_state, arch):
    """torchvision's ResNet holding the source tensors as its own (assign=True: no copy; fc unallocated)."""
    reference = build_torchvision_resnet(arch, device="meta")
    state = {k: to_tensor(v).float() for k, v in torchvision_state.items()
             if not k.endswith("num_batches_tracked")}
    result = reference.load_state_dict(state, strict=False, assign=True)
    missing = [k for k in result.missing_keys
               if not k.startswith("fc.") and not k.endswith("num_batches_tracked")]
    if missing or result.unexpected_keys:
        raise ConversionError(f"verification failed: the torchvision reference {arch.name} is missing "
                              f"{describe_keys(missing, 3) or 'nothing'} and does not use "
                              f"{describe_keys(result.unexpected_keys, 3) or 'nothing'}")
    return reference.eval()


def _detectron2_resnet(payload):
    """Detectron2's ResNet built from ``payload["meta"]["cfg"]``, loaded as a detector loads the payload."""
    resnet = build_detectron2_resnet(payload["meta"]["cfg"], device="meta").to_empty(device="cpu")
    incompatible = _load_like_a_detector(_Holder(resnet), payload)
    problems = []
    if incompatible.missing_keys:
        problems.append(f"Detectron2 left {len(incompatible.missing_keys)} backbone weight(s) unloaded, e.g. "
                        f"{describe_keys(incompatible.missing_keys, 3)}")
    if incompatible.unexpected_keys:
        problems.append(f"{len(incompatible.unexpected_keys)} converted tensor(s) went unused, e.g. "
                        f"{describe_keys(incompatible.unexpected_keys, 3)}")
    if incompatible.incorrect_shapes:
        key, got, want = incompatible.incorrect_shapes[0]
        problems.append(f"{len(incompatible.incorrect_shapes)} shape mismatch(es), e.g. {key}: "
                        f"{got} vs {want}")
    if problems:
        raise ConversionError("verification failed: " + "; ".join(problems))
    return resnet.eval()


def verify_features(torchvision_state, payload, arch, *, batch=2, size=64, seed=0):
    """Check that Detectron2 weights compute the features of a torchvision ResNet.

    ``torchvision_state``: the reference weights (torchvision names, ``fc`` optional);
    ``payload``: Detectron2 weights as written to a ``.pkl`` (``{"model": ..., "__author__": ...,
    "matching_heuristics": True, ...}``); ``arch``: their :class:`~pretrain.checkpoints.arch.ResNetArch`.
    Raises :class:`ConversionError` when a weight is missing or unused or the features differ by more than
    :data:`MAX_REL_ERROR`; returns a :class:`Verification`.
    """
    start = time.perf_counter()
    reference = _reference(torchvision_state, arch)
    resnet = _detectron2_resnet(payload)
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
