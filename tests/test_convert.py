"""The backbone converter: every checkpoint layout, the architectures, reverse export, the errors, and a
Detectron2 detector loading the output.

Features are checked independently of the converter's own verification: each test builds Detectron2's
ResNet itself from the file's ``meta["cfg"]``, loads the ``.pkl`` with strict names, and compares its
res2..res5 with the layer1..layer4 outputs of the torchvision model the checkpoint was made from.
"""
import argparse
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.resnet import Bottleneck, ResNet

import transfer  # noqa: F401  (Detectron2 compatibility fixes before any detectron2 import)
from transfer import convert as C

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(REPO, "tools", "convert_backbone.py")
RGB = {"INPUT.FORMAT": "RGB", "MODEL.PIXEL_MEAN": [123.675, 116.28, 103.53],
       "MODEL.PIXEL_STD": [58.395, 57.12, 57.375]}


# ------------------------------------------------------------------------------------------- helpers
pytestmark = pytest.mark.usefixtures("torch_one_thread")


def randomize(model, seed):
    """Random BatchNorm statistics and affine parameters (the convs are randomly initialised already)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.2, generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
                m.weight.uniform_(0.3, 1.2, generator=g)
                m.bias.normal_(0, 0.2, generator=g)
                m.num_batches_tracked.fill_(1000)
    return model.eval()


def scaled_resnet50(mult=2):
    """R50 x mult of MoCo/CMC/PyContrast: every width (stem, bottleneck, output) scaled by ``mult``."""
    model = ResNet(Bottleneck, [3, 4, 6, 3])
    base = 64 * mult
    model.inplanes = base
    model.conv1 = nn.Conv2d(3, base, kernel_size=7, stride=2, padding=3, bias=False)
    model.bn1 = nn.BatchNorm2d(base)
    model.layer1 = model._make_layer(Bottleneck, base, 3)
    model.layer2 = model._make_layer(Bottleneck, base * 2, 4, stride=2)
    model.layer3 = model._make_layer(Bottleneck, base * 4, 6, stride=2)
    model.layer4 = model._make_layer(Bottleneck, base * 8, 3, stride=2)
    model.fc = nn.Linear(base * 8 * 4, 1000)
    return model


_MODELS = {}


def model(name, seed=0):
    """A torchvision (or timm) ResNet with random weights, cached per (name, seed)."""
    if (name, seed) not in _MODELS:
        torch.manual_seed(seed)
        if name == "r50x2":
            net = scaled_resnet50(2)
        elif name.startswith("timm_"):
            import timm

            net = timm.create_model(name[5:], pretrained=False)
        else:
            net = getattr(torchvision.models, name)(weights=None)
        _MODELS[name, seed] = randomize(net, seed)
    return _MODELS[name, seed]


def features(net, x):
    """res2..res5 of a torchvision/timm ResNet: the stem (with max-pool), then layer1..layer4."""
    act = getattr(net, "relu", None) or net.act1
    x = net.maxpool(act(net.bn1(net.conv1(x))))
    out = {}
    for i in range(1, 5):
        x = getattr(net, f"layer{i}")(x)
        out[f"res{i + 1}"] = x
    return out


def load_pkl(path):
    with open(path, "rb") as f:
        return pickle.load(f, encoding="latin1")


def detectron2_backbone(data):
    """Detectron2's ResNet built from meta['cfg'] and loaded, with strict names, from the file's model."""
    from detectron2.config import get_cfg
    from detectron2.layers import ShapeSpec
    from detectron2.modeling.backbone.resnet import build_resnet_backbone

    cfg = get_cfg()
    for key, value in data["meta"]["cfg"].items():
        cfg.merge_from_list([key, value])
    cfg.MODEL.RESNETS.NORM = "FrozenBN"
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    with torch.device("meta"):  # no initialisation: every tensor comes from the file (strict)
        backbone = build_resnet_backbone(cfg, ShapeSpec(channels=3))
    state = {k: torch.as_tensor(v) for k, v in data["model"].items()}
    backbone.load_state_dict(state, strict=True, assign=True)
    return backbone.eval()


def max_rel_error(ours, theirs):
    return max(float((ours[k] - theirs[k]).abs().max() / theirs[k].abs().max()) for k in theirs)


def assert_same_features(pkl_path, net):
    data = load_pkl(pkl_path)
    assert data["matching_heuristics"] is True and isinstance(data["__author__"], str)
    assert not any(k.endswith("num_batches_tracked") for k in data["model"])
    assert all(isinstance(v, np.ndarray) and v.dtype == np.float32 for v in data["model"].values())
    backbone = detectron2_backbone(data)
    x = torch.randn(1, 3, 64, 80, generator=torch.Generator().manual_seed(123))
    grouped = data["meta"]["cfg"]["MODEL.RESNETS.NUM_GROUPS"] > 1  # oneDNN: slow here, except grouped
    with torch.no_grad(), torch.backends.mkldnn.flags(enabled=grouped):
        ours, theirs = backbone(x), features(net, x)
    assert max_rel_error(ours, theirs) < 1e-5
    return data


def prefixed(state, prefix):
    return {prefix + k: v for k, v in state.items()}


def mlp_head(prefix, dims=(512, 128)):
    return {f"{prefix}0.weight": torch.randn(dims[0], dims[0]), f"{prefix}0.bias": torch.randn(dims[0]),
            f"{prefix}2.weight": torch.randn(dims[1], dims[0]), f"{prefix}2.bias": torch.randn(dims[1])}


OPTIMIZER = {"state": {0: {"momentum_buffer": torch.zeros(4)}}, "param_groups": [{"lr": 0.03, "params": [0]}]}


def d2_names(state):
    """Detectron2 names as Detectron2's tools/convert-torchvision-to-d2.py writes them (stem.fc.* too)."""
    out = {}
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            continue
        if "layer" not in key:
            key = "stem." + key
        for t in (1, 2, 3, 4):
            key = key.replace(f"layer{t}", f"res{t + 1}")
        for t in (1, 2, 3):
            key = key.replace(f"bn{t}", f"conv{t}.norm")
        out[key.replace("downsample.0", "shortcut").replace("downsample.1", "shortcut.norm")] = value
    return out


