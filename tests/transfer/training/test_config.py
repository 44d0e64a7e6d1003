"""Config loading: duplicate-key lint, weights meta, modes and their blocks, scaling, the printed effective
config; every shipped config loads in both modes with the published schedule of that mode."""
import glob
import os
import pickle

import numpy as np
import pytest

from transfer.training.config import (TINY_OVERRIDES, ConfigError, build_config, effective_config_text,
                                      get_transfer_cfg, lint_config_file, reference_config, scale_to_world_size)
from pretrain.common.paths import REPO_ROOT

REPO = REPO_ROOT
CONFIGS = sorted(glob.glob(os.path.join(REPO, "configs", "transfer", "*.yaml")))
TASKS = [c for c in CONFIGS if not os.path.basename(c).startswith("Base-")]
REQUIRED = [f"coco_mask_rcnn_R_50_FPN_{s}" for s in ("1x", "2x", "6x")] + \
    [f"coco_mask_rcnn_R_50_C4_{s}" for s in ("1x", "2x")] + \
    [f"coco_mask_rcnn_R_101_FPN_{s}" for s in ("1x", "2x", "6x")] + \
    [f"coco_mask_rcnn_R_101_C4_{s}" for s in ("1x", "2x")] + \
    [f"coco_mask_rcnn_X_101_32x8d_FPN_{s}" for s in ("1x", "2x")] + ["coco_mask_rcnn_X_152_32x8d_FPN_1x"] + \
    ["coco_cascade_mask_rcnn_R_50_FPN_1x"] + [f"coco_cascade_mask_rcnn_R_101_FPN_{s}" for s in ("1x", "2x", "6x")] + \
    [f"coco_keypoint_rcnn_R_50_FPN_{s}" for s in ("1x", "2x")] + \
    ["voc_faster_rcnn_R_50_C4_24k", "lvis_mask_rcnn_R_50_FPN_1x"]


def test_every_required_setting_ships():
    names = {os.path.splitext(os.path.basename(c))[0] for c in TASKS}
    assert set(REQUIRED) <= names


@pytest.mark.parametrize("path", TASKS, ids=os.path.basename)
def test_shipped_config_loads_and_cites_its_source(path):
    with open(path) as f:
        text = f.read()
    comment = "".join(line for line in text.splitlines(keepends=True) if line.startswith("#"))
    assert text.startswith("#") and ("Table" in comment or "protocol" in comment)
    assert "finetune" in comment and "frozen" in comment and "deviation" in comment.lower()  # modes, deviations
    for mode in ("finetune", "frozen"):
        cfg = build_config(path, ["TRANSFER.MODE", mode], world_size=8, has_cuda=True)
        assert cfg.SOLVER.IMS_PER_BATCH == 16 and cfg.INPUT.FORMAT == "RGB"
        assert cfg.MODEL.BACKBONE.FREEZE_AT == (0 if mode == "finetune" else 5)


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_duplicate_key_is_refused_with_file_and_line(tmp_path):
    base = _write(tmp_path, "base.yaml", "SOLVER:\n  BASE_LR: 0.02\n  MAX_ITER: 10\n  BASE_LR: 0.1\n")
    child = _write(tmp_path, "child.yaml", "_BASE_: base.yaml\nMODEL:\n  MASK_ON: True\n")
    with pytest.raises(ConfigError, match=r"base\.yaml:4: duplicate key 'BASE_LR' \(first at line 2\)"):
        lint_config_file(child)
    with pytest.raises(ConfigError, match="duplicate key 'MODEL'"):
        lint_config_file(_write(tmp_path, "top.yaml", "MODEL:\n  MASK_ON: True\nMODEL:\n  DEVICE: cpu\n"))


def test_missing_base_file_is_named(tmp_path):
    child = _write(tmp_path, "child.yaml", "_BASE_: nowhere.yaml\n")
    with pytest.raises(ConfigError, match="config file not found: .*nowhere.yaml"):
        lint_config_file(child)


