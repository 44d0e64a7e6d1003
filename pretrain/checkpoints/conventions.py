"""The input convention a backbone's weights expect: channel order, pixel mean/std, where the stride is.

Every torchvision-style source takes RGB inputs normalised with ImageNet's mean/std (0-255 scale) and puts
the stride in the 3x3 conv (``STRIDE_IN_1X1 = False``). Detectron2 weights keep the ``cfg`` of their
``meta`` when they have one. Without ``meta`` the convention cannot be read from the weights, so it is
assumed, and a note says so:

- Detectron2 names: torchvision's convention (what torchvision/MoCo/PyContrast converters write);
- Caffe2 names: Detectron2's MSRA ImageNet models (BGR, Caffe means, std 1, ``STRIDE_IN_1X1 = True``),
  or for ResNeXt its FAIR models (BGR, std ``[57.375, 57.12, 58.395]``, ``STRIDE_IN_1X1 = False``);
  their BatchNorms hold only scale and bias, so running mean 0 and variance 1 are filled in, exactly what
  Detectron2 does when it loads those files.

The keys are Detectron2's config names (``INPUT.FORMAT``, ``MODEL.PIXEL_MEAN``, ``MODEL.PIXEL_STD``), as
plain strings.
"""
from collections.abc import Mapping

from pretrain.checkpoints.arch import ARCH_KEYS, STRIDE_KEY
from pretrain.checkpoints.errors import ConversionError

__all__ = ["TORCHVISION_INPUT", "MSRA_INPUT", "FAIR_INPUT", "INPUT_KEYS", "input_convention"]

TORCHVISION_INPUT = {"INPUT.FORMAT": "RGB", "MODEL.PIXEL_MEAN": [123.675, 116.28, 103.53],
                     "MODEL.PIXEL_STD": [58.395, 57.12, 57.375]}
MSRA_INPUT = {"INPUT.FORMAT": "BGR", "MODEL.PIXEL_MEAN": [103.53, 116.28, 123.675],
              "MODEL.PIXEL_STD": [1.0, 1.0, 1.0]}
FAIR_INPUT = {"INPUT.FORMAT": "BGR", "MODEL.PIXEL_MEAN": [103.53, 116.28, 123.675],
              "MODEL.PIXEL_STD": [57.375, 57.12, 58.395]}
INPUT_KEYS = tuple(TORCHVISION_INPUT)


def input_convention(names, ckpt, arch, source):
    """The convention of backbone weights named ``names`` (torchvision | detectron2 | caffe2) in ``ckpt``.

    Returns ``(input_cfg, stride_in_1x1, extra_cfg, origin, notes)``: the three input keys, whether the
    stride is in the 1x1 conv, the other keys of a Detectron2 ``meta["cfg"]``, the ``format``/``source``
    of that ``meta``, and the assumptions made. A ``meta["cfg"]`` contradicting the tensors (``arch``, a
    :class:`~pretrain.checkpoints.arch.ResNetArch`) raises :class:`ConversionError`.
    """
    meta = ckpt.get("meta") if names == "detectron2" else None
    if isinstance(meta, Mapping) and isinstance(meta.get("cfg"), Mapping):
        cfg = dict(meta["cfg"])
        ours = arch.detectron2_cfg()
        for key in ARCH_KEYS:
            if key in cfg and cfg.pop(key) != ours[key]:
                raise ConversionError(f"{source}: meta['cfg'] says {key} = {meta['cfg'][key]!r} but the "
                                      f"tensors are a {arch.name} with {key} = {ours[key]!r}")
        notes = []
        input_cfg = {k: cfg.pop(k) for k in INPUT_KEYS if k in cfg}
        missing = [k for k in INPUT_KEYS if k not in input_cfg]
        if missing:
            input_cfg.update({k: TORCHVISION_INPUT[k] for k in missing})
            notes.append(f"the input's meta lacks {', '.join(missing)}: assumed torchvision's values")
        stride = cfg.pop(STRIDE_KEY, None)
        if stride is None and arch.bottleneck:
            notes.append(f"the input's meta lacks {STRIDE_KEY}: assumed False (torchvision)")
        origin = {k: meta[k] for k in ("format", "source", "source_sha256") if k in meta}
        return {k: input_cfg[k] for k in INPUT_KEYS}, bool(stride), cfg, origin, notes
    if names == "caffe2":
        bn_note = ("Caffe2 BatchNorms hold scale and bias only: wrote running_mean 0, running_var 1 "
                   "(as Detectron2 does)")
        if arch.num_groups > 1:
            return dict(FAIR_INPUT), False, {}, {}, [
                "Caffe2 ResNeXt without meta: assumed Detectron2's FAIR ImageNet convention (BGR, PIXEL_STD "
                "[57.375, 57.12, 58.395], STRIDE_IN_1X1 False)", bn_note]
        return dict(MSRA_INPUT), True, {}, {}, [
            "Caffe2 names without meta: assumed Detectron2's MSRA ImageNet convention (BGR, Caffe means, "
            "PIXEL_STD 1, STRIDE_IN_1X1 True)", bn_note]
    if names == "detectron2":
        author = ckpt.get("__author__")
        said = f" (__author__ {author!r})" if isinstance(author, str) else ""
        return dict(TORCHVISION_INPUT), False, {}, {}, [
            f"Detectron2 weights without meta{said}: assumed torchvision's convention (RGB, ImageNet "
            "mean/std, STRIDE_IN_1X1 False), as torchvision/MoCo/PyContrast converters write"]
    return dict(TORCHVISION_INPUT), False, {}, {}, []
