"""Published protocols as data (configs/protocols/), the audit of every shipped config, and the deviations a
run records: the transcription is checked against Detectron2's own files, the frozen mode against
Detectron2's defaults plus Wu et al.'s fields and nothing else."""
import os

import pytest
from detectron2.config import get_cfg

from pretrain.common.paths import REPO_ROOT
from tool_loader import load_tool
from transfer.training.config import build_config, flatten, reference_config, same_value
from transfer.training.protocol import (BOOKKEEPING_KEYS, CONVENTION_KEYS, PROTOCOLS_DIR, ProtocolError,
                                        comparable_values, deviations, describe, expected_config, load_protocol,
                                        protocol_fields, protocol_of, published_settings)
from transfer.training.protocol_audit import audit, audit_table, shipped_configs

CONFIGS = os.path.join(REPO_ROOT, "configs", "transfer")
PROTOCOLS = sorted(f[:-5] for f in os.listdir(PROTOCOLS_DIR) if f.endswith(".yaml"))
MODEL_ZOO = os.path.join(os.path.dirname(os.path.dirname(__import__("detectron2").__file__)), "detectron2",
                         "model_zoo", "configs")
R18_TORCHVISION = {"cfg": {"MODEL.RESNETS.DEPTH": 18, "MODEL.RESNETS.RES2_OUT_CHANNELS": 64,
                           "MODEL.RESNETS.STRIDE_IN_1X1": False, "INPUT.FORMAT": "RGB",
                           "MODEL.PIXEL_MEAN": [123.675, 116.28, 103.53], "MODEL.PIXEL_STD": [58.395, 57.12, 57.375]}}
MSRA_R50 = {"cfg": {"MODEL.RESNETS.DEPTH": 50, "MODEL.RESNETS.STRIDE_IN_1X1": True, "INPUT.FORMAT": "BGR",
                    "MODEL.PIXEL_MEAN": [103.53, 116.28, 123.675], "MODEL.PIXEL_STD": [1.0, 1.0, 1.0]}}


@pytest.fixture(scope="module")
def rows():
    return audit()


@pytest.mark.parametrize("name", PROTOCOLS)
def test_every_setting_resolves_with_a_source_for_every_key(name):
    data = load_protocol(name)
    defaults = set(flatten(get_cfg()))
    for setting in data["settings"]:
        published = published_settings(f"{name}:{setting}")
        assert published and set(published) <= defaults, (setting, set(published) - defaults)
        assert all(e.source for e in published.values())
    for entry in data.get("deviations") or []:
        assert entry["key"] in defaults and entry["why"]
        assert set(entry.get("settings", [])) <= set(data["settings"])
    for convention in (data.get("conventions") or {}).values():
        assert set(convention["keys"]) == set(CONVENTION_KEYS) and convention["source"]


@pytest.mark.skipif(not os.path.isdir(MODEL_ZOO), reason="Detectron2's model-zoo configs are not installed")
def test_detectron2_transcription_matches_the_installed_model_zoo_files():
    for setting in load_protocol("detectron2")["settings"]:
        own = get_cfg()
        own.merge_from_file(os.path.join(MODEL_ZOO, f"{setting}.yaml"))
        own = flatten(own)
        expected = expected_config(f"detectron2:{setting}")
        wrong = {k: (expected[k].value, v) for k, v in own.items()
                 if k != "MODEL.WEIGHTS" and k in expected and not same_value(expected[k].value, v)}
        assert not wrong, (setting, wrong)


WU_SETTINGS = {  # config: Detectron2 model-zoo file Wu et al.'s protocol applies B.5's fields to
    "coco_mask_rcnn_R_50_C4_1x": "COCO-InstanceSegmentation/mask_rcnn_R_50_C4_1x",
    "coco_mask_rcnn_R_50_FPN_1x": "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x",
    "coco_keypoint_rcnn_R_50_FPN_1x": "COCO-Keypoints/keypoint_rcnn_R_50_FPN_1x",
    "voc_faster_rcnn_R_50_C4_24k": "PascalVOC-Detection/faster_rcnn_R_50_C4",
    "lvis_v0.5_mask_rcnn_R_50_FPN_1x": "LVISv0.5-InstanceSegmentation/mask_rcnn_R_50_FPN_1x",
    "lvis_mask_rcnn_R_50_FPN_1x": "LVISv1-InstanceSegmentation/mask_rcnn_R_50_FPN_1x",
    "coco_cascade_mask_rcnn_R_50_FPN_1x": "Misc/cascade_mask_rcnn_R_50_FPN_1x",
}
B5_FIELDS = {"INPUT.FORMAT": "RGB", "MODEL.BACKBONE.FREEZE_AT": 5, "MODEL.PIXEL_MEAN": [123.675, 116.28, 103.53],
             "MODEL.PIXEL_STD": [58.395, 57.12, 57.375], "MODEL.RESNETS.DEPTH": 18,
             "MODEL.RESNETS.RES2_OUT_CHANNELS": 64, "MODEL.RESNETS.STRIDE_IN_1X1": False}


