"""Damaged datasets against tools/train_net.py: a problem in any file, not only in the checked sample,
is one line naming the file (exit status 2, nothing written) before a model is built; an image that
cannot be decoded is skipped with a warning in training and stops evaluation with one line."""
import json
import os
import re
import shutil

import pytest

from tool_loader import load_tool
from transfer.training.config import TINY_OVERRIDES
from pretrain.common.paths import REPO_ROOT

CONFIGS = os.path.join(REPO_ROOT, "configs", "transfer")


@pytest.fixture()
def damaged_root(synthetic_root, tmp_path):
    """A copy of the synthetic datasets (COCO family and VOC) as the datasets root, to damage."""
    from transfer.data.datasets import set_datasets_root

    root, _ = synthetic_root
    copy = tmp_path / "datasets"
    for sub in ("coco", "lvis", "VOC2007", "VOC2012"):
        shutil.copytree(root / sub, copy / sub)
    set_datasets_root(copy)
    yield copy
    set_datasets_root(root)


def _train_net(capsys, config, out, *opts, argv=()):
    code = load_tool("train_net").main(["--config-file", os.path.join(CONFIGS, config), *argv, *TINY_OVERRIDES,
                                        "SOLVER.MAX_ITER", "3", "OUTPUT_DIR", str(out), *opts])
    return code, capsys.readouterr().err


def _unsampled(name):
    """The image files of dataset ``name`` that the pre-run check does not decode."""
    from detectron2.data import DatasetCatalog

    from transfer.data.validate import dataset_summary

    sample = set(dataset_summary(name)["sample_files"])
    return [d["file_name"] for d in DatasetCatalog.get(name) if d["file_name"] not in sample]


def _edit_json(path, change):
    with open(path) as f:
        data = json.load(f)
    change(data)
    with open(path, "w") as f:
        json.dump(data, f)


def _missing_image(root):
    os.remove(_unsampled("coco_2017_train")[-1])


def _foreign_category(root):
    def change(data):
        data["categories"].append({"supercategory": "myth", "id": 91, "name": "dragon"})
        data["annotations"][-1]["category_id"] = 91
    _edit_json(root / "coco" / "annotations" / "instances_train2017.json", change)


def _category_not_in_file(root):
    def change(data):
        data["annotations"][-1]["category_id"] = 12  # one of COCO's unused ids
    _edit_json(root / "coco" / "annotations" / "instances_train2017.json", change)


def _last_voc_xml(root):
    ids = (root / "VOC2007" / "ImageSets" / "Main" / "trainval.txt").read_text().split()
    return root / "VOC2007" / "Annotations" / f"{ids[-1]}.xml"


def _malformed_xml(root):
    path = _last_voc_xml(root)
    path.write_text(path.read_text()[:-40])


def _unknown_voc_class(root):
    path = _last_voc_xml(root)
    path.write_text(re.sub(r"<name>[a-z]+</name>", "<name>dragon</name>", path.read_text(), count=1))


def _short_keypoints(root):
    def change(data):
        ann = next(a for a in reversed(data["annotations"]) if not a["iscrowd"])
        ann["keypoints"] = ann["keypoints"][:-3]
    _edit_json(root / "coco" / "annotations" / "person_keypoints_train2017.json", change)


def _lvis_without_frequency(root):
    def change(data):
        for cat in data["categories"]:
            del cat["frequency"]
    _edit_json(root / "lvis" / "lvis_v1_val.json", change)


def _coco_val_without_area(root):
    def change(data):
        del data["annotations"][-1]["area"]
    _edit_json(root / "coco" / "annotations" / "instances_val2017.json", change)


