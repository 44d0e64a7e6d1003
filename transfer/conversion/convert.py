"""Convert a self-supervised ResNet checkpoint to verified Detectron2 weights (and back to torchvision).

:func:`convert` reads the checkpoint, takes its backbone out
(:func:`~pretrain.checkpoints.backbone.extract_backbone`: the layout is detected, the ResNet inferred from
tensor shapes alone, the input convention read or assumed), renames it to Detectron2's names, proves that
Detectron2's ResNet built from the written config keys computes the same features as the source network
(:func:`~transfer.conversion.verify.verify_features`) and writes the output atomically:

- ``to="detectron2"``: a Detectron2 weights ``.pkl`` (format in docs/artifacts.md): ``{"model": {name:
  float32 array}, "__author__": ..., "matching_heuristics": True, "meta": {"cfg": {...}, "format": layout,
  "source": path, "source_sha256": ..., "arch": "R-50", "verification": {...}, ...}}``;
- ``to="torchvision"``: a torchvision state dict (``.pth``, backbone only: no ``fc``), refused for weights
  whose input convention or stride placement torchvision's ``ResNet`` does not share.

``meta["cfg"]`` holds the ``MODEL.RESNETS.*`` keys of the inferred architecture (depth, groups, width per
group, stem and ``res2`` widths, ``STRIDE_IN_1X1``) and the input keys ``INPUT.FORMAT``,
``MODEL.PIXEL_MEAN``, ``MODEL.PIXEL_STD`` (see :mod:`pretrain.checkpoints.conventions`).

The layouts read are :data:`pretrain.checkpoints.layouts.LAYOUTS`. Every error a user can cause raises
:class:`~pretrain.checkpoints.errors.ConversionError` (one line) and leaves no output file.
"""
import dataclasses
import os
import time

import numpy as np
import torch

from pretrain.checkpoints.arch import STRIDE_KEY
from pretrain.checkpoints.backbone import Backbone, extract_backbone
from pretrain.checkpoints.conventions import TORCHVISION_INPUT
from pretrain.checkpoints.errors import ConversionError
from pretrain.checkpoints.layouts import LAYOUTS
from pretrain.checkpoints.names import torchvision_to_detectron2
from pretrain.common.fileio import atomic_path
from pretrain.common.safe_load import CheckpointError, dump_pickle, read_checkpoint, sha256_file
from transfer.conversion.verify import Verification, verify_features

__all__ = ["AUTHOR", "ConversionError", "ConversionResult", "convert", "detectron2_payload"]

AUTHOR = "ssl-d2-transfer (transfer.conversion.convert)"


@dataclasses.dataclass
class ConversionResult:
    """What :func:`convert` did; :meth:`summary` is what the command-line tool prints."""

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
    """The content of the Detectron2 weights ``.pkl`` (format in docs/artifacts.md) for a :class:`Backbone`."""
    model = {name: value.detach().cpu().float().contiguous().numpy()
             for name, value in torchvision_to_detectron2(backbone.state).items()}
    return {"model": model, "__author__": AUTHOR, "matching_heuristics": True,
            "meta": {"cfg": backbone.cfg, **(meta or {})}}


def _check_torchvision_export(backbone):
    arch = backbone.arch
    if arch.stride_in_1x1 and arch.bottleneck:
        raise ConversionError(f"these weights put the stride in the 1x1 conv ({STRIDE_KEY} True, MSRA's "
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

    ``fmt``: a layout name or ``"auto"``; ``ema``: convert the EMA/momentum encoder; ``verify``: compare
    the features; ``trust_pickle``: allow full unpickling (only for trusted files). ``to="detectron2"``
    writes a Detectron2 weights ``.pkl``, ``to="torchvision"`` a torchvision state dict (``.pth``, backbone
    only: no ``fc``). Returns a :class:`ConversionResult`; raises :class:`ConversionError`, leaving no output file.
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