def _weights(tmp_path, depth=18, fmt="RGB"):
    meta_cfg = {"MODEL.RESNETS.DEPTH": depth, "MODEL.RESNETS.RES2_OUT_CHANNELS": 64 if depth < 50 else 256,
                "MODEL.RESNETS.STRIDE_IN_1X1": False, "INPUT.FORMAT": fmt,
                "MODEL.PIXEL_MEAN": [123.675, 116.28, 103.53], "MODEL.PIXEL_STD": [58.395, 57.12, 57.375]}
    path = tmp_path / "r18.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": {"stem.conv1.weight": np.zeros((64, 3, 7, 7), np.float32)},
                     "__author__": "test", "matching_heuristics": True, "meta": {"cfg": meta_cfg}}, f)
    return str(path)


def test_weights_meta_is_applied_and_contradictions_refused(tmp_path):
    cfg_file = os.path.join(REPO, "configs", "transfer", "coco_mask_rcnn_R_50_FPN_1x.yaml")
    weights = _weights(tmp_path)
    cfg = build_config(cfg_file, ["MODEL.WEIGHTS", weights], has_cuda=False)
    assert cfg.MODEL.RESNETS.DEPTH == 18 and cfg.MODEL.RESNETS.RES2_OUT_CHANNELS == 64
    with pytest.raises(ConfigError, match=r"MODEL.RESNETS.DEPTH 50 .* contradicts 18 required by the weights"):
        build_config(cfg_file, ["MODEL.WEIGHTS", weights, "MODEL.RESNETS.DEPTH", "50"], has_cuda=False)
    with pytest.raises(ConfigError, match="MODEL.PIXEL_MEAN .*103.53.*contradicts"):
        build_config(cfg_file, ["MODEL.WEIGHTS", weights, "MODEL.PIXEL_MEAN", "[103.53, 116.28, 123.675]"],
                     has_cuda=False)
    # agreeing with the meta is fine
    build_config(cfg_file, ["MODEL.WEIGHTS", weights, "MODEL.RESNETS.DEPTH", "18"], has_cuda=False)


@pytest.mark.parametrize("key, value", [("MODEL.WEIGHTS", "/tmp/evil.pkl"), ("OUTPUT_DIR", "/tmp/elsewhere"),
                                        ("SOLVER.BASE_LR", 10.0)])
def test_weights_meta_may_set_only_architecture_and_pixel_format(tmp_path, key, value):
    cfg_file = os.path.join(REPO, "configs", "transfer", "coco_mask_rcnn_R_50_FPN_1x.yaml")
    weights = _weights(tmp_path)
    with open(weights, "rb") as f:
        data = pickle.load(f)
    data["meta"]["cfg"][key] = value
    with open(weights, "wb") as f:
        pickle.dump(data, f)
    with pytest.raises(ConfigError, match=f"meta\\['cfg'\\] may set only .*not {key}") as e:
        build_config(cfg_file, ["MODEL.WEIGHTS", weights], has_cuda=False)
    assert "\n" not in str(e.value)


def test_converted_weights_meta_passes_the_key_check(tmp_path):
    """What the converter writes is exactly what the config accepts (both directions of the contract)."""
    import torchvision

    from transfer.conversion.convert import convert

    torch_state = torchvision.models.resnet18().state_dict()
    import torch

    torch.save(torch_state, tmp_path / "tv.pth")
    convert(str(tmp_path / "tv.pth"), str(tmp_path / "r18.pkl"), verify=False)
    cfg_file = os.path.join(REPO, "configs", "transfer", "coco_mask_rcnn_R_50_FPN_1x.yaml")
    cfg = build_config(cfg_file, ["MODEL.WEIGHTS", str(tmp_path / "r18.pkl")], has_cuda=False)
    assert cfg.MODEL.RESNETS.DEPTH == 18 and cfg.INPUT.FORMAT == "RGB"


