"""transfer.data.synthetic and tools/make_synthetic_data.py: the output is read by the real readers.

Every check goes through an independent reader: Detectron2's builtin dataset loaders (after
``set_datasets_root``), pycocotools, the ``lvis`` API and its evaluator, torchvision's ImageFolder,
and plain XML / PIL for VOC.
"""
import contextlib
import io
import json
import os
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from PIL import Image

import transfer  # noqa: F401  (compatibility fixes before Detectron2 / lvis are imported)
from transfer.data.datasets import set_datasets_root
from transfer.data.synthetic import KINDS, SyntheticDataError, write_synthetic

NUM_IMAGES = 12  # train splits: 12 images (ImageNet: per class); val/test splits: 3


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("synthetic"))
    counts = write_synthetic(root, num_images=NUM_IMAGES, seed=0, image_size=128)
    return root, counts


def _d2_dicts(root, name):
    from detectron2.data import DatasetCatalog

    set_datasets_root(root)
    return DatasetCatalog.get(name)


def _coco(path):
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(path)


def _mask_box(mask):
    ys, xs = np.nonzero(mask)
    return [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]  # continuous x0, y0, x1, y1


def _check_images(dicts):
    """Detectron2 reads every image and finds the size the annotation file states."""
    from detectron2.data import detection_utils

    for d in dicts:
        image = detection_utils.read_image(d["file_name"], format="RGB")
        detection_utils.check_image_size(d, image)


# ---------------------------------------------------------------------------------------- COCO

def test_coco_loads_through_detectron2_and_pycocotools(written):
    root, counts = written
    for split, name in (("val2017", "coco_2017_val"), ("train2017", "coco_2017_train")):
        expected = counts["coco"][split]
        dicts = _d2_dicts(root, name)
        annotations = [a for d in dicts for a in d["annotations"]]
        assert len(dicts) == expected["images"]
        assert len(annotations) == expected["annotations"]
        assert sum(a["iscrowd"] for a in annotations) == expected["crowd"]
        assert sum(not d["annotations"] for d in dicts) == expected["empty_images"]
        coco = _coco(os.path.join(root, "coco", "annotations", f"instances_{split}.json"))
        assert len(coco.getImgIds()) == expected["images"] and len(coco.getAnnIds()) == expected["annotations"]
        for image_id, img in coco.imgs.items():
            assert img["file_name"] == f"{image_id:012d}.jpg"
    _check_images(_d2_dicts(root, "coco_2017_val"))
    # crowd regions occur (over both splits), and some images show no object
    assert counts["coco"]["train2017"]["crowd"] + counts["coco"]["val2017"]["crowd"] > 0
    assert counts["coco"]["train2017"]["empty_images"] > 0


def test_coco_categories_are_the_real_80(written):
    from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES

    root, _ = written
    with open(os.path.join(root, "coco", "annotations", "instances_val2017.json")) as f:
        data = json.load(f)
    real = [(c["id"], c["name"]) for c in COCO_CATEGORIES if c["isthing"]]
    assert [(c["id"], c["name"]) for c in data["categories"]] == real
    assert len(real) == 80 and all(c["supercategory"] for c in data["categories"])
    for key in ("info", "licenses", "images", "annotations"):
        assert key in data


def test_coco_masks_decode_and_agree_with_boxes(written):
    from pycocotools import mask as mask_util

    root, _ = written
    kinds_seen = set()
    for split in ("train2017", "val2017"):
        coco = _coco(os.path.join(root, "coco", "annotations", f"instances_{split}.json"))
        for ann in coco.loadAnns(coco.getAnnIds()):
            img = coco.imgs[ann["image_id"]]
            h, w = img["height"], img["width"]
            mask = coco.annToMask(ann)
            assert mask.shape == (h, w)
            assert ann["area"] == pytest.approx(mask.sum())
            x, y, bw, bh = ann["bbox"]
            if ann["iscrowd"]:
                seg = ann["segmentation"]
                assert isinstance(seg["counts"], list) and seg["size"] == [h, w]  # uncompressed RLE
                rle = mask_util.frPyObjects(seg, h, w)
                assert np.array_equal(mask_util.decode(rle), mask)
                assert list(mask_util.toBbox(rle)) == pytest.approx(ann["bbox"])
                assert sum(seg["counts"]) == h * w
                kinds_seen.add("rle")
            else:
                assert all(len(p) % 2 == 0 and len(p) >= 6 for p in ann["segmentation"])
                xs, ys = np.concatenate([p[0::2] for p in ann["segmentation"]]), \
                    np.concatenate([p[1::2] for p in ann["segmentation"]])
                assert [xs.min(), ys.min(), xs.max() - xs.min(), ys.max() - ys.min()] == pytest.approx(
                    ann["bbox"], abs=0.011)  # the tight box of the polygons
                assert _mask_box(mask) == pytest.approx([x, y, x + bw, y + bh], abs=2.0)  # sharp tips
                kinds_seen.add("polygon")
            assert 0 <= x and 0 <= y and x + bw <= w and y + bh <= h
    assert kinds_seen == {"rle", "polygon"}