CASES = {
    "missing image": ("coco_mask_rcnn_R_50_FPN_1x.yaml", _missing_image, r"image file not found: \S+train2017/\d+\.jpg"),
    "category not builtin": ("coco_mask_rcnn_R_50_FPN_1x.yaml", _foreign_category,
                             r"instances_train2017\.json: category 91 'dragon' is not one of the 80 categories"),
    "category not in file": ("coco_mask_rcnn_R_50_FPN_1x.yaml", _category_not_in_file,
                             r"instances_train2017\.json: annotation \d+ refers to unknown category 12"),
    "malformed VOC xml": ("voc_faster_rcnn_R_50_C4_24k.yaml", _malformed_xml,
                          r"VOC2007/Annotations/\d+\.xml is not valid XML"),
    "unknown VOC class": ("voc_faster_rcnn_R_50_C4_24k.yaml", _unknown_voc_class,
                          r"VOC2007/Annotations/\d+\.xml: unknown VOC class 'dragon'"),
    "keypoints of the wrong length": ("coco_keypoint_rcnn_R_50_FPN_1x.yaml", _short_keypoints,
                                      r"person_keypoints_train2017\.json: annotation \d+ has 16 keypoints, "
                                      r"Detectron2's metadata say 17"),
    "LVIS without frequency": ("lvis_mask_rcnn_R_50_FPN_1x.yaml", _lvis_without_frequency,
                               r"DATASETS.TEST lvis_v1_val \(\S+lvis_v1_val\.json\): 1203 categories .* have no "
                               r"'frequency'"),
    "COCO evaluation without area": ("coco_mask_rcnn_R_50_FPN_1x.yaml", _coco_val_without_area,
                                     r"DATASETS.TEST coco_2017_val .*: 1 annotations have no 'area'"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_damage_anywhere_is_one_line_before_training(damaged_root, tmp_path, capsys, case):
    config, damage, message = CASES[case]
    damage(damaged_root)
    out = tmp_path / "out"
    code, err = _train_net(capsys, config, out)
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("train_net: error: "), err
    assert re.search(message, lines[0]), lines[0]
    assert not out.exists()


@pytest.mark.slow
def test_unreadable_images_skipped_in_training_and_stop_evaluation(damaged_root, tmp_path, capsys):
    """Training skips the truncated JPEGs with a warning naming each; a test image truncated after the
    check (the cached check does not decode it again) stops the evaluation with one line and keeps the
    weights; after replacing it, --resume only evaluates."""
    from detectron2.data import DatasetCatalog

    from transfer.data.validate import dataset_summary

    bad = _unsampled("coco_2017_train")[::2]
    dataset_summary("coco_2017_val")
    test_image = DatasetCatalog.get("coco_2017_val")[-1]["file_name"]
    originals = {}
    for path in [*bad, test_image]:
        with open(path, "rb") as f:
            originals[path] = f.read()
        with open(path, "wb") as f:
            f.write(originals[path][:len(originals[path]) // 2])
    out = tmp_path / "out"
    # a random-init ResNet-18 FPN: the cheapest model of the shipped settings
    opts = ["SEED", "1", "TEST.PRECISE_BN.ENABLED", "False", "MODEL.RESNETS.DEPTH", "18",
            "MODEL.RESNETS.RES2_OUT_CHANNELS", "64"]
    code, err = _train_net(capsys, "coco_mask_rcnn_R_50_FPN_1x.yaml", out, *opts)
    assert code == 2, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"train_net: error: evaluation stopped: unreadable image {test_image} (OSError: image "
                           "file is truncated"), last
    log = (out / "log.txt").read_text()
    skipped = re.findall(r"skipped unreadable training image (\S+) \(OSError: image file is truncated", log)
    assert skipped and set(skipped) <= set(bad), log[-3000:]
    assert (out / "model_final.pth").is_file() and not (out / "results.json").exists()

    with open(test_image, "wb") as f:
        f.write(originals[test_image])
    code, err = _train_net(capsys, "coco_mask_rcnn_R_50_FPN_1x.yaml", out, *opts, argv=["--resume"])
    assert code == 0, err
    with open(out / "results.json") as f:
        assert "AP50" in json.load(f)["metrics"]["bbox"]