def test_modes_put_syncbn_where_the_protocols_do():
    fpn = os.path.join(REPO, "configs", "transfer", "coco_mask_rcnn_R_50_FPN_1x.yaml")
    c4 = os.path.join(REPO, "configs", "transfer", "voc_faster_rcnn_R_50_C4_24k.yaml")
    # InfoMin (PyContrast R_50_FPN_1x.yaml): SyncBN in backbone, FPN, 4conv1fc box head and mask head
    cfg = build_config(fpn, [], world_size=8, has_cuda=True)
    assert (cfg.MODEL.RESNETS.NORM, cfg.MODEL.FPN.NORM, cfg.MODEL.ROI_BOX_HEAD.NORM,
            cfg.MODEL.ROI_MASK_HEAD.NORM) == ("SyncBN",) * 4
    assert cfg.MODEL.ROI_BOX_HEAD.NUM_CONV == 4 and cfg.MODEL.ROI_BOX_HEAD.NUM_FC == 1
    assert cfg.TEST.PRECISE_BN.ENABLED and cfg.MODEL.BACKBONE.FREEZE_AT == 0
    # Wu et al. B.5: Detectron2's defaults (2fc box head, no norm outside the frozen backbone)
    frozen = build_config(fpn, ["TRANSFER.MODE", "frozen"], world_size=8, has_cuda=True)
    assert frozen.MODEL.RESNETS.NORM == "FrozenBN" and frozen.MODEL.BACKBONE.FREEZE_AT == 5
    assert (frozen.MODEL.FPN.NORM, frozen.MODEL.ROI_BOX_HEAD.NORM, frozen.MODEL.ROI_MASK_HEAD.NORM) == ("",) * 3
    assert frozen.MODEL.ROI_BOX_HEAD.NUM_CONV == 0 and frozen.MODEL.ROI_BOX_HEAD.NUM_FC == 2
    assert not frozen.TEST.PRECISE_BN.ENABLED
    # MoCo's VOC: naiveSyncBN in the backbone and the norm after res5 (Res5ROIHeadsExtraNorm)
    voc = build_config(c4, [], world_size=8, has_cuda=True)
    assert voc.MODEL.ROI_HEADS.NAME == "Res5ROIHeadsAnyDepth" and voc.TRANSFER.RES5_EXTRA_NORM
    assert voc.MODEL.RESNETS.NORM == "naiveSyncBN" and voc.TEST.PRECISE_BN.ENABLED
    voc_frozen = build_config(c4, ["TRANSFER.MODE", "frozen"], world_size=8, has_cuda=True)
    assert not voc_frozen.TRANSFER.RES5_EXTRA_NORM and not voc_frozen.TRANSFER.RES5_MATCH_BACKBONE
    assert voc_frozen.MODEL.RESNETS.NORM == "FrozenBN"
    cpu = build_config(fpn, [], world_size=2, has_cuda=False)
    assert cpu.MODEL.DEVICE == "cpu" and cpu.MODEL.FPN.NORM == "naiveSyncBN_N"
    assert build_config(c4, [], world_size=2, has_cuda=False).MODEL.RESNETS.NORM == "naiveSyncBN"
    with pytest.raises(ConfigError, match="FREEZE_AT 2 .* contradicts TRANSFER.MODE frozen"):
        build_config(fpn, ["TRANSFER.MODE", "frozen", "MODEL.BACKBONE.FREEZE_AT", "2"], has_cuda=True)
    with pytest.raises(ConfigError, match="TRANSFER.MODE 'thawed'"):
        build_config(fpn, ["TRANSFER.MODE", "thawed"], has_cuda=True)