def _mask_colours(root, split, coco):
    X, y = [], []
    for ann in coco.loadAnns(coco.getAnnIds()):
        img = coco.imgs[ann["image_id"]]
        pixels = np.asarray(Image.open(os.path.join(root, "coco", split, img["file_name"])).convert("RGB"))
        X.append(pixels[coco.annToMask(ann).astype(bool)].mean(0))
        y.append(ann["category_id"])
    return np.array(X), np.array(y)


def test_objects_are_drawn_where_annotated_with_a_colour_per_class(written):
    """Mean colour under each val mask is nearest to its own category's mean over train."""
    root, _ = written
    X_train, y_train = _mask_colours(root, "train2017", _coco(
        os.path.join(root, "coco", "annotations", "instances_train2017.json")))
    X_val, y_val = _mask_colours(root, "val2017", _coco(
        os.path.join(root, "coco", "annotations", "instances_val2017.json")))
    categories = sorted(set(y_train))
    assert len(categories) >= 5 and set(y_val) <= set(categories)
    centroids = np.stack([X_train[y_train == c].mean(0) for c in categories])
    predicted = np.array(categories)[((X_val[:, None] - centroids[None]) ** 2).sum(-1).argmin(1)]
    assert (predicted == y_val).mean() >= 0.9


def test_random_object_colours_leave_colour_no_clue_to_the_class(tmp_path):
    """object_colours="random": the masks still hold their objects, but the colour-centroid classifier that
    the class colours make near-perfect (test above) falls towards chance, and one class shows many hues."""
    root = str(tmp_path)
    counts = write_synthetic(root, kinds=("coco",), num_images=NUM_IMAGES, seed=0, image_size=128,
                             object_colours="random")
    with open(os.path.join(root, "SYNTHETIC.json")) as f:
        assert json.load(f)["object_colours"] == "random"
    coco = {split: _coco(os.path.join(root, "coco", "annotations", f"instances_{split}.json"))
            for split in ("train2017", "val2017")}
    assert counts["coco"]["train2017"]["annotations"] == len(coco["train2017"].getAnnIds())
    X_train, y_train = _mask_colours(root, "train2017", coco["train2017"])
    X_val, y_val = _mask_colours(root, "val2017", coco["val2017"])
    categories = sorted(set(y_train))
    centroids = np.stack([X_train[y_train == c].mean(0) for c in categories])
    predicted = np.array(categories)[((X_val[:, None] - centroids[None]) ** 2).sum(-1).argmin(1)]
    assert (predicted == y_val).mean() < 0.6
    circles = X_train[y_train == 37]  # COCO "sports ball": the circles, red in the class colours
    assert len(circles) >= 3 and circles.std(0).max() > 30
    with pytest.raises(SyntheticDataError, match="object colours 'pastel'"):
        write_synthetic(tmp_path / "x", object_colours="pastel")


# ------------------------------------------------------------------------------------ keypoints

