"""Detector heads the published protocols need and stock Detectron2 lacks (registry entries)."""
from torch import nn

from detectron2.layers import get_norm
from detectron2.modeling import ROI_HEADS_REGISTRY
from detectron2.modeling.backbone.resnet import BasicBlock, BottleneckBlock, ResNet
from detectron2.modeling.roi_heads import Res5ROIHeads

# blocks in res5 per ResNet depth (torchvision / Detectron2 definitions)
RES5_BLOCKS = {18: 2, 34: 3, 50: 3, 101: 3, 152: 3}


@ROI_HEADS_REGISTRY.register()
class Res5ROIHeadsAnyDepth(Res5ROIHeads):
    """The C4 ROI head with a res5 that matches the backbone's depth.

    Detectron2's ``Res5ROIHeads`` always builds three bottleneck blocks, so ResNet-18/34 weights (basic
    blocks, res5 of 512 channels) cannot be used with it. Here res5 has the backbone's block type and
    count. With ``TRANSFER.RES5_EXTRA_NORM`` a normalisation layer (``MODEL.RESNETS.NORM``, SyncBN when
    fine-tuning) follows res5, as in MoCo's C4 fine-tuning protocol, since the new box predictor then
    sees normalised features.
    """

    @classmethod
    def _build_res5_block(cls, cfg):
        resnets = cfg.MODEL.RESNETS
        depth = resnets.DEPTH
        if depth not in RES5_BLOCKS:
            raise ValueError(f"MODEL.RESNETS.DEPTH {depth} is not one of {sorted(RES5_BLOCKS)}")
        if resnets.DEFORM_ON_PER_STAGE[-1]:
            raise ValueError("deformable convolution is not supported in the res5 head")
        num_blocks = RES5_BLOCKS[depth]
        out_channels = resnets.RES2_OUT_CHANNELS * 8  # res5 is 8x res2
        common = dict(stride_per_block=[2] + [1] * (num_blocks - 1), in_channels=out_channels // 2,
                      out_channels=out_channels, norm=resnets.NORM)
        if depth in (18, 34):
            blocks = ResNet.make_stage(BasicBlock, num_blocks, **common)
        else:
            blocks = ResNet.make_stage(
                BottleneckBlock, num_blocks, **common,
                bottleneck_channels=resnets.NUM_GROUPS * resnets.WIDTH_PER_GROUP * 8,
                num_groups=resnets.NUM_GROUPS, stride_in_1x1=resnets.STRIDE_IN_1X1)
        res5 = nn.Sequential(*blocks)
        if cfg.TRANSFER.RES5_EXTRA_NORM:
            res5.add_module("norm", get_norm(resnets.NORM, out_channels))
        return res5, out_channels
