"""ResNet checkpoints of every layout the converter reads, and an independent check of converted features.

Shared by the conversion tests: random torchvision/timm ResNets (cached), checkpoints in the layouts of
MoCo, PyContrast, solo-learn, VISSL, Detectron2, Caffe2, ... built from their state dicts, and
:func:`assert_same_features`, which builds Detectron2's ResNet itself from a ``.pkl``'s ``meta["cfg"]``,
loads it with strict names and compares res2..res5 with the torchvision model's layer1..layer4.
"""
import argparse
import pickle

import numpy as np
import torch
import torchvision
from torch import nn
from torchvision.models.resnet import Bottleneck, ResNet


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
def moco_checkpoint(online, ema):
    sd = {**prefixed({k: v for k, v in online.items() if not k.startswith("fc.")}, "module.encoder_q."),
          **mlp_head("module.encoder_q.fc."),
          **prefixed({k: v for k, v in ema.items() if not k.startswith("fc.")}, "module.encoder_k."),
          **mlp_head("module.encoder_k.fc."),
          "module.queue": torch.randn(128, 64), "module.queue_ptr": torch.zeros(1, dtype=torch.long)}
    return {"epoch": 200, "arch": "resnet18", "state_dict": sd, "optimizer": OPTIMIZER}


def mocov3_checkpoint(online, ema):
    sd = {**prefixed({k: v for k, v in online.items() if not k.startswith("fc.")}, "module.base_encoder."),
          **mlp_head("module.base_encoder.fc."), **mlp_head("module.predictor."),
          "module.base_encoder.fc.1.running_mean": torch.zeros(512),
          **prefixed({k: v for k, v in ema.items() if not k.startswith("fc.")}, "module.momentum_encoder."),
          **mlp_head("module.momentum_encoder.fc.")}
    return {"epoch": 100, "arch": "resnet18", "state_dict": sd, "optimizer": OPTIMIZER,
            "scaler": {"scale": 65536.0, "growth_factor": 2.0}}


def pycontrast_checkpoint(online, ema):
    model_sd = {**prefixed(online, "module.encoder."), **mlp_head("module.head.mlp."),
                **mlp_head("module.head_jig.mlp.")}
    ema_sd = {**prefixed(ema, "encoder."), **mlp_head("head.mlp.")}
    return {"opt": argparse.Namespace(arch="resnet18", method="InfoMin"), "model": model_sd,
            "model_ema": ema_sd, "contrast": {"memory": torch.randn(1000, 128), "memory_2": torch.randn(10)},
            "optimizer": OPTIMIZER, "epoch": 800}


def pretrain_checkpoint(online, ema):
    sd = {**prefixed(online, "encoder_q."), **prefixed(ema, "encoder_k."), "queue": torch.randn(128, 64),
          "queue_ptr": torch.zeros(1, dtype=torch.long)}
    return {"state_dict": sd, "config": "MODEL:\n  ARCH: resnet18\n", "iter": 1000, "epoch": 2,
            "arch": "resnet18", "method": "moco_v2", "optimizer": OPTIMIZER}


def solo_checkpoint(online, ema):
    sd = {**prefixed({k: v for k, v in online.items() if not k.startswith("fc.")}, "backbone."),
          **mlp_head("projector."), **mlp_head("predictor."),
          **prefixed({k: v for k, v in ema.items() if not k.startswith("fc.")}, "momentum_backbone."),
          **mlp_head("momentum_projector."), "classifier.weight": torch.randn(100, 512),
          "classifier.bias": torch.randn(100)}
    return {"epoch": 399, "global_step": 1000, "pytorch-lightning_version": "2.0.2", "state_dict": sd,
            "optimizer_states": [OPTIMIZER], "lr_schedulers": [{"last_epoch": 3}]}


def mmselfsup_checkpoint(online, ema):
    sd = {**prefixed({k: v for k, v in online.items() if not k.startswith("fc.")}, "backbone."),
          **mlp_head("neck.mlp."), "head.predictor.weight": torch.randn(4, 4)}
    return {"meta": {"epoch": 200, "mmcv_version": "1.7.0", "config": "model = dict(type='MoCo')"},
            "state_dict": sd}


def vissl_checkpoint(online, ema):
    trunk = prefixed({k: v for k, v in online.items() if not k.startswith("fc.")}, "_feature_blocks.")
    heads = {"0.clf.0.weight": torch.randn(128, 512), "0.clf.0.bias": torch.randn(128)}
    return {"classy_state_dict": {"base_model": {"model": {"trunk": trunk, "heads": heads}},
                                  "loss": {"queue": torch.randn(10, 4)}},
            "phase_idx": 3, "iteration": 1000, "type": "checkpoint"}