@pytest.mark.skipif(not os.path.isdir(MODEL_ZOO), reason="Detectron2's model-zoo configs are not installed")
@pytest.mark.parametrize("config", sorted(WU_SETTINGS))
def test_frozen_mode_is_detectron2s_default_config_plus_wu_fields_and_nothing_else(config):
    """Independent of configs/protocols/: Detectron2's own file + B.5's fields vs the effective frozen config
    of a ResNet-18 run on 8 GPUs, every key but the bookkeeping ones."""
    theirs = get_cfg()
    theirs.merge_from_file(os.path.join(MODEL_ZOO, f"{WU_SETTINGS[config]}.yaml"))
    theirs = {**flatten(theirs), **B5_FIELDS}
    cfg = reference_config(os.path.join(CONFIGS, f"{config}.yaml"), ["TRANSFER.MODE", "frozen"],
                           weights_meta=R18_TORCHVISION)
    ours = comparable_values(cfg)
    differ = {k: (v, ours[k]) for k, v in theirs.items()
              if k not in BOOKKEEPING_KEYS and not same_value(v, ours[k])}
    assert not differ, differ


def test_every_shipped_config_and_mode_has_only_documented_deviations(rows):
    assert {r.config for r in rows} == {os.path.basename(p)[:-5] for p in shipped_configs()}
    assert len(rows) == 2 * len(shipped_configs())
    undocumented = {(r.config, r.mode): r.undocumented for r in rows if r.undocumented}
    assert not undocumented, undocumented
    claimed = {(r.config, r.mode): r for r in rows if r.protocol}
    # the paper tables the project reproduces each claim their protocol
    for config, mode, ref in [
            ("coco_mask_rcnn_R_50_FPN_1x", "finetune", "infomin:R_50_FPN_1x"),
            ("coco_mask_rcnn_R_50_C4_1x", "frozen", "wu2020:COCO-InstanceSegmentation/mask_rcnn_R_50_C4_1x"),
            ("voc_faster_rcnn_R_50_C4_24k", "finetune", "moco:pascal_voc_R_50_C4_24k"),
            ("voc_faster_rcnn_R_50_C4_24k", "frozen", "wu2020:PascalVOC-Detection/faster_rcnn_R_50_C4"),
            ("coco_keypoint_rcnn_R_50_FPN_2x", "finetune", "moco:keypoint_rcnn_R_50_FPN_2x")]:
        assert claimed[(config, mode)].protocol == ref
    # the documented deviations the shipped configs keep, and no others
    kept = {(r.config, r.mode): sorted(d["key"] for d in r.deviations) for r in rows if r.deviations}
    clip = ["SOLVER.CLIP_GRADIENTS.CLIP_TYPE", "SOLVER.CLIP_GRADIENTS.CLIP_VALUE", "SOLVER.CLIP_GRADIENTS.ENABLED"]
    assert kept == {("coco_cascade_mask_rcnn_R_50_FPN_1x", "finetune"): ["MODEL.RESNETS.DEPTH"],
                    ("coco_keypoint_rcnn_R_50_FPN_1x", "finetune"): clip + ["SOLVER.MAX_ITER", "SOLVER.STEPS",
                                                                            "SOLVER.WARMUP_ITERS"],
                    ("coco_keypoint_rcnn_R_50_FPN_2x", "finetune"): clip + ["SOLVER.WARMUP_ITERS"]}
    text = audit_table(rows)
    assert "NOT DOCUMENTED" not in text and "0 not documented" in text


def test_audit_tool_prints_the_table_and_fails_strictly_on_undocumented_differences(tmp_path, capsys):
    tool = load_tool("audit_protocols")
    voc = os.path.join(CONFIGS, "voc_faster_rcnn_R_50_C4_24k.yaml")
    assert tool.main([voc, "--strict"]) == 0
    out = capsys.readouterr().out
    assert "moco:pascal_voc_R_50_C4_24k" in out and "wu2020:PascalVOC-Detection/faster_rcnn_R_50_C4" in out
    shortened = tmp_path / "voc_short.yaml"
    shortened.write_text(f"_BASE_: {voc}\nSOLVER:\n  MAX_ITER: 1000\n")
    assert tool.main([str(shortened), "--mode", "finetune"]) == 0
    assert tool.main([str(shortened), "--mode", "finetune", "--strict"]) == 1
    out = capsys.readouterr().out
    assert "SOLVER.MAX_ITER: 1000 instead of 24000 [NOT DOCUMENTED] shortened schedule" in out
    with pytest.raises(SystemExit) as stop:
        tool.main([str(tmp_path / "missing.yaml")])
    assert stop.value.code == 2 and "config file not found" in capsys.readouterr().err


def _keys(found):
    return {d["key"]: d for d in found}


