"""The backbone converter: every checkpoint layout, the architectures, reverse export, and a Detectron2
detector loading the output.

Features are checked independently of the converter's own verification: each test builds Detectron2's
ResNet itself from the file's ``meta["cfg"]``, loads the ``.pkl`` with strict names, and compares its
res2..res5 with the layer1..layer4 outputs of the torchvision model the checkpoint was made from
(:mod:`checkpoint_builders`).
"""
import os

import numpy as np
import pytest
import torch
import torchvision

import transfer  # noqa: F401  (Detectron2 compatibility fixes before any detectron2 import)
from checkpoint_builders import (LAYOUT_CASES, assert_same_features, c2_state, d2_pkl_checkpoint, features,
                                 folded, load_pkl, max_rel_error, model, moco_checkpoint, stride_in_1x1, write)
from pretrain.checkpoints.errors import ConversionError
from transfer.conversion.convert import convert

RGB = {"INPUT.FORMAT": "RGB", "MODEL.PIXEL_MEAN": [123.675, 116.28, 103.53],
       "MODEL.PIXEL_STD": [58.395, 57.12, 57.375]}

pytestmark = pytest.mark.usefixtures("torch_one_thread")


# ----------------------------------------------------------------------------------- the layouts
# The converter's own verification sees only the extracted backbone, whatever the layout: run it on a
# few layouts (and on every architecture below); the features are checked independently on all.
VERIFIED = {"torchvision", "moco-key-encoder", "pycontrast", "detectron2-c4-model"}


@pytest.mark.parametrize("case", list(LAYOUT_CASES))
def test_layout_converts_to_the_same_features(case, tmp_path):
    build, name, how, options, layout, uses_ema = LAYOUT_CASES[case]
    arch = "timm_resnet18" if layout == "timm" else "resnet18"  # timm's own ResNet, same names
    online, ema = model(arch, 0), model(arch, 1)
    src = write(build(online.state_dict(), ema.state_dict()), tmp_path / name, how)
    out = str(tmp_path / "out.pkl")
    result = convert(src, out, verify=case in VERIFIED, **options)
    assert result.backbone.layout == layout
    assert result.backbone.arch.name == "R-18" and result.kept == 100
    if case in VERIFIED:
        assert result.verification.max_rel_error < 1e-4
    else:
        assert result.verification is None and "skipped (--no-verify)" in result.summary()
    data = assert_same_features(out, ema if uses_ema else online)
    meta = data["meta"]
    assert meta["format"] == layout and meta["arch"] == "R-18" and meta["source"] == os.path.abspath(src)
    assert len(meta["source_sha256"]) == 64 and meta["dropped_total"] == sum(meta["dropped"].values())
    assert meta["cfg"] == {"MODEL.RESNETS.DEPTH": 18, "MODEL.RESNETS.NUM_GROUPS": 1,
                           "MODEL.RESNETS.WIDTH_PER_GROUP": 64, "MODEL.RESNETS.STEM_OUT_CHANNELS": 64,
                           "MODEL.RESNETS.RES2_OUT_CHANNELS": 64, "MODEL.RESNETS.STRIDE_IN_1X1": False, **RGB}
    summary = result.summary()
    for text in (layout, "R-18", "kept 100", "MODEL.RESNETS.DEPTH = 18"):
        assert text in summary
    if layout == "detectron2":
        assert "assumed torchvision's convention" in summary


def test_dropped_tensors_are_counted_by_kind(tmp_path):
    online, ema = model("resnet18", 0), model("resnet18", 1)
    src = write(moco_checkpoint(online.state_dict(), ema.state_dict()), tmp_path / "moco.pth.tar", "torch")
    dropped = convert(src, str(tmp_path / "out.pkl"), verify=False).backbone.dropped
    # key encoder: 100 tensors + 20 num_batches_tracked + 4 head; query encoder: 4 head + 20 counters
    assert dropped == {"momentum_encoder": 124, "head": 4, "bookkeeping": 21, "queue": 1, "optimizer": 1}