def c2_state(net):
    """Caffe2 names of MSRA's ImageNet pickles, BatchNorm folded into scale/bias (numpy arrays)."""
    out = {"fc1000_w": np.zeros((1000, 8), np.float32), "fc1000_b": np.zeros(1000, np.float32)}
    for key, value in net.state_dict().items():
        if key.startswith("fc.") or "running" in key or key.endswith("num_batches_tracked"):
            continue
        name = key.replace("conv1.weight", "conv1_w") if key == "conv1.weight" else None
        if key.startswith("bn1."):
            name = "res_conv1_bn_" + {"weight": "s", "bias": "b"}[key[4:]]
        elif key.startswith("layer"):
            layer, block, rest = key.split(".", 2)
            stage = f"res{int(layer[5]) + 1}_{block}_"
            for tv, c2 in (("conv1", "branch2a"), ("conv2", "branch2b"), ("conv3", "branch2c"),
                           ("bn1", "branch2a_bn"), ("bn2", "branch2b_bn"), ("bn3", "branch2c_bn"),
                           ("downsample.0", "branch1"), ("downsample.1", "branch1_bn")):
                if rest.startswith(tv + "."):
                    param = rest[len(tv) + 1:]
                    suffix = {"weight": "w" if "bn" not in c2 else "s", "bias": "b"}[param]
                    name = f"{stage}{c2}_{suffix}"
        out[name] = value.numpy().copy()
    return out


def folded(net):
    """The same network with BatchNorm statistics folded into scale and bias (mean 0, var 1)."""
    import copy

    net = copy.deepcopy(net)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                scale = m.weight / torch.sqrt(m.running_var + m.eps)
                m.bias.copy_(m.bias - m.running_mean * scale)
                m.weight.copy_(scale * (1 + m.eps) ** 0.5)
                m.running_mean.zero_()
                m.running_var.fill_(1.0)
    return net


