"""Config loading: duplicate-key lint, weights meta, modes, scaling; every shipped config loads."""
import glob
import os
import pickle

import numpy as np
import pytest

from transfer.config import (TINY_OVERRIDES, ConfigError, build_config, lint_config_file,
                             scale_to_world_size, get_transfer_cfg)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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


def test_modes_put_syncbn_where_the_protocols_do():
    fpn = os.path.join(REPO, "configs", "transfer", "coco_mask_rcnn_R_50_FPN_1x.yaml")
    c4 = os.path.join(REPO, "configs", "transfer", "voc_faster_rcnn_R_50_C4_24k.yaml")
    cfg = build_config(fpn, [], world_size=8, has_cuda=True)
    assert (cfg.MODEL.RESNETS.NORM, cfg.MODEL.FPN.NORM, cfg.MODEL.ROI_BOX_HEAD.NORM,
            cfg.MODEL.ROI_MASK_HEAD.NORM) == ("SyncBN",) * 4
    assert cfg.MODEL.ROI_BOX_HEAD.NUM_CONV == 4 and cfg.MODEL.ROI_BOX_HEAD.NUM_FC == 1
    assert cfg.TEST.PRECISE_BN.ENABLED
    frozen = build_config(fpn, ["TRANSFER.MODE", "frozen"], world_size=8, has_cuda=True)
    assert frozen.MODEL.RESNETS.NORM == "FrozenBN" and frozen.MODEL.BACKBONE.FREEZE_AT == 5
    voc = build_config(c4, [], world_size=8, has_cuda=True)
    assert voc.MODEL.ROI_HEADS.NAME == "Res5ROIHeadsAnyDepth" and voc.TRANSFER.RES5_EXTRA_NORM
    cpu = build_config(fpn, [], world_size=2, has_cuda=False)
    assert cpu.MODEL.DEVICE == "cpu" and cpu.MODEL.FPN.NORM == "naiveSyncBN_N"
    with pytest.raises(ConfigError, match="FREEZE_AT 2 .* contradicts TRANSFER.MODE frozen"):
        build_config(fpn, ["TRANSFER.MODE", "frozen", "MODEL.BACKBONE.FREEZE_AT", "2"], has_cuda=True)
    with pytest.raises(ConfigError, match="TRANSFER.MODE 'thawed'"):
        build_config(fpn, ["TRANSFER.MODE", "thawed"], has_cuda=True)


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
    from transfer.sweep import SweepError, load_sweep

    bad = _write(tmp_path, "p.yaml", "MOCO:\n  K: 4096\n  T: 0.2\n  K: 65536\n")
    with pytest.raises(PretrainConfigError, match=r"p\.yaml:4: duplicate key 'K'"):
        load_config(bad)
    sweep = _write(tmp_path, "s.yaml", "name: x\nseeds: [0]\nseeds: [1]\n")
    with pytest.raises(SweepError, match=r"s\.yaml:3: duplicate key 'seeds'"):
        load_sweep(sweep)
