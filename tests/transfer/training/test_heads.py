"""transfer.training.heads: the C4 head is Detectron2's Res5ROIHeads unless asked otherwise; ResNet-18 weights
fill only the tensors of its bottleneck res5 whose shapes fit (what Wu et al. ran), or all of the basic-block
res5 behind TRANSFER.RES5_MATCH_BACKBONE; MoCo's extra norm."""
import os
import pickle

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model
from detectron2.modeling.backbone.resnet import BasicBlock, BottleneckBlock
from detectron2.modeling.roi_heads import Res5ROIHeads

from pretrain.common.paths import REPO_ROOT
from transfer.training.config import TINY_OVERRIDES, build_config, get_transfer_cfg
from transfer.training.heads import Res5ROIHeadsAnyDepth, published_head_name

pytestmark = pytest.mark.usefixtures("torch_one_thread")
C4 = os.path.join(REPO_ROOT, "configs", "transfer", "coco_mask_rcnn_R_50_C4_1x.yaml")


def _cfg(depth, **transfer):
    cfg = get_transfer_cfg()
    cfg.MODEL.RESNETS.DEPTH = depth
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64 if depth < 50 else 256
    cfg.MODEL.ROI_HEADS.NAME = "Res5ROIHeadsAnyDepth"
    cfg.TRANSFER.update(**transfer)
    return cfg


def _shapes(module):
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


@pytest.mark.parametrize("depth", [18, 50])
def test_with_both_switches_off_it_is_detectron2s_head(depth):
    cfg = _cfg(depth)
    shape = {"res4": ShapeSpec(channels=cfg.MODEL.RESNETS.RES2_OUT_CHANNELS * 4, stride=16)}
    ours, stock = Res5ROIHeadsAnyDepth(cfg, shape), Res5ROIHeads(cfg, shape)
    assert _shapes(ours) == _shapes(stock)
    assert [type(b) for b in ours.res5] == [BottleneckBlock] * 3
    assert published_head_name(cfg) == "Res5ROIHeads"


def test_switches_build_basic_blocks_and_the_extra_norm():
    cfg = _cfg(18, RES5_MATCH_BACKBONE=True, RES5_EXTRA_NORM=True)
    head = Res5ROIHeadsAnyDepth(cfg, {"res4": ShapeSpec(channels=256, stride=16)})
    assert [type(b) for b in head.res5[:2]] == [BasicBlock, BasicBlock] and hasattr(head.res5, "norm")
    assert published_head_name(cfg) == "Res5ROIHeadsAnyDepth (res5 of basic blocks)"
    assert published_head_name(_cfg(50, RES5_MATCH_BACKBONE=True, RES5_EXTRA_NORM=True)) == "Res5ROIHeadsExtraNorm"


def _r18_weights(tmp_path):
    import torchvision

    from transfer.conversion.convert import convert

    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "tv_r18.pth")
    convert(str(tmp_path / "tv_r18.pth"), str(tmp_path / "r18.pkl"), verify=False)
    with open(tmp_path / "r18.pkl", "rb") as f:
        return str(tmp_path / "r18.pkl"), pickle.load(f)["model"]


@pytest.mark.parametrize("match", [False, True])
def test_resnet18_weights_fill_the_res5_head_where_shapes_fit(tmp_path, match):
    weights, source = _r18_weights(tmp_path)
    cfg = build_config(C4, TINY_OVERRIDES + ["MODEL.WEIGHTS", weights, "TRANSFER.MODE", "frozen",
                                             "TRANSFER.RES5_MATCH_BACKBONE", str(match)], has_cuda=False)
    model = build_model(cfg)
    DetectionCheckpointer(model).load(weights)
    res5 = {k[len("roi_heads."):]: v for k, v in model.state_dict().items() if k.startswith("roi_heads.res5.")}
    loaded = {k for k, v in res5.items() if k in source and tuple(v.shape) == source[k].shape
              and torch.equal(v, torch.as_tensor(source[k]))}
    if match:  # the basic-block res5 takes every tensor of ResNet-18's res5
        assert loaded == {k for k in source if k.startswith("res5.")} == set(res5)
    else:  # Detectron2's bottleneck res5: only the 3x3 convs, the shortcut and the norms of matching shape
        assert "res5.0.conv2.weight" in loaded and "res5.0.shortcut.weight" in loaded
        assert "res5.0.conv1.weight" not in loaded and "res5.2.conv3.weight" not in loaded
        assert tuple(res5["res5.0.conv1.weight"].shape) == (512, 256, 1, 1)  # a bottleneck 1x1 conv