def stride_in_1x1(net):
    """A copy of a torchvision bottleneck ResNet with each stage's stride in the 1x1 conv (MSRA v1)."""
    import copy

    net = copy.deepcopy(net)
    for i in (2, 3, 4):
        block = getattr(net, f"layer{i}")[0]
        block.conv1.stride, block.conv2.stride = (2, 2), (1, 1)
    return net


# ----------------------------------------------------------------------------------- the layouts
def _moco(online, ema):
    sd = {**prefixed({k: v for k, v in online.items() if not k.startswith("fc.")}, "module.encoder_q."),
          **mlp_head("module.encoder_q.fc."),
          **prefixed({k: v for k, v in ema.items() if not k.startswith("fc.")}, "module.encoder_k."),
          **mlp_head("module.encoder_k.fc."),
          "module.queue": torch.randn(128, 64), "module.queue_ptr": torch.zeros(1, dtype=torch.long)}
    return {"epoch": 200, "arch": "resnet18", "state_dict": sd, "optimizer": OPTIMIZER}


def _mocov3(online, ema):
    sd = {**prefixed({k: v for k, v in online.items() if not k.startswith("fc.")}, "module.base_encoder."),
          **mlp_head("module.base_encoder.fc."), **mlp_head("module.predictor."),
          "module.base_encoder.fc.1.running_mean": torch.zeros(512),
          **prefixed({k: v for k, v in ema.items() if not k.startswith("fc.")}, "module.momentum_encoder."),
          **mlp_head("module.momentum_encoder.fc.")}
    return {"epoch": 100, "arch": "resnet18", "state_dict": sd, "optimizer": OPTIMIZER,
            "scaler": {"scale": 65536.0, "growth_factor": 2.0}}


def _pycontrast(online, ema):
    model_sd = {**prefixed(online, "module.encoder."), **mlp_head("module.head.mlp."),
                **mlp_head("module.head_jig.mlp.")}
    ema_sd = {**prefixed(ema, "encoder."), **mlp_head("head.mlp.")}
    return {"opt": argparse.Namespace(arch="resnet18", method="InfoMin"), "model": model_sd,
            "model_ema": ema_sd, "contrast": {"memory": torch.randn(1000, 128), "memory_2": torch.randn(10)},
            "optimizer": OPTIMIZER, "epoch": 800}


def _pretrain(online, ema):
    sd = {**prefixed(online, "encoder_q."), **prefixed(ema, "encoder_k."), "queue": torch.randn(128, 64),
          "queue_ptr": torch.zeros(1, dtype=torch.long)}
    return {"state_dict": sd, "config": "MODEL:\n  ARCH: resnet18\n", "iter": 1000, "epoch": 2,
            "arch": "resnet18", "method": "moco_v2", "optimizer": OPTIMIZER}


def _solo(online, ema):
    sd = {**prefixed({k: v for k, v in online.items() if not k.startswith("fc.")}, "backbone."),
          **mlp_head("projector."), **mlp_head("predictor."),
          **prefixed({k: v for k, v in ema.items() if not k.startswith("fc.")}, "momentum_backbone."),
          **mlp_head("momentum_projector."), "classifier.weight": torch.randn(100, 512),
          "classifier.bias": torch.randn(100)}
    return {"epoch": 399, "global_step": 1000, "pytorch-lightning_version": "2.0.2", "state_dict": sd,
            "optimizer_states": [OPTIMIZER], "lr_schedulers": [{"last_epoch": 3}]}


def _mmselfsup(online, ema):
    sd = {**prefixed({k: v for k, v in online.items() if not k.startswith("fc.")}, "backbone."),
          **mlp_head("neck.mlp."), "head.predictor.weight": torch.randn(4, 4)}
    return {"meta": {"epoch": 200, "mmcv_version": "1.7.0", "config": "model = dict(type='MoCo')"},
            "state_dict": sd}


