"""transfer.data.coco_json: the cut-and-measure reading of polygons gives what a plain json parse gives,
on every layout json writers produce, and sends anything unusual to the plain parse; the generated
COCO/LVIS-scale files (transfer.data.scale) load in Detectron2 and pass the check."""
import json

import numpy as np
import pytest

from transfer.data.coco_json import check_coco_json, read_annotation_json
from transfer.data.datasets import DatasetError
from transfer.data.scale import make_coco_scale_json, make_lvis_scale_json

SEGMENTATIONS = [
    [[1, 2, 3, 4, 5, 6], [1, 2, 3], []],          # one valid polygon, one too short, one empty
    [[]],
    [[-1.5e3, 2, 3.25, 4, 5, 6E-2, 7]],             # odd count
    {"counts": [1, 2], "size": [1, 3]},           # RLE: not cut
    [[1, 2, 3, 4, 5, 6, 7, 8], [0.5, 1, 2, 3, 4, 5]],
    [[0, 0, 10, 0, 10, 10]],
]


def _file(tmp_path, layout, segmentations=SEGMENTATIONS):
    data = {"images": [{"id": 1, "file_name": "a.jpg", "height": 10, "width": 10}],
            "categories": [{"id": 1, "name": "x"}],
            "annotations": [{"id": i + 1, "image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4], "segmentation": s}
                            for i, s in enumerate(segmentations)]}
    path = tmp_path / f"{layout}.json"
    kwargs = {"compact": {"separators": (",", ":")}, "spaced": {}, "indented": {"indent": 2}}[layout]
    path.write_text(json.dumps(data, **kwargs))
    return path


def _truth(path):
    """(valid, invalid) polygons per polygon-list annotation, from a plain parse."""
    with open(path) as f:
        anns = json.load(f)["annotations"]
    segs = [a["segmentation"] for a in anns if isinstance(a["segmentation"], list)]
    good = [[len(p) >= 6 and len(p) % 2 == 0 for p in s] for s in segs]
    return [sum(g) for g in good], [len(g) - sum(g) for g in good]


@pytest.mark.parametrize("layout", ["compact", "spaced"])
def test_polygons_are_cut_and_counted_exactly(tmp_path, layout):
    path = _file(tmp_path, layout)
    data, stats = read_annotation_json(str(path))
    assert stats is not None
    assert [list(s) for s in stats] == [list(t) for t in _truth(path)]
    segs = [a["segmentation"] for a in data["annotations"]]
    assert segs[3] == SEGMENTATIONS[3] and all(s == 0 for i, s in enumerate(segs) if i != 3)


def test_other_layouts_and_odd_numbers_are_parsed_whole(tmp_path):
    data, stats = read_annotation_json(str(_file(tmp_path, "indented")))
    assert stats is None and data["annotations"][0]["segmentation"] == SEGMENTATIONS[0]
    text = _file(tmp_path, "compact").read_text()
    for bad in ("[[1,,2", "[[1,2-3", "[[.5,", "[[1e,", "[[1,2,3]]]", "[[1,2|3"):
        path = tmp_path / "odd.json"
        path.write_text(text.replace("[[1,2,3", bad, 1))
        with pytest.raises(DatasetError, match=r"odd\.json is not valid JSON"):
            read_annotation_json(str(path))


def test_truncated_file_names_the_place(tmp_path):
    path = _file(tmp_path, "compact")
    path.write_text(path.read_text()[:-60])
    with pytest.raises(DatasetError, match=r"compact\.json is not valid JSON: .*char \d+"):
        read_annotation_json(str(path))


def test_scale_files_load_in_detectron2_and_pass_the_check(tmp_path):
    from detectron2.data.datasets import load_coco_json, load_lvis_json

    coco = make_coco_scale_json(tmp_path / "coco.json", 50, 400, seed=1, image_root=tmp_path / "train2017")
    assert coco["images"] == 50 and coco["annotations"] == 400
    summary = check_coco_json(str(tmp_path / "coco.json"), str(tmp_path / "train2017"))
    dicts = load_coco_json(str(tmp_path / "coco.json"), str(tmp_path / "train2017"))
    assert summary["images"] == len(dicts) == 50 and summary["annotations"] == 400
    assert sum(len(d["annotations"]) for d in dicts) == 400 and summary["masks_all"]
    crowds = sum(a.get("iscrowd", 0) for d in dicts for a in d["annotations"])
    assert 0 < crowds < 40

    lvis = make_lvis_scale_json(tmp_path / "lvis.json", 30, 300, seed=1, image_root=tmp_path / "train2017")
    assert lvis["annotations"] == 300
    summary = check_coco_json(str(tmp_path / "lvis.json"), str(tmp_path) + "/", lvis=True)
    dicts = load_lvis_json(str(tmp_path / "lvis.json"), str(tmp_path) + "/")
    assert summary["images"] == len(dicts) == 30 and summary["lvis_frequency_missing_count"] == 0
    areas = np.array([a["area"] for a in json.load(open(tmp_path / "lvis.json"))["annotations"]])
    assert (areas > 0).all()


def test_the_check_on_a_whole_parse_equals_the_check_on_the_cut_read(tmp_path):
    """A run checks the file on Detectron2's whole parse (``parsed=``), a sweep on the cut read: one summary.
    Detectron2 keeps a polygon of an even number (>= 6) of values; an annotation without one has no mask."""
    path = _file(tmp_path, "compact")
    cut = check_coco_json(str(path), str(tmp_path), check_files=False)
    with open(path) as f:
        whole = json.load(f)
    assert check_coco_json(str(path), str(tmp_path), check_files=False, parsed=whole) == cut
    assert cut["first_without_mask"] == 2 and not cut["masks_all"] and cut["images_with_annotations"] == 1
    # what only a whole parse can hold: a polygon that is not a list is not a valid one
    whole["annotations"][1]["segmentation"] = [[0, 0, 4, 0, 4, 4]]
    whole["images"].append({"id": 2, "file_name": "b.jpg", "height": 10, "width": 10})
    whole["annotations"][5]["image_id"] = 2
    for polygons in (["abcdefgh"], [7, {"x": 1}, "abcdefgh"]):
        whole["annotations"][2]["segmentation"] = polygons
        summary = check_coco_json(str(path), str(tmp_path), check_files=False, parsed=whole)
        assert summary["first_without_mask"] == 3 and summary["images_with_annotations"] == 2