def test_keypoint_and_c4_mask_heads_follow_their_protocols():
    keypoint = os.path.join(REPO, "configs", "transfer", "coco_keypoint_rcnn_R_50_FPN_1x.yaml")
    # MoCo (issue 34): SyncBN in backbone and FPN only, Detectron2's standard 2fc box head without norm
    cfg = build_config(keypoint, [], world_size=8, has_cuda=True)
    assert (cfg.MODEL.RESNETS.NORM, cfg.MODEL.FPN.NORM) == ("SyncBN", "SyncBN")
    assert (cfg.MODEL.ROI_BOX_HEAD.NUM_CONV, cfg.MODEL.ROI_BOX_HEAD.NUM_FC, cfg.MODEL.ROI_BOX_HEAD.NORM) == (0, 2, "")
    assert cfg.MODEL.ROI_KEYPOINT_HEAD.NAME == "KRCNNConvDeconvUpsampleHead"
    # the C4 mask head has no conv layer: no norm is set on it (InfoMin's R_50_C4_1x.yaml sets none)
    c4 = build_config(os.path.join(REPO, "configs", "transfer", "coco_mask_rcnn_R_50_C4_1x.yaml"), [],
                      world_size=8, has_cuda=True)
    assert c4.MODEL.ROI_MASK_HEAD.NORM == "" and c4.MODEL.RESNETS.NORM == "SyncBN" and c4.TRANSFER.RES5_EXTRA_NORM


SCHEDULES = {  # config: {mode: (MAX_ITER, STEPS, WARMUP_ITERS, gradient clipping)}
    "lvis_mask_rcnn_R_50_FPN_1x": {m: (180000, (120000, 160000), 1000, False) for m in ("finetune", "frozen")},
    "lvis_v0.5_mask_rcnn_R_50_FPN_1x": {m: (90000, (60000, 80000), 1000, False) for m in ("finetune", "frozen")},
    "voc_faster_rcnn_R_50_C4_24k": {"finetune": (24000, (18000, 22000), 100, False),
                                    "frozen": (18000, (12000, 16000), 100, False)},
    "coco_keypoint_rcnn_R_50_FPN_1x": {"finetune": (90000, (60000, 80000), 2000, True),
                                       "frozen": (90000, (60000, 80000), 1000, False)},
    "coco_keypoint_rcnn_R_50_FPN_2x": {"finetune": (180000, (120000, 160000), 2000, True)},
}


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_each_mode_gets_its_published_schedule(name):
    path = os.path.join(REPO, "configs", "transfer", f"{name}.yaml")
    for mode, (iters, steps, warmup, clip) in SCHEDULES[name].items():
        solver = build_config(path, ["TRANSFER.MODE", mode], world_size=8, has_cuda=True).SOLVER
        assert (solver.MAX_ITER, solver.STEPS, solver.WARMUP_ITERS, solver.CLIP_GRADIENTS.ENABLED) == \
            (iters, steps, warmup, clip), (name, mode)


def test_mode_blocks_are_checked_and_sit_under_the_command_line_and_the_weights(tmp_path):
    base = os.path.join(REPO, "configs", "transfer", "Base-RCNN-C4.yaml")
    good = _write(tmp_path, "good.yaml", f"_BASE_: {base}\nTRANSFER:\n  FROZEN:\n    SOLVER:\n"
                                          "      MAX_ITER: 7\n      STEPS: (3, 5)\n    MODEL:\n      RESNETS:\n"
                                          "        DEPTH: 101\n")
    frozen = build_config(good, ["TRANSFER.MODE", "frozen"], world_size=8, has_cuda=False)
    assert frozen.SOLVER.MAX_ITER == 7 and frozen.SOLVER.STEPS == (3, 5) and frozen.MODEL.RESNETS.DEPTH == 101
    assert build_config(good, [], world_size=8, has_cuda=False).SOLVER.MAX_ITER == 90000  # the finetune mode ignores it
    cli = build_config(good, ["TRANSFER.MODE", "frozen", "SOLVER.MAX_ITER", "9"], world_size=8, has_cuda=False)
    assert cli.SOLVER.MAX_ITER == 9
    weights = _weights(tmp_path)  # ResNet-18: the weights' meta wins over the block's depth
    assert build_config(good, ["TRANSFER.MODE", "frozen", "MODEL.WEIGHTS", weights],
                        world_size=8, has_cuda=False).MODEL.RESNETS.DEPTH == 18
    bad = _write(tmp_path, "bad.yaml", f"_BASE_: {base}\nTRANSFER:\n  FINETUNE:\n    SOLVER:\n      MAX_ITERS: 7\n")
    with pytest.raises(ConfigError, match="TRANSFER.FINETUNE: .*MAX_ITERS"):
        build_config(bad, [], world_size=8, has_cuda=False)
    loop = _write(tmp_path, "loop.yaml", f"_BASE_: {base}\nTRANSFER:\n  FINETUNE:\n    TRANSFER:\n      MODE: frozen\n")
    with pytest.raises(ConfigError, match="cannot set TRANSFER.MODE"):
        build_config(loop, [], world_size=8, has_cuda=False)