def _vissl(online, ema):
    trunk = prefixed({k: v for k, v in online.items() if not k.startswith("fc.")}, "_feature_blocks.")
    heads = {"0.clf.0.weight": torch.randn(128, 512), "0.clf.0.bias": torch.randn(128)}
    return {"classy_state_dict": {"base_model": {"model": {"trunk": trunk, "heads": heads}},
                                  "loss": {"queue": torch.randn(10, 4)}},
            "phase_idx": 3, "iteration": 1000, "type": "checkpoint"}


def _timm(online, ema):
    return {"epoch": 10, "arch": "resnet18", "state_dict": dict(online), "state_dict_ema": dict(ema),
            "optimizer": OPTIMIZER, "version": 2, "metric": 71.2}


def _torchvision_references(online, ema):
    return {"model": dict(online), "model_ema": {**prefixed(ema, "module."), "n_averaged": torch.tensor(10)},
            "optimizer": OPTIMIZER, "epoch": 89}


def _d2_pkl(online, ema):
    return {"model": {k: v.numpy() for k, v in d2_names(online).items()}, "__author__": "torchvision",
            "matching_heuristics": True}


def _d2_fpn_model(online, ema):
    d2 = {k: v for k, v in d2_names(online).items() if not k.startswith("stem.fc.")}
    model = {**prefixed(d2, "backbone.bottom_up."),
             "backbone.fpn_lateral2.weight": torch.randn(256, 64, 1, 1),
             "roi_heads.box_predictor.cls_score.weight": torch.randn(81, 1024),
             "pixel_mean": torch.zeros(3, 1, 1)}
    return {"model": model, "iteration": 89999, "optimizer": OPTIMIZER}


def _d2_c4_model(online, ema):
    d2 = {k: v for k, v in d2_names(online).items() if not k.startswith("stem.fc.")}
    model = {**prefixed({k: v for k, v in d2.items() if not k.startswith("res5.")}, "backbone."),
             **prefixed({k: v for k, v in d2.items() if k.startswith("res5.")}, "roi_heads."),
             "roi_heads.box_predictor.bbox_pred.weight": torch.randn(320, 512)}
    return {"model": model, "iteration": 10}


# name: (builder, file name, write with, convert options, expected layout, converts the EMA model)
LAYOUT_CASES = {
    "torchvision": (lambda o, e: dict(o), "tv.pth", "torch", {}, "torchvision", False),
    "torchvision-ddp": (lambda o, e: prefixed(o, "module."), "tv_ddp.pt", "torch", {}, "torchvision", False),
    "torchvision-references-ema": (_torchvision_references, "ref.pth", "torch", {"ema": True}, "torchvision",
                                   True),
    "safetensors": (lambda o, e: {k: v.contiguous() for k, v in o.items()}, "tv.safetensors", "safetensors", {},
                    "torchvision", False),
    "timm": (_timm, "model_best.pth.tar", "torch", {}, "timm", False),
    "timm-ema": (_timm, "last.pth.tar", "torch", {"ema": True}, "timm", True),
    "moco": (_moco, "checkpoint_0199.pth.tar", "torch", {}, "moco", False),
    "moco-key-encoder": (_moco, "checkpoint_0199.pth.tar", "torch", {"ema": True}, "moco", True),
    "mocov3": (_mocov3, "r-50-1000ep.pth.tar", "torch", {}, "mocov3", False),
    "pycontrast": (_pycontrast, "ckpt_epoch_800.pth", "torch", {"trust_pickle": True}, "pycontrast", False),
    "pycontrast-ema": (_pycontrast, "ckpt_epoch_800.pth", "torch", {"trust_pickle": True, "ema": True},
                       "pycontrast", True),
    "pretrain": (_pretrain, "checkpoint_last.pth", "torch", {}, "pretrain", False),
    "solo-learn": (_solo, "byol-400ep.ckpt", "torch", {}, "solo-learn", False),
    "mmselfsup": (_mmselfsup, "mocov2_epoch_200.pth", "torch", {}, "mmselfsup", False),
    "vissl": (_vissl, "model_final_checkpoint_phase199.torch", "torch", {}, "vissl", False),
    "detectron2-pkl": (_d2_pkl, "R-18.pkl", "pickle", {}, "detectron2", False),
    "detectron2-fpn-model": (_d2_fpn_model, "model_final.pth", "torch", {}, "detectron2", False),
    "detectron2-c4-model": (_d2_c4_model, "model_final_c4.pth", "torch", {}, "detectron2", False),
}


