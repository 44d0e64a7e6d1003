"""transfer.data.datasets and transfer.data.validate: builtin names under a root, validation naming the
broken file, custom COCO data."""
import json
import os
import shutil

import pytest

from transfer.data.datasets import DatasetError, register_coco_dataset, register_from_config, set_datasets_root
from transfer.data.validate import validate_dataset


def test_builtin_names_resolve_under_the_root(synthetic_root):
    root, counts = synthetic_root
    from detectron2.data import DatasetCatalog, MetadataCatalog

    assert MetadataCatalog.get("coco_2017_val").json_file == os.path.join(
        str(root), "coco", "annotations", "instances_val2017.json")
    assert validate_dataset("coco_2017_val") == counts["coco"]["val2017"]["images"]
    assert validate_dataset("voc_2007_test") == counts["voc"]["VOC2007"]["test"]["images"]
    assert validate_dataset("lvis_v1_val") == counts["lvis"]["val"]["images"]
    assert validate_dataset("keypoints_coco_2017_val") == counts["keypoints"]["val2017"]["images"]
    assert len(DatasetCatalog.get("voc_2012_trainval")) == counts["voc"]["VOC2012"]["trainval"]["images"]


def test_changing_the_root_after_import_reregisters(synthetic_root, tmp_path):
    root, _ = synthetic_root
    from detectron2.data import MetadataCatalog

    try:
        set_datasets_root(tmp_path)
        assert MetadataCatalog.get("coco_2017_val").json_file.startswith(str(tmp_path))
        with pytest.raises(DatasetError, match=r"annotation file not found: .*instances_val2017\.json"):
            validate_dataset("coco_2017_val")
    finally:
        set_datasets_root(root)
    assert MetadataCatalog.get("coco_2017_val").json_file.startswith(str(root))


@pytest.fixture()
def broken_root(synthetic_root, tmp_path):
    root, _ = synthetic_root
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    set_datasets_root(copy)
    yield copy
    set_datasets_root(root)


def test_missing_image_is_named(broken_root):
    with open(broken_root / "coco" / "annotations" / "instances_val2017.json") as f:
        images = json.load(f)["images"]
    for img in images:
        os.remove(broken_root / "coco" / "val2017" / img["file_name"])
    with pytest.raises(DatasetError, match=r"image file not found: .*val2017.*\.jpg"):
        validate_dataset("coco_2017_val")


def test_broken_voc_layout_is_named(broken_root):
    os.remove(broken_root / "VOC2007" / "ImageSets" / "Main" / "test.txt")
    with pytest.raises(DatasetError, match=r"VOC split file not found: .*VOC2007/ImageSets/Main/test\.txt"):
        validate_dataset("voc_2007_test")
    split = (broken_root / "VOC2012" / "ImageSets" / "Main" / "val.txt")
    first = split.read_text().split()[0]
    os.remove(broken_root / "VOC2012" / "Annotations" / f"{first}.xml")
    split.write_text(first + "\n" + first + "\n")
    with pytest.raises(DatasetError, match=rf"VOC annotation file not found: .*{first}\.xml"):
        validate_dataset("voc_2012_val")


def test_malformed_annotation_file_is_named(broken_root):
    path = broken_root / "lvis" / "lvis_v1_val.json"
    path.write_text("{not json")
    with pytest.raises(DatasetError, match=r"lvis_v1_val\.json is not valid JSON"):
        validate_dataset("lvis_v1_val")
    path.write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    with pytest.raises(DatasetError, match="lists no images"):
        validate_dataset("lvis_v1_val")


def test_unknown_dataset_name():
    with pytest.raises(DatasetError, match="unknown dataset 'coco_2099_val'"):
        validate_dataset("coco_2099_val")


def test_custom_coco_dataset_from_config(synthetic_root):
    root, counts = synthetic_root
    from detectron2.data import DatasetCatalog, MetadataCatalog

    json_file = os.path.join(str(root), "coco", "annotations", "instances_train2017.json")
    image_root = os.path.join(str(root), "coco", "train2017")
    register_from_config([["my_shapes_train", json_file, image_root]])
    register_from_config([["my_shapes_train", json_file, image_root]])  # same files again: fine
    assert validate_dataset("my_shapes_train") == counts["coco"]["train2017"]["images"]
    assert MetadataCatalog.get("my_shapes_train").evaluator_type == "coco"
    assert len(DatasetCatalog.get("my_shapes_train")) > 0
    with pytest.raises(DatasetError, match="already registered with other files"):
        register_coco_dataset("my_shapes_train", json_file, str(root))
    with pytest.raises(DatasetError, match=r"must be \[name, json_file, image_root\]"):
        register_from_config([["only_a_name"]])