def test_printed_effective_config_for_the_given_or_the_reference_hardware():
    fpn = os.path.join(REPO, "configs", "transfer", "coco_mask_rcnn_R_50_FPN_1x.yaml")
    import yaml

    text = effective_config_text(fpn, ["TRANSFER.MODE", "frozen"], world_size=2, has_cuda=False)
    assert text.startswith("# effective config of ") and "2 processes on the CPU" in text.splitlines()[0]
    cfg = yaml.safe_load(text)
    assert cfg["SOLVER"]["IMS_PER_BATCH"] == 4 and cfg["SOLVER"]["MAX_ITER"] == 360000
    assert cfg["MODEL"]["DEVICE"] == "cpu" and cfg["TRANSFER"]["MODE"] == "frozen"
    ref = yaml.safe_load(effective_config_text(fpn, [], world_size=2, reference=True))
    assert ref["SOLVER"]["IMS_PER_BATCH"] == 16 and ref["SOLVER"]["MAX_ITER"] == 90000
    assert ref["MODEL"]["FPN"]["NORM"] == "SyncBN" and ref["MODEL"]["DEVICE"] == "cuda"
    assert reference_config(fpn).SOLVER.REFERENCE_WORLD_SIZE == 8


def test_linear_scaling_rule():
    cfg = get_transfer_cfg()
    cfg.SOLVER.update(IMS_PER_BATCH=16, BASE_LR=0.02, MAX_ITER=90000, STEPS=(60000, 80000),
                      WARMUP_ITERS=1000, REFERENCE_WORLD_SIZE=8, CHECKPOINT_PERIOD=5000)
    scale_to_world_size(cfg, 2)
    assert cfg.SOLVER.IMS_PER_BATCH == 4 and cfg.SOLVER.MAX_ITER == 360000
    assert cfg.SOLVER.STEPS == (240000, 320000) and abs(cfg.SOLVER.BASE_LR - 0.005) < 1e-12
    assert cfg.SOLVER.REFERENCE_WORLD_SIZE == 2
    cfg.SOLVER.REFERENCE_WORLD_SIZE = 8
    with pytest.raises(ConfigError, match="cannot be scaled to 3 processes"):
        scale_to_world_size(cfg, 3)


def test_bad_overrides_are_one_line_errors():
    fpn = os.path.join(REPO, "configs", "transfer", "coco_mask_rcnn_R_50_FPN_1x.yaml")
    with pytest.raises(ConfigError, match="KEY VALUE pairs"):
        build_config(fpn, ["SOLVER.MAX_ITER"], has_cuda=False)
    with pytest.raises(Exception, match="NO_SUCH_KEY"):
        build_config(fpn, ["SOLVER.NO_SUCH_KEY", "1"], has_cuda=False)


def test_tiny_overrides_are_valid_keys():
    fpn = os.path.join(REPO, "configs", "transfer", "coco_keypoint_rcnn_R_50_FPN_1x.yaml")
    cfg = build_config(fpn, TINY_OVERRIDES, has_cuda=False)
    assert cfg.SOLVER.IMS_PER_BATCH == 2 and cfg.INPUT.MIN_SIZE_TRAIN == (128,)