def write(obj, path, how):
    if how == "torch":
        torch.save(obj, path)
    elif how == "pickle":
        with open(path, "wb") as f:
            pickle.dump(obj, f)
    else:
        from safetensors.torch import save_file

        save_file(obj, path)
    return str(path)


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
    result = C.convert(src, out, verify=case in VERIFIED, **options)
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
    src = write(_moco(online.state_dict(), ema.state_dict()), tmp_path / "moco.pth.tar", "torch")
    dropped = C.convert(src, str(tmp_path / "out.pkl"), verify=False).backbone.dropped
    # key encoder: 100 tensors + 20 num_batches_tracked + 4 head; query encoder: 4 head + 20 counters
    assert dropped == {"momentum_encoder": 124, "head": 4, "bookkeeping": 21, "queue": 1, "optimizer": 1}


def test_detectron2_pass_through_keeps_meta(tmp_path):
    src = write(dict(model("resnet18").state_dict()), tmp_path / "tv.pth", "torch")
    first = str(tmp_path / "first.pkl")
    C.convert(src, first)
    second = str(tmp_path / "second.pkl")
    result = C.convert(first, second)
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
    result = C.convert(src, out)
    assert result.backbone.layout == "caffe2" and result.backbone.arch.name == "R-50"
    cfg = assert_same_features(out, net)["meta"]["cfg"]
    assert cfg["MODEL.RESNETS.STRIDE_IN_1X1"] is True and cfg["INPUT.FORMAT"] == "BGR"
    assert cfg["MODEL.PIXEL_STD"] == [1.0, 1.0, 1.0] and cfg["MODEL.PIXEL_MEAN"] == [103.53, 116.28, 123.675]
    assert any("MSRA" in note for note in result.backbone.notes)
    with pytest.raises(C.ConversionError, match="stride in the 1x1 conv"):
        C.convert(out, str(tmp_path / "back.pth"), to="torchvision")
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
    src = write(_moco(state, state), folder / "moco_r50.pth.tar", "torch")
    out = str(folder / "moco_r50.pkl")
    C.convert(src, out)
    return out


@pytest.mark.parametrize("name", list(ARCH_CASES))
def test_architecture_is_inferred_from_shapes(name, tmp_path, r50_pkl):
    arch_name, keys = ARCH_CASES[name]
    if name == "resnet50":
        out = r50_pkl
    else:
        src = write(dict(model(name).state_dict()), tmp_path / f"{name}.pth", "torch")
        out = str(tmp_path / f"{name}.pkl")
        result = C.convert(src, out)
        assert result.backbone.arch.name == arch_name
        assert result.verification.max_rel_error < 1e-4
    data = assert_same_features(out, model(name))
    expected = {f"MODEL.RESNETS.{k}": v for k, v in keys.items()}
    assert {k: data["meta"]["cfg"][k] for k in expected} == expected
    assert data["meta"]["arch"] == arch_name


@pytest.mark.parametrize("name,depth", [("resnet101", 101), ("resnet152", 152), ("resnext101_32x8d", 101)])
def test_depth_from_blocks_per_stage(name, depth):
    with torch.device("meta"):  # shapes only: no memory, no time
        state = getattr(torchvision.models, name)().state_dict()
    arch = C.infer_architecture({k: v for k, v in state.items() if not k.startswith("fc.")
                                 and not k.endswith("num_batches_tracked")})
    assert arch.depth == depth and arch.torchvision_name == name