def test_detectron2_pass_through_keeps_meta(tmp_path):
    src = write(dict(model("resnet18").state_dict()), tmp_path / "tv.pth", "torch")
    first = str(tmp_path / "first.pkl")
    convert(src, first)
    second = str(tmp_path / "second.pkl")
    result = convert(first, second)
    assert result.backbone.layout == "detectron2" and not result.backbone.notes
    a, b = load_pkl(first), load_pkl(second)
    assert b["meta"]["cfg"] == a["meta"]["cfg"]
    assert b["meta"]["origin"]["format"] == "torchvision"
    assert set(a["model"]) == set(b["model"])
    assert all(np.array_equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_caffe2_msra_pickle_keeps_its_convention(tmp_path):
    """Detectron2's MSRA ImageNet R-50: Caffe2 names, BGR, stride in the 1x1 conv, folded BatchNorm."""
    net = folded(model("resnet50"))
    src = write(c2_state(net), tmp_path / "R-50.pkl", "pickle")
    net = stride_in_1x1(net)
    out = str(tmp_path / "out.pkl")
    result = convert(src, out)
    assert result.backbone.layout == "caffe2" and result.backbone.arch.name == "R-50"
    cfg = assert_same_features(out, net)["meta"]["cfg"]
    assert cfg["MODEL.RESNETS.STRIDE_IN_1X1"] is True and cfg["INPUT.FORMAT"] == "BGR"
    assert cfg["MODEL.PIXEL_STD"] == [1.0, 1.0, 1.0] and cfg["MODEL.PIXEL_MEAN"] == [103.53, 116.28, 123.675]
    assert any("MSRA" in note for note in result.backbone.notes)
    with pytest.raises(ConversionError, match="stride in the 1x1 conv"):
        convert(out, str(tmp_path / "back.pth"), to="torchvision")
    assert not os.path.exists(tmp_path / "back.pth")


# ----------------------------------------------------------------------------------- architectures
ARCH_CASES = {
    "resnet34": ("R-34", {"DEPTH": 34, "NUM_GROUPS": 1, "WIDTH_PER_GROUP": 64, "STEM_OUT_CHANNELS": 64,
                          "RES2_OUT_CHANNELS": 64}),
    "resnet50": ("R-50", {"DEPTH": 50, "NUM_GROUPS": 1, "WIDTH_PER_GROUP": 64, "STEM_OUT_CHANNELS": 64,
                          "RES2_OUT_CHANNELS": 256}),
    "resnext50_32x4d": ("X-50-32x4d", {"DEPTH": 50, "NUM_GROUPS": 32, "WIDTH_PER_GROUP": 4,
                                       "STEM_OUT_CHANNELS": 64, "RES2_OUT_CHANNELS": 256}),
    "wide_resnet50_2": ("WR-50-2", {"DEPTH": 50, "NUM_GROUPS": 1, "WIDTH_PER_GROUP": 128,
                                    "STEM_OUT_CHANNELS": 64, "RES2_OUT_CHANNELS": 256}),
    "r50x2": ("R-50x2", {"DEPTH": 50, "NUM_GROUPS": 1, "WIDTH_PER_GROUP": 128, "STEM_OUT_CHANNELS": 128,
                         "RES2_OUT_CHANNELS": 512}),
}


@pytest.fixture(scope="module")
def r50_pkl(tmp_path_factory):
    """An R-50 converted from a MoCo v2 checkpoint (shared by the architecture and detector tests)."""
    folder = tmp_path_factory.mktemp("r50")
    state = model("resnet50").state_dict()
    src = write(moco_checkpoint(state, state), folder / "moco_r50.pth.tar", "torch")
    out = str(folder / "moco_r50.pkl")
    convert(src, out)
    return out


@pytest.mark.parametrize("name", list(ARCH_CASES))
def test_architecture_is_inferred_from_shapes(name, tmp_path, r50_pkl):
    arch_name, keys = ARCH_CASES[name]
    if name == "resnet50":
        out = r50_pkl
    else:
        src = write(dict(model(name).state_dict()), tmp_path / f"{name}.pth", "torch")
        out = str(tmp_path / f"{name}.pkl")
        result = convert(src, out)
        assert result.backbone.arch.name == arch_name
        assert result.verification.max_rel_error < 1e-4
    data = assert_same_features(out, model(name))
    expected = {f"MODEL.RESNETS.{k}": v for k, v in keys.items()}
    assert {k: data["meta"]["cfg"][k] for k in expected} == expected
    assert data["meta"]["arch"] == arch_name


# ----------------------------------------------------------------------------------- reverse export
def test_reverse_export_round_trip(tmp_path):
    net = model("resnet18")
    src = write(dict(net.state_dict()), tmp_path / "tv.pth", "torch")
    pkl = str(tmp_path / "r18.pkl")
    convert(src, pkl, verify=False)
    back = str(tmp_path / "back.pth")
    result = convert(pkl, back, to="torchvision")
    assert result.verification.max_rel_error < 1e-4 and result.backbone.layout == "detectron2"
    state = torch.load(back, map_location="cpu", weights_only=True)
    fresh = torchvision.models.resnet18(weights=None)
    missing, unexpected = fresh.load_state_dict(state, strict=False)
    assert sorted(missing) == ["fc.bias", "fc.weight"] and not unexpected
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert max_rel_error(features(fresh.eval(), x), features(net, x)) == 0
    for key, value in net.state_dict().items():
        if key in state:
            assert torch.equal(state[key], value)


def test_reverse_export_of_stock_torchvision_pkl(tmp_path):
    """A Detectron2 pickle of torchvision weights without meta (as Detectron2's converter writes)."""
    net = model("resnet18")
    pkl = write(d2_pkl_checkpoint(net.state_dict(), None), tmp_path / "R-18.pkl", "pickle")
    back = str(tmp_path / "R-18.pth")
    convert(pkl, back, to="torchvision")
    fresh = torchvision.models.resnet18(weights=None)
    fresh.load_state_dict(torch.load(back, weights_only=True), strict=False)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert max_rel_error(features(fresh.eval(), x), features(net, x)) == 0


# ----------------------------------------------------------------------------------- detectors
@pytest.mark.parametrize("config", ["COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml",
                                    "COCO-InstanceSegmentation/mask_rcnn_R_50_C4_1x.yaml"])
def test_detector_loads_every_backbone_weight(config, r50_pkl):
    from detectron2 import model_zoo
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    class Recording(DetectionCheckpointer):
        def _log_incompatible_keys(self, incompatible):
            self.incompatible = incompatible

    data = load_pkl(r50_pkl)
    cfg = get_cfg()
    cfg.merge_from_file(model_zoo.get_config_file(config))
    for key, value in data["meta"]["cfg"].items():
        cfg.merge_from_list([key, value])
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = r50_pkl
    detector = build_model(cfg)
    assert type(detector).__name__ == "GeneralizedRCNN"
    checkpointer = Recording(detector)
    checkpointer.load(cfg.MODEL.WEIGHTS)
    missing = checkpointer.incompatible.missing_keys
    backbone = [k for k in missing if k.startswith("backbone.bottom_up.") or ".res" in k or "stem" in k]
    assert backbone == [] and checkpointer.incompatible.unexpected_keys == []
    assert checkpointer.incompatible.incorrect_shapes == []
    state = detector.state_dict()
    res5 = "roi_heads.res5.2.conv3.weight" if "C4" in config else "backbone.bottom_up.res5.2.conv3.weight"
    assert np.array_equal(state[res5].numpy(), data["model"]["res5.2.conv3.weight"])
    stem = "backbone.stem.conv1.norm.running_var" if "C4" in config else \
        "backbone.bottom_up.stem.conv1.norm.running_var"
    assert np.array_equal(state[stem].numpy(), data["model"]["stem.conv1.norm.running_var"])