def test_keypoints_load_through_detectron2(written):
    from detectron2.data import MetadataCatalog

    root, counts = written
    labelled = {0: 0, 1: 0, 2: 0}
    for split in ("train2017", "val2017"):
        expected = counts["keypoints"][split]
        dicts = _d2_dicts(root, f"keypoints_coco_2017_{split[:-4]}")
        annotations = [a for d in dicts for a in d["annotations"]]
        assert len(dicts) == expected["images"]
        assert len(annotations) == expected["annotations"]
        assert sum(a["iscrowd"] for a in annotations) == expected["crowd"]
        n_keypoints = 0
        for ann in annotations:
            assert ann["category_id"] == 0 and len(ann["keypoints"]) == 17 * 3
            x, y, w, h = ann["bbox"]
            for kx, ky, v in np.reshape(ann["keypoints"], (17, 3)):
                labelled[int(v)] += 1
                if v > 0:  # Detectron2 coordinates (pixel index + 0.5) inside the box
                    assert x <= kx <= x + w and y <= ky <= y + h
                    n_keypoints += 1
        assert n_keypoints == expected["keypoints"]
    assert labelled[0] and labelled[1] and labelled[2]  # absent, occluded and visible keypoints

    with open(os.path.join(root, "coco", "annotations", "person_keypoints_val2017.json")) as f:
        data = json.load(f)
    (category,) = data["categories"]
    meta = MetadataCatalog.get("keypoints_coco_2017_val")
    assert category["name"] == "person" and category["id"] == 1
    assert tuple(category["keypoints"]) == tuple(meta.keypoint_names)
    skeleton = {tuple(sorted((category["keypoints"][a - 1], category["keypoints"][b - 1])))
                for a, b in category["skeleton"]}
    # COCO's skeleton has 19 limbs; Detectron2's drawing rules are 14 of them
    assert len(skeleton) == 19
    assert {tuple(sorted(rule[:2])) for rule in meta.keypoint_connection_rules} <= skeleton
    for ann in data["annotations"]:
        assert ann["num_keypoints"] == sum(v > 0 for v in ann["keypoints"][2::3])
        absent = [i for i, v in enumerate(ann["keypoints"][2::3]) if v == 0]
        assert all(ann["keypoints"][3 * i] == ann["keypoints"][3 * i + 1] == 0 for i in absent)


def test_people_are_the_same_instances_in_both_files(written):
    root, _ = written
    instances = _coco(os.path.join(root, "coco", "annotations", "instances_train2017.json"))
    keypoints = _coco(os.path.join(root, "coco", "annotations", "person_keypoints_train2017.json"))
    people = instances.loadAnns(instances.getAnnIds(catIds=[1]))
    assert people and sorted(a["id"] for a in people) == sorted(keypoints.getAnnIds())
    assert instances.getImgIds() == keypoints.getImgIds()
    for ann in people:
        assert keypoints.anns[ann["id"]]["bbox"] == ann["bbox"]


# ------------------------------------------------------------------------------------------ VOC

def _split_ids(root, year, split):
    path = os.path.join(root, f"VOC{year}", "ImageSets", "Main", f"{split}.txt")
    with open(path) as f:
        return f.read().split()


def test_voc_split_files(written):
    root, counts = written
    for year, splits in (("2007", ("train", "val", "trainval", "test")), ("2012", ("train", "val", "trainval"))):
        ids = {split: _split_ids(root, year, split) for split in splits}
        assert all(len(v) >= 2 for v in ids.values())
        assert sorted(ids["trainval"]) == sorted(set(ids["train"]) | set(ids["val"]))
        assert not set(ids["train"]) & set(ids["val"])
        for split in splits:
            assert len(ids[split]) == counts["voc"][f"VOC{year}"][split]["images"]
    assert not os.path.exists(os.path.join(root, "VOC2012", "ImageSets", "Main", "test.txt"))
    assert all(len(i) == 6 and i.isdigit() for i in _split_ids(root, "2007", "trainval"))
    assert all(len(i) == 11 and i[4] == "_" for i in _split_ids(root, "2012", "trainval"))