# ----------------------------------------------------------------------------------- reverse export
def test_reverse_export_round_trip(tmp_path):
    net = model("resnet18")
    src = write(dict(net.state_dict()), tmp_path / "tv.pth", "torch")
    pkl = str(tmp_path / "r18.pkl")
    C.convert(src, pkl, verify=False)
    back = str(tmp_path / "back.pth")
    result = C.convert(pkl, back, to="torchvision")
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
    pkl = write(_d2_pkl(net.state_dict(), None), tmp_path / "R-18.pkl", "pickle")
    back = str(tmp_path / "R-18.pth")
    C.convert(pkl, back, to="torchvision")
    fresh = torchvision.models.resnet18(weights=None)
    fresh.load_state_dict(torch.load(back, weights_only=True), strict=False)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert max_rel_error(features(fresh.eval(), x), features(net, x)) == 0


# ----------------------------------------------------------------------------------- errors
def _tv_state():
    return dict(model("resnet18").state_dict())


def _without(prefix):
    return {k: v for k, v in _tv_state().items() if not k.startswith(prefix)}


def _with(**changes):
    state = _tv_state()
    state.update({k.replace("__", "."): v for k, v in changes.items()})
    return state


ERROR_CASES = {
    "unknown layout": ({"weights": {"foo.weight": torch.zeros(2)}, "bar": torch.zeros(1)},
                       "unknown checkpoint layout; keys seen: weights.foo.weight, bar; layouts tried: pretrain"),
    "partial backbone": (_without("layer4."), r"partial backbone .*: res5 \(layer4\) missing"),
    "missing tensor": ({k: v for k, v in _tv_state().items() if k != "layer2.0.bn1.running_var"},
                       "missing, e.g. layer2.0.bn1.running_var"),
    "shape mismatch": (_with(layer3__0__conv1__weight=torch.zeros(256, 64, 3, 3)),
                       r"shape mismatch .*layer3.0.conv1.weight is \(256, 64, 3, 3\).*needs \(256, 128, 3, 3\)"),
    "vision transformer": ({"cls_token": torch.zeros(1, 1, 8), "pos_embed": torch.zeros(1, 5, 8),
                            "patch_embed.proj.weight": torch.zeros(8, 3, 16, 16),
                            "blocks.0.attn.qkv.weight": torch.zeros(24, 8)}, "Vision Transformer"),
    "mocov3 vit": ({"state_dict": {"module.base_encoder.cls_token": torch.zeros(1, 1, 8),
                                   "module.base_encoder.patch_embed.proj.weight": torch.zeros(8, 3, 16, 16)}},
                   "holds no ResNet.*Vision Transformer"),
    "cmc": ({"model": {"module.encoder.l_to_ab.conv1.weight": torch.zeros(32, 1, 7, 7),
                       "module.encoder.ab_to_l.conv1.weight": torch.zeros(32, 2, 7, 7)}},
            "CMC checkpoint.*two encoders on L and ab inputs are not an RGB backbone"),
    "cifar stem": (_with(conv1__weight=torch.zeros(64, 3, 3, 3)), "stem conv is 3x3"),
    "needs full unpickling": ({"opt": argparse.Namespace(lr=0.1), "model": _tv_state()},
                              r"needs full unpickling \(it stores argparse.Namespace\).*--trust-pickle"),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_error_is_one_line_and_writes_nothing(case, tmp_path):
    obj, message = ERROR_CASES[case]
    src = write(obj, tmp_path / "in.pth", "torch")
    out = tmp_path / "out.pkl"
    with pytest.raises(C.ConversionError, match=message) as info:
        C.convert(src, str(out))
    assert "\n" not in str(info.value)
    assert os.listdir(tmp_path) == ["in.pth"]


def test_file_errors(tmp_path):
    out = str(tmp_path / "out.pkl")
    with pytest.raises(C.ConversionError, match="nothere.pth: no such file"):
        C.convert(str(tmp_path / "nothere.pth"), out)
    good = write(_tv_state(), tmp_path / "good.pth", "torch")
    data = open(good, "rb").read()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(C.ConversionError, match="cut.pth: cannot read the checkpoint .truncated or corrupt"):
        C.convert(str(tmp_path / "cut.pth"), out)
    (tmp_path / "junk.pkl").write_bytes(b"\x80\x04not a pickle at all" * 10)
    with pytest.raises(C.ConversionError, match="junk.pkl: cannot read the checkpoint"):
        C.convert(str(tmp_path / "junk.pkl"), out)
    unsafe = write({"model": {}, "cfg": argparse.Namespace(a=1)}, tmp_path / "unsafe.pkl", "pickle")
    with pytest.raises(C.ConversionError, match=r"unsafe.pkl: needs full unpickling .*argparse.Namespace"):
        C.convert(unsafe, out)
    with pytest.raises(C.ConversionError, match="must end in .pkl"):
        C.convert(good, str(tmp_path / "out.pth"))
    with pytest.raises(C.ConversionError, match="--ema: torchvision checkpoints have no EMA|no EMA/momentum"):
        C.convert(good, out, ema=True)
    with pytest.raises(C.ConversionError, match="is not a moco checkpoint"):
        C.convert(good, out, fmt="moco")
    assert not os.path.exists(out)


def test_verification_catches_a_wrong_mapping(tmp_path, monkeypatch):
    """Swapping two BatchNorms' statistics keeps every name and shape valid: only the features tell."""
    src = write(_tv_state(), tmp_path / "tv.pth", "torch")
    real = C._tv_to_d2_name
    swap = {"layer2.1.bn1.running_var": "layer2.1.bn2.running_var",
            "layer2.1.bn2.running_var": "layer2.1.bn1.running_var"}
    monkeypatch.setattr(C, "_tv_to_d2_name", lambda name: real(swap.get(name, name)))
    with pytest.raises(C.ConversionError, match=r"verification failed: Detectron2's res\d differs"):
        C.convert(src, str(tmp_path / "out.pkl"))
    assert os.listdir(tmp_path) == ["tv.pth"]
    C.convert(src, str(tmp_path / "unverified.pkl"), verify=False)  # --no-verify writes it anyway
    assert os.path.exists(tmp_path / "unverified.pkl")


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


# ----------------------------------------------------------------------------------- the CLI
def _run(*args):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # tiny models: one thread is faster on a busy machine
    return subprocess.run([sys.executable, TOOL, *args], capture_output=True, text=True, cwd=REPO, env=env,
                          timeout=300)


def test_cli_converts_and_prints_a_summary(tmp_path):
    src = write(_pycontrast(_tv_state(), _tv_state()), tmp_path / "infomin.pth", "torch")
    out = tmp_path / "infomin.pkl"
    done = _run(src, str(out), "--trust-pickle", "--format", "pycontrast")
    assert done.returncode == 0, done.stderr
    for text in ("layout        pycontrast", "R-18", "kept 100", "max relative error",
                 "MODEL.RESNETS.STRIDE_IN_1X1 = False", "INPUT.FORMAT = 'RGB'"):
        assert text in done.stdout
    assert_same_features(str(out), model("resnet18"))


def test_cli_errors_are_one_line_without_output(tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("convert_backbone", TOOL)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    partial = write(_without("layer3."), tmp_path / "partial.pth", "torch")
    assert tool.main([partial, str(tmp_path / "out.pkl")]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == [
        f"convert_backbone: error: partial backbone in {partial}: res4 (layer3) missing"]
    assert tool.main([partial, str(tmp_path / "out.pkl"), "--to", "torchvision"]) == 1
    assert "must end in .pth or .pt" in capsys.readouterr().err
    infomin = write(_pycontrast(_tv_state(), _tv_state()), tmp_path / "infomin.pth", "torch")
    assert tool.main([infomin, str(tmp_path / "out.pkl")]) == 1
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("convert_backbone: error: ") and "--trust-pickle" in lines[0]
    with pytest.raises(SystemExit) as exit_info:
        tool.main([infomin, str(tmp_path / "out.pkl"), "--format", "simclr"])
    assert exit_info.value.code == 1
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("convert_backbone: error: argument --format: invalid choice")
    assert sorted(os.listdir(tmp_path)) == ["infomin.pth", "partial.pth"]
