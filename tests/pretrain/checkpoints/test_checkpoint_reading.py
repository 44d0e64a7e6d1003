"""Reading a checkpoint's ResNet without Detectron2: architecture from shapes, tensor names, layouts.

The conversion to Detectron2 weights (every layout, verified features) is tested in tests/transfer/conversion.
"""
import pytest
import torch
import torchvision

from pretrain.checkpoints.arch import build_torchvision_resnet, infer_architecture
from pretrain.checkpoints.backbone import extract_backbone
from pretrain.checkpoints.conventions import TORCHVISION_INPUT
from pretrain.checkpoints.errors import ConversionError
from pretrain.checkpoints.layouts import LAYOUTS, detect_layout
from pretrain.checkpoints.names import (caffe2_to_torchvision_name, detectron2_to_torchvision,
                                        torchvision_to_detectron2)


def _backbone_shapes(name):
    with torch.device("meta"):  # shapes only: no memory, no time
        state = getattr(torchvision.models, name)().state_dict()
    return {k: v for k, v in state.items() if not k.startswith("fc.") and not k.endswith("num_batches_tracked")}


@pytest.mark.parametrize("name,depth", [("resnet101", 101), ("resnet152", 152), ("resnext101_32x8d", 101)])
def test_depth_from_blocks_per_stage(name, depth):
    arch = infer_architecture(_backbone_shapes(name))
    assert arch.depth == depth and arch.torchvision_name == name


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "resnext50_32x4d", "wide_resnet50_2"])
def test_built_resnet_has_the_inferred_shapes(name):
    state = _backbone_shapes(name)
    arch = infer_architecture(state)
    assert arch.torchvision_name == name
    built = build_torchvision_resnet(arch, device="meta").state_dict()
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    assert {k: tuple(v.shape) for k, v in built.items() if k in state} == shapes


def test_detectron2_names_round_trip():
    state = _backbone_shapes("resnet50")
    d2 = torchvision_to_detectron2(state)
    assert "stem.conv1.norm.running_var" in d2 and "res5.0.shortcut.norm.weight" in d2
    assert detectron2_to_torchvision(d2) == state
    with pytest.raises(ConversionError, match="no Detectron2 name for the torchvision tensor fc.weight"):
        torchvision_to_detectron2({"fc.weight": None})


def test_caffe2_names():
    assert caffe2_to_torchvision_name("res_conv1_bn_riv") == "bn1.running_var"
    assert caffe2_to_torchvision_name("res3_1_branch2c_bn_s") == "layer2.1.bn3.weight"
    assert caffe2_to_torchvision_name("res5_0_branch1_w") == "layer4.0.downsample.0.weight"
    assert caffe2_to_torchvision_name("fc1000_w") is None


def test_extract_backbone_of_a_moco_checkpoint_and_its_key_encoder():
    torch.manual_seed(0)
    online = {k: v for k, v in torchvision.models.resnet18().state_dict().items() if not k.startswith("fc.")}
    key = {k: v + 1 if v.is_floating_point() else v for k, v in online.items()}
    ckpt = {"state_dict": {**{f"module.encoder_q.{k}": v for k, v in online.items()},
                           **{f"module.encoder_k.{k}": v for k, v in key.items()},
                           "module.queue": torch.zeros(128, 16)}, "arch": "resnet18"}
    layout, location = detect_layout(ckpt)
    assert layout.name == "moco" and location.where == "['state_dict']['module.encoder_q.*']"
    backbone = extract_backbone(ckpt, source="moco.pth")
    assert backbone.layout == "moco" and backbone.arch.name == "R-18" and backbone.input_cfg == TORCHVISION_INPUT
    assert torch.equal(backbone.state["layer1.0.conv1.weight"], online["layer1.0.conv1.weight"])
    assert "num_batches_tracked" not in " ".join(backbone.state)
    assert backbone.dropped["momentum_encoder"] == len(key) and backbone.dropped["queue"] == 1
    ema = extract_backbone(ckpt, ema=True)
    assert torch.equal(ema.state["conv1.weight"], key["conv1.weight"])
    assert list(LAYOUTS)[0] == "pretrain" and "moco" in LAYOUTS