def test_voc_loads_through_detectron2(written):
    from detectron2.data.datasets.pascal_voc import CLASS_NAMES

    root, counts = written
    for name, year, split in (("voc_2007_test", "2007", "test"), ("voc_2012_trainval", "2012", "trainval"),
                              ("voc_2007_trainval", "2007", "trainval")):
        dicts = _d2_dicts(root, name)
        assert len(dicts) == counts["voc"][f"VOC{year}"][split]["images"]
        assert sum(len(d["annotations"]) for d in dicts) == counts["voc"][f"VOC{year}"][split]["annotations"]
        _check_images(dicts)
        for d in dicts:
            for ann in d["annotations"]:
                x0, y0, x1, y1 = ann["bbox"]
                assert 0 <= x0 < x1 <= d["width"] and 0 <= y0 < y1 <= d["height"]
                assert 0 <= ann["category_id"] < len(CLASS_NAMES)

    difficult = []
    for year in ("2007", "2012"):
        for image_id in _split_ids(root, year, "trainval"):
            tree = ET.parse(os.path.join(root, f"VOC{year}", "Annotations", image_id + ".xml"))
            assert tree.findtext("filename") == image_id + ".jpg"
            assert tree.findtext("folder") == f"VOC{year}" and tree.findtext("size/depth") == "3"
            for obj in tree.findall("object"):
                assert obj.findtext("name") in CLASS_NAMES
                assert obj.findtext("truncated") in ("0", "1") and obj.findtext("pose")
                difficult.append(int(obj.findtext("difficult")))
                assert all(obj.findtext(f"bndbox/{k}").isdigit() for k in ("xmin", "ymin", "xmax", "ymax"))
    assert set(difficult) == {0, 1}
    assert sum(difficult) == counts["voc"]["VOC2007"]["trainval"]["difficult"] + \
        counts["voc"]["VOC2012"]["trainval"]["difficult"]


def test_two_image_splits_load(tmp_path):
    """The smallest sizes: Detectron2 reads two-line split files as two ids, not a scalar."""
    counts = write_synthetic(tmp_path, kinds=["voc"], num_images=2, image_size=96)
    assert counts["voc"]["VOC2007"]["test"]["images"] == 2
    assert len(_d2_dicts(str(tmp_path), "voc_2007_test")) == 2
    assert len(_d2_dicts(str(tmp_path), "voc_2012_val")) == 2


# ----------------------------------------------------------------------------------------- LVIS

def test_lvis_loads_and_evaluates(written):
    from detectron2.data.datasets.lvis_v1_categories import LVIS_CATEGORIES
    from lvis import LVIS, LVISEval

    root, counts = written
    for split in ("train", "val"):
        path = os.path.join(root, "lvis", f"lvis_v1_{split}.json")
        lvis = LVIS(path)
        assert len(lvis.get_img_ids()) == counts["lvis"][split]["images"]
        assert len(lvis.get_ann_ids()) == counts["lvis"][split]["annotations"]
        assert sorted(lvis.cats) == list(range(1, 1204))
        for cat in LVIS_CATEGORIES:
            ours = lvis.cats[cat["id"]]
            assert (ours["name"], ours["synonyms"], ours["frequency"]) == \
                (cat["name"], cat["synonyms"], cat["frequency"])
            assert ours["instance_count"] == len(lvis.get_ann_ids(cat_ids=[cat["id"]]))
        for img in lvis.load_imgs(lvis.get_img_ids()):
            assert img["coco_url"].endswith(f"{split}2017/{img['id']:012d}.jpg")
            assert isinstance(img["not_exhaustive_category_ids"], list) and img["neg_category_ids"]
        frequencies = {lvis.cats[a["category_id"]]["frequency"] for a in lvis.load_anns(lvis.get_ann_ids())}
        if split == "train":
            assert frequencies == {"r", "c", "f"}

        dicts = _d2_dicts(root, f"lvis_v1_{split}")
        assert len(dicts) == counts["lvis"][split]["images"]
        assert sum(len(d["annotations"]) for d in dicts) == counts["lvis"][split]["annotations"]
        if split == "val":
            _check_images(dicts)

    # ground truth boxes as detections: AP 1
    gt = LVIS(os.path.join(root, "lvis", "lvis_v1_val.json"))
    results = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
               for a in gt.load_anns(gt.get_ann_ids())]
    evaluator = LVISEval(gt, results, iou_type="bbox")
    evaluator.run()
    assert evaluator.get_results()["AP"] == pytest.approx(1.0)


# ------------------------------------------------------------------------------------- ImageNet

def _colour_histograms(dataset):
    features = []
    for path, _ in dataset.samples:
        pixels = np.asarray(Image.open(path).convert("RGB").resize((64, 64))) // 64
        bins = (pixels[..., 0] * 4 + pixels[..., 1]) * 4 + pixels[..., 2]
        hist = np.sqrt(np.bincount(bins.reshape(-1), minlength=64))
        features.append(hist / np.linalg.norm(hist))
    return np.stack(features), np.array(dataset.targets)