def test_deviations_of_real_runs():
    fpn = os.path.join(CONFIGS, "coco_mask_rcnn_R_50_FPN_1x.yaml")
    weights = ["MODEL.WEIGHTS", "moco_v2_R_50.pkl"]  # torchvision convention (the default of the base files)
    tv = {"cfg": {k: v for k, v in R18_TORCHVISION["cfg"].items() if k in CONVENTION_KEYS}}
    assert deviations(build_config(fpn, weights, world_size=8, has_cuda=True, weights_meta=tv)) == []
    # 2 GPUs: the linear scaling rule (documented), one record; the CPU's naiveSyncBN_N is SyncBN
    found = deviations(build_config(fpn, weights, world_size=2, has_cuda=False, weights_meta=tv))
    assert [d["key"] for d in found] == ["SOLVER.IMS_PER_BATCH"] and found[0]["documented"]
    assert "linear scaling rule" in found[0]["why"] and (found[0]["expected"], found[0]["actual"]) == (16, 4)
    # another batch without rescaling, a shortened schedule, another head: not documented
    found = _keys(deviations(build_config(fpn, weights + ["SOLVER.IMS_PER_BATCH", "8", "SOLVER.MAX_ITER", "500",
                                                          "MODEL.ROI_BOX_HEAD.NUM_CONV", "0"],
                                          world_size=8, has_cuda=True, weights_meta=tv)))
    assert set(found) == {"SOLVER.IMS_PER_BATCH", "SOLVER.MAX_ITER", "MODEL.ROI_BOX_HEAD.NUM_CONV"}
    assert "without the linear rescaling" in found["SOLVER.IMS_PER_BATCH"]["why"]
    assert found["SOLVER.MAX_ITER"]["why"] == "shortened schedule" and found["SOLVER.MAX_ITER"]["expected"] == 90000
    assert found["MODEL.ROI_BOX_HEAD.NUM_CONV"]["source"].startswith("PyContrast")
    assert not any(d["documented"] for d in found.values())
    # the supervised baseline (MSRA weights, BGR) follows PyContrast's supervised config: no deviation
    assert deviations(build_config(fpn, ["MODEL.WEIGHTS", "msra.pkl"], world_size=8, has_cuda=True,
                                   weights_meta=MSRA_R50)) == []
    # random initialisation: PyContrast's used the MSRA input convention (documented)
    found = deviations(build_config(fpn, [], world_size=8, has_cuda=True))
    assert sorted(d["key"] for d in found) == sorted(CONVENTION_KEYS) and all(d["documented"] for d in found)


def test_frozen_deviations_and_the_basic_block_head():
    c4 = os.path.join(CONFIGS, "coco_mask_rcnn_R_50_C4_1x.yaml")
    frozen = ["TRANSFER.MODE", "frozen", "MODEL.WEIGHTS", "r18.pkl"]
    cfg = build_config(c4, frozen, world_size=8, has_cuda=True, weights_meta=R18_TORCHVISION)
    assert protocol_fields(cfg) == {"protocol": "wu2020:COCO-InstanceSegmentation/mask_rcnn_R_50_C4_1x",
                                    "deviations": []}
    assert "# deviations: none" in describe(cfg) and "Table 2(e)" in describe(cfg)
    basic = build_config(c4, frozen + ["TRANSFER.RES5_MATCH_BACKBONE", "True"], world_size=8, has_cuda=True,
                         weights_meta=R18_TORCHVISION)
    (found,) = deviations(basic)
    assert found["key"] == "MODEL.ROI_HEADS.NAME" and found["documented"] and found["expected"] == "Res5ROIHeads"
    # a ResNet-50 run in Wu et al.'s protocol is another backbone (not documented)
    r50 = _keys(deviations(build_config(c4, ["TRANSFER.MODE", "frozen"], world_size=8, has_cuda=True)))
    assert set(r50) == {"MODEL.RESNETS.DEPTH", "MODEL.RESNETS.RES2_OUT_CHANNELS"}
    # fine-tuning: no published protocol for LVIS
    lvis = build_config(os.path.join(CONFIGS, "lvis_mask_rcnn_R_50_FPN_1x.yaml"), [], world_size=8, has_cuda=True)
    assert protocol_of(lvis) is None and deviations(lvis) == [] and "none published" in describe(lvis)


def test_bad_claims_are_one_line_errors(tmp_path):
    base = os.path.join(CONFIGS, "coco_mask_rcnn_R_50_FPN_1x.yaml")
    for claim, message in [("infomin", "is not '<protocol>:<setting>'"), ("nosuch:R_50", "no protocol 'nosuch'"),
                           ("infomin:R_99", "has no setting 'R_99'"),
                           ("wu2020:COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x", "is run in mode frozen")]:
        cfg = build_config(base, ["TRANSFER.PROTOCOL.FINETUNE", claim], world_size=8, has_cuda=True)
        with pytest.raises(ProtocolError, match=message):
            deviations(cfg)
