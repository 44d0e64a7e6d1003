"""The C4 ROI head the published protocols use, with the project's two options (a registry entry).

``Res5ROIHeadsAnyDepth`` is Detectron2's ``Res5ROIHeads`` (res5 of three bottleneck blocks as the ROI head)
with two switches:

- ``TRANSFER.RES5_EXTRA_NORM``: a normalisation layer (``MODEL.RESNETS.NORM``) after res5, so that the new
  box predictor sees normalised features: MoCo's ``Res5ROIHeadsExtraNorm`` (MoCo
  ``detection/train_net.py``), which MoCo's and PyContrast's C4 fine-tuning configs name;
- ``TRANSFER.RES5_MATCH_BACKBONE``: res5 with the backbone's block type and count (two basic blocks for
  ResNet-18, three for ResNet-34), so that ResNet-18/34 weights fill the head. Off, res5 is Detectron2's
  three bottleneck blocks whatever the depth and the weights fill only the tensors whose shapes match
  (Detectron2's loader skips the others): what Wu et al. ran with Detectron2's stock head.

With both off it builds exactly Detectron2's ``Res5ROIHeads``. :func:`published_head_name` names the
published head a config builds, for the protocol audit.
"""
from torch import nn

from detectron2.layers import get_norm
from detectron2.modeling import ROI_HEADS_REGISTRY
from detectron2.modeling.backbone.resnet import BasicBlock, BottleneckBlock, ResNet
from detectron2.modeling.roi_heads import Res5ROIHeads

__all__ = ["RES5_BLOCKS", "C4_HEADS", "Res5ROIHeadsAnyDepth", "has_basic_blocks", "published_head_name"]

# blocks in res5 per ResNet depth (torchvision / Detectron2 definitions)
RES5_BLOCKS = {18: 2, 34: 3, 50: 3, 101: 3, 152: 3}
# ROI head names that put res5 in the head (the C4 detectors)
C4_HEADS = ("Res5ROIHeads", "Res5ROIHeadsAnyDepth")


def has_basic_blocks(depth):
    """Whether a ResNet of this depth is made of basic blocks (ResNet-18/34)."""
    return depth in (18, 34)


@ROI_HEADS_REGISTRY.register()
class Res5ROIHeadsAnyDepth(Res5ROIHeads):
    """Detectron2's C4 ROI head with MoCo's extra norm and a backbone-shaped res5 as options (see the module)."""

    @classmethod
    def _build_res5_block(cls, cfg):
        resnets = cfg.MODEL.RESNETS
        if cfg.TRANSFER.RES5_MATCH_BACKBONE:
            res5, out_channels = _backbone_res5(resnets)
        else:
            res5, out_channels = super()._build_res5_block(cfg)
        if cfg.TRANSFER.RES5_EXTRA_NORM:
            res5.add_module("norm", get_norm(resnets.NORM, out_channels))
        return res5, out_channels


def _backbone_res5(resnets):
    depth = resnets.DEPTH
    if depth not in RES5_BLOCKS:
        raise ValueError(f"MODEL.RESNETS.DEPTH {depth} is not one of {sorted(RES5_BLOCKS)}")
    if resnets.DEFORM_ON_PER_STAGE[-1]:
        raise ValueError("deformable convolution is not supported in the res5 head")
    num_blocks = RES5_BLOCKS[depth]
    out_channels = resnets.RES2_OUT_CHANNELS * 8  # res5 is 8x res2
    common = dict(stride_per_block=[2] + [1] * (num_blocks - 1), in_channels=out_channels // 2,
                  out_channels=out_channels, norm=resnets.NORM)
    if has_basic_blocks(depth):
        blocks = ResNet.make_stage(BasicBlock, num_blocks, **common)
    else:
        blocks = ResNet.make_stage(
            BottleneckBlock, num_blocks, **common,
            bottleneck_channels=resnets.NUM_GROUPS * resnets.WIDTH_PER_GROUP * 8,
            num_groups=resnets.NUM_GROUPS, stride_in_1x1=resnets.STRIDE_IN_1X1)
    return nn.Sequential(*blocks), out_channels


def published_head_name(cfg):
    """The published ROI head ``cfg`` builds: ``MODEL.ROI_HEADS.NAME``, with the project's C4 head named as
    the stock head it equals (``Res5ROIHeads``, or MoCo's ``Res5ROIHeadsExtraNorm`` with the extra norm);
    a res5 of basic blocks (ResNet-18/34 with ``TRANSFER.RES5_MATCH_BACKBONE``) has no published name and
    keeps the project's."""
    name = cfg.MODEL.ROI_HEADS.NAME
    if name != "Res5ROIHeadsAnyDepth":
        return name
    if cfg.TRANSFER.RES5_MATCH_BACKBONE and has_basic_blocks(cfg.MODEL.RESNETS.DEPTH):
        return "Res5ROIHeadsAnyDepth (res5 of basic blocks)"
    return "Res5ROIHeadsExtraNorm" if cfg.TRANSFER.RES5_EXTRA_NORM else "Res5ROIHeads"