def test_imagenet_folders_suit_a_knn_monitor(written):
    from torchvision.datasets import ImageFolder

    root, counts = written
    train = ImageFolder(os.path.join(root, "imagenet", "train"))
    val = ImageFolder(os.path.join(root, "imagenet", "val"))
    assert len(train) == counts["imagenet"]["train"]["images"] and len(val) == counts["imagenet"]["val"]["images"]
    assert train.classes == val.classes and len(train.classes) == counts["imagenet"]["train"]["classes"]
    assert all(c.startswith("n") and len(c) == 9 and c[1:].isdigit() for c in train.classes)
    assert all(path.endswith(".JPEG") for path, _ in train.samples + val.samples)
    # a 1-nearest-neighbour classifier on colour histograms is far above chance (10 classes)
    x_train, y_train = _colour_histograms(train)
    x_val, y_val = _colour_histograms(val)
    predicted = y_train[(x_val @ x_train.T).argmax(1)]
    assert (predicted == y_val).mean() >= 0.5


# --------------------------------------------------------------------- determinism, arguments, CLI

def test_same_seed_same_bytes_other_seed_differs(tmp_path, read_tree):
    args = dict(num_images=3, image_size=96)
    first = write_synthetic(tmp_path / "a", seed=5, **args)
    assert write_synthetic(tmp_path / "b", seed=5, **args) == first
    a, b = read_tree(tmp_path / "a"), read_tree(tmp_path / "b")
    assert a == b and len(a) > 50
    write_synthetic(tmp_path / "a", seed=5, **args)  # writing again over a synthetic root: same files
    assert read_tree(tmp_path / "a") == a
    # a subset of the kinds writes the same files for those kinds
    write_synthetic(tmp_path / "voc", kinds=["voc"], seed=5, **args)
    voc = read_tree(tmp_path / "voc")
    assert all(voc[k] == a[k] for k in voc if k.startswith("VOC"))

    write_synthetic(tmp_path / "c", seed=6, **args)
    c = read_tree(tmp_path / "c")
    json_file = os.path.join("coco", "annotations", "instances_val2017.json")
    assert c[json_file] != a[json_file]
    voc_image = os.path.join("VOC2007", "ImageSets", "Main", "test.txt")
    assert c[voc_image] != a[voc_image]


def test_bad_arguments_and_real_data_are_refused(tmp_path):
    with pytest.raises(SyntheticDataError, match="unknown kind 'cityscapes'"):
        write_synthetic(tmp_path / "x", kinds=["coco", "cityscapes"])
    with pytest.raises(SyntheticDataError, match="num_images"):
        write_synthetic(tmp_path / "x", num_images=1)
    assert not (tmp_path / "x").exists()
    (tmp_path / "real" / "coco" / "annotations").mkdir(parents=True)  # looks like real data
    with pytest.raises(SyntheticDataError, match="coco"):
        write_synthetic(tmp_path / "real", kinds=["keypoints"])
    assert os.listdir(tmp_path / "real") == ["coco"]
    assert set(KINDS) == {"coco", "keypoints", "voc", "lvis", "imagenet"}


def test_cli_writes_and_reports(tmp_path, make_synthetic_data):
    out = make_synthetic_data("--root", str(tmp_path), "--kinds", "coco,voc", "--num-images", "4", "--seed", "1")
    assert out.returncode == 0, out.stderr
    assert "coco/val2017" in out.stdout and "voc/VOC2007/test" in out.stdout
    assert sorted(os.listdir(tmp_path)) == ["SYNTHETIC.json", "VOC2007", "VOC2012", "coco"]
    with open(tmp_path / "coco" / "annotations" / "instances_train2017.json") as f:
        assert len(json.load(f)["images"]) == 4


@pytest.mark.parametrize("args", [("--kinds", "coco,nope"), ("--num-images", "1")])
def test_cli_errors_in_one_line(tmp_path, args, make_synthetic_data):
    out = make_synthetic_data("--root", str(tmp_path / "out"), *args)
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "error:" in lines[0] and "Traceback" not in out.stderr
    assert not (tmp_path / "out").exists()