def timm_checkpoint(online, ema):
    return {"epoch": 10, "arch": "resnet18", "state_dict": dict(online), "state_dict_ema": dict(ema),
            "optimizer": OPTIMIZER, "version": 2, "metric": 71.2}


def torchvision_references_checkpoint(online, ema):
    return {"model": dict(online), "model_ema": {**prefixed(ema, "module."), "n_averaged": torch.tensor(10)},
            "optimizer": OPTIMIZER, "epoch": 89}


def d2_pkl_checkpoint(online, ema):
    return {"model": {k: v.numpy() for k, v in d2_names(online).items()}, "__author__": "torchvision",
            "matching_heuristics": True}


def d2_fpn_model_checkpoint(online, ema):
    d2 = {k: v for k, v in d2_names(online).items() if not k.startswith("stem.fc.")}
    model = {**prefixed(d2, "backbone.bottom_up."),
             "backbone.fpn_lateral2.weight": torch.randn(256, 64, 1, 1),
             "roi_heads.box_predictor.cls_score.weight": torch.randn(81, 1024),
             "pixel_mean": torch.zeros(3, 1, 1)}
    return {"model": model, "iteration": 89999, "optimizer": OPTIMIZER}


def d2_c4_model_checkpoint(online, ema):
    d2 = {k: v for k, v in d2_names(online).items() if not k.startswith("stem.fc.")}
    model = {**prefixed({k: v for k, v in d2.items() if not k.startswith("res5.")}, "backbone."),
             **prefixed({k: v for k, v in d2.items() if k.startswith("res5.")}, "roi_heads."),
             "roi_heads.box_predictor.bbox_pred.weight": torch.randn(320, 512)}
    return {"model": model, "iteration": 10}


# name: (builder, file name, write with, convert options, expected layout, converts the EMA model)
LAYOUT_CASES = {
    "torchvision": (lambda o, e: dict(o), "tv.pth", "torch", {}, "torchvision", False),
    "torchvision-ddp": (lambda o, e: prefixed(o, "module."), "tv_ddp.pt", "torch", {}, "torchvision", False),
    "torchvision-references-ema": (torchvision_references_checkpoint, "ref.pth", "torch", {"ema": True}, "torchvision",
                                   True),
    "safetensors": (lambda o, e: {k: v.contiguous() for k, v in o.items()}, "tv.safetensors", "safetensors", {},
                    "torchvision", False),
    "timm": (timm_checkpoint, "model_best.pth.tar", "torch", {}, "timm", False),
    "timm-ema": (timm_checkpoint, "last.pth.tar", "torch", {"ema": True}, "timm", True),
    "moco": (moco_checkpoint, "checkpoint_0199.pth.tar", "torch", {}, "moco", False),
    "moco-key-encoder": (moco_checkpoint, "checkpoint_0199.pth.tar", "torch", {"ema": True}, "moco", True),
    "mocov3": (mocov3_checkpoint, "r-50-1000ep.pth.tar", "torch", {}, "mocov3", False),
    "pycontrast": (pycontrast_checkpoint, "ckpt_epoch_800.pth", "torch", {"trust_pickle": True}, "pycontrast", False),
    "pycontrast-ema": (pycontrast_checkpoint, "ckpt_epoch_800.pth", "torch", {"trust_pickle": True, "ema": True},
                       "pycontrast", True),
    "pretrain": (pretrain_checkpoint, "checkpoint_last.pth", "torch", {}, "pretrain", False),
    "solo-learn": (solo_checkpoint, "byol-400ep.ckpt", "torch", {}, "solo-learn", False),
    "mmselfsup": (mmselfsup_checkpoint, "mocov2_epoch_200.pth", "torch", {}, "mmselfsup", False),
    "vissl": (vissl_checkpoint, "model_final_checkpoint_phase199.torch", "torch", {}, "vissl", False),
    "detectron2-pkl": (d2_pkl_checkpoint, "R-18.pkl", "pickle", {}, "detectron2", False),
    "detectron2-fpn-model": (d2_fpn_model_checkpoint, "model_final.pth", "torch", {}, "detectron2", False),
    "detectron2-c4-model": (d2_c4_model_checkpoint, "model_final_c4.pth", "torch", {}, "detectron2", False),
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


# ----------------------------------------------------------------------------------- state dicts
def tv_state():
    return dict(model("resnet18").state_dict())


def without(prefix):
    return {k: v for k, v in tv_state().items() if not k.startswith(prefix)}


def with_changes(**changes):
    state = tv_state()
    state.update({k.replace("__", "."): v for k, v in changes.items()})
    return state