def test_pretrain_configs_and_sweeps_refuse_duplicate_keys_too(tmp_path):
    from pretrain.config import ConfigError as PretrainConfigError
    from pretrain.config import load_config
    from transfer.launch.sweep_file import SweepError, load_sweep

    bad = _write(tmp_path, "p.yaml", "MOCO:\n  K: 4096\n  T: 0.2\n  K: 65536\n")
    with pytest.raises(PretrainConfigError, match=r"p\.yaml:4: duplicate key 'K'"):
        load_config(bad)
    sweep = _write(tmp_path, "s.yaml", "name: x\nseeds: [0]\nseeds: [1]\n")
    with pytest.raises(SweepError, match=r"s\.yaml:3: duplicate key 'seeds'"):
        load_sweep(sweep)


def _caffe2_r50(tmp_path):
    """A ResNet-50 under Detectron2's MSRA Caffe2 blob names (ImageNetPretrained/MSRA/R-50.pkl layout)."""
    import torchvision

    blobs = {}
    for key, value in torchvision.models.resnet50().state_dict().items():
        if key.startswith("fc.") or "running" in key or key.endswith("num_batches_tracked"):
            continue
        if key == "conv1.weight":
            blobs["conv1_w"] = value.numpy()
            continue
        if key.startswith("bn1."):
            blobs["res_conv1_bn_" + {"weight": "s", "bias": "b"}[key[4:]]] = value.numpy()
            continue
        layer, block, rest = key.split(".", 2)
        part, param = rest.rsplit(".", 1)
        branch = {"conv1": "branch2a", "conv2": "branch2b", "conv3": "branch2c", "bn1": "branch2a_bn",
                  "bn2": "branch2b_bn", "bn3": "branch2c_bn", "downsample.0": "branch1",
                  "downsample.1": "branch1_bn"}[part]
        suffix = ("s" if param == "weight" else "b") if branch.endswith("_bn") else "w"
        blobs[f"res{int(layer[5]) + 1}_{block}_{branch}_{suffix}"] = value.numpy()
    path = tmp_path / "R-50.pkl"
    with open(path, "wb") as f:
        pickle.dump({"blobs": blobs}, f)
    return str(path)


def test_msra_caffe2_weights_bring_their_bgr_convention_into_the_config(tmp_path):
    """The papers' supervised baseline: Detectron2's MSRA R-50 (Caffe2 layout) converted; its meta sets BGR,
    Caffe2 mean, std 1 and the stride in the 1x1 conv, and the run's config applies them."""
    from transfer.conversion.convert import convert

    out = str(tmp_path / "msra_R_50.pkl")
    convert(_caffe2_r50(tmp_path), out, verify=False)
    with open(out, "rb") as f:
        meta_cfg = pickle.load(f)["meta"]["cfg"]
    expected = {"INPUT.FORMAT": "BGR", "MODEL.PIXEL_MEAN": [103.53, 116.28, 123.675],
                "MODEL.PIXEL_STD": [1.0, 1.0, 1.0], "MODEL.RESNETS.STRIDE_IN_1X1": True}
    assert {k: meta_cfg[k] for k in expected} == expected and meta_cfg["MODEL.RESNETS.DEPTH"] == 50
    fpn = os.path.join(REPO, "configs", "transfer", "coco_mask_rcnn_R_50_FPN_1x.yaml")
    cfg = build_config(fpn, ["MODEL.WEIGHTS", out], world_size=8, has_cuda=True)
    assert cfg.INPUT.FORMAT == "BGR" and list(cfg.MODEL.PIXEL_MEAN) == expected["MODEL.PIXEL_MEAN"]
    assert list(cfg.MODEL.PIXEL_STD) == [1.0, 1.0, 1.0] and cfg.MODEL.RESNETS.STRIDE_IN_1X1 is True
    with pytest.raises(ConfigError, match="INPUT.FORMAT 'RGB' on the command line contradicts 'BGR'"):
        build_config(fpn, ["MODEL.WEIGHTS", out, "INPUT.FORMAT", "RGB"], has_cuda=False)
