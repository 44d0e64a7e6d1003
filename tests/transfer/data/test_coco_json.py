"""transfer.data.coco_json: the decoded reading of polygons (JSON texts, measured on their bytes) gives what a
plain json parse gives, on every layout json writers produce, and sends anything unusual to the plain parse; the generated
COCO/LVIS-scale files (transfer.data.scale) load in Detectron2 and pass the check."""
import json
import os
import re
import time

import numpy as np
import pytest

from transfer.data.coco_json import check_coco_json, read_annotation_json
from transfer.data.datasets import DatasetError
from transfer.data.scale import make_coco_scale_json, make_lvis_scale_json

SEGMENTATIONS = [
    [[1, 2, 3, 4, 5, 6], [1, 2, 3], []],          # one valid polygon, one too short, one empty
    [[]],
    [[-1.5e3, 2, 3.25, 4, 5, 6E-2, 7]],             # odd count
    {"counts": [1, 2], "size": [1, 3]},           # RLE: decoded as it is
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


@pytest.mark.parametrize("layout", ["compact", "spaced", "indented"])
def test_polygons_are_decoded_as_text_and_counted_exactly(tmp_path, layout):
    path = _file(tmp_path, layout)
    data, stats = read_annotation_json(str(path))
    assert stats is not None
    assert [list(s) for s in stats] == [list(t) for t in _truth(path)]
    segs = [a.segmentation for a in data["annotations"]]
    assert segs[3] == SEGMENTATIONS[3]
    assert [json.loads(bytes(s)) for i, s in enumerate(segs) if i != 3] == \
        [s for i, s in enumerate(SEGMENTATIONS) if i != 3]


def test_random_polygon_lists_are_counted_as_a_plain_parse_counts_them(tmp_path):
    rng = np.random.default_rng(3)
    numbers = [0, -1.5, 3e-2, 12, 7.25, -0.0, 1E5]
    segmentations = [[[numbers[k] for k in rng.integers(0, len(numbers), rng.integers(0, 11))]
                      for _ in range(rng.integers(0, 4))] for _ in range(300)]
    for layout in ("compact", "spaced"):
        path = _file(tmp_path, layout, segmentations)
        data, stats = read_annotation_json(str(path))
        assert [list(s) for s in stats] == [list(t) for t in _truth(path)]
        with open(path) as f:
            whole = json.load(f)
        assert check_coco_json(str(path), str(tmp_path), check_files=False) == \
            check_coco_json(str(path), str(tmp_path), check_files=False, parsed=whole)


@pytest.mark.parametrize("odd", [["abcdefgh"], [7, [1, 2, 3, 4, 5, 6]], [[1, 2, 3, 4, 5, 6], [[1, 2]]], [None],
                                 [True, [1, 2, 3, 4, 5, 6]], [{"x": 1}], [1, 2, 3, 4, 5, 6], [[1, 2, 3, 4, 5, 6], 7],
                                 [[1, 2, 3, 4, 5, 6], 7, [1, 2, 3, 4, 5, 6]], [[[1, 2, 3, 4, 5, 6]]]])
def test_polygon_lists_of_anything_else_are_parsed_whole_with_the_same_summary(tmp_path, odd):
    path = _file(tmp_path, "compact", SEGMENTATIONS + [odd])
    data, stats = read_annotation_json(str(path))
    with open(path) as f:
        whole = json.load(f)
    assert stats is None and data == whole
    summary = check_coco_json(str(path), str(tmp_path), check_files=False)
    assert summary == check_coco_json(str(path), str(tmp_path), check_files=False, parsed=whole)
    assert summary["first_without_mask"] == 2


def test_a_list_of_one_number_is_no_mask_as_in_a_plain_parse(tmp_path):
    """The read takes [7] for an empty polygon list: both hold no valid polygon, the facts agree."""
    path = _file(tmp_path, "compact", [[7], [[1, 2, 3, 4, 5, 6]], [], [[7]]])
    with open(path) as f:
        whole = json.load(f)
    summary = check_coco_json(str(path), str(tmp_path), check_files=False)
    assert summary == check_coco_json(str(path), str(tmp_path), check_files=False, parsed=whole)
    assert summary["first_without_mask"] == 1 and summary["segmentation_all"]
    whole["images"][0]["coco_url"] = "http://images.cocodataset.org/train2017/a.jpg"
    path.write_text(json.dumps(whole))
    with pytest.raises(DatasetError, match="annotation 1 has no segmentation or a polygon with fewer than 3"):
        check_coco_json(str(path), str(tmp_path), check_files=False, lvis=True)


def test_broken_json_and_fields_of_another_kind_are_named(tmp_path):
    text = _file(tmp_path, "compact").read_text()
    path = tmp_path / "odd.json"
    for bad in ("[[1,,2", "[[1,2-3", "[[.5,", "[[1e,", "[[1,2,3]]]", "[[1,2|3", "[[NaN,"):
        path.write_text(text.replace("[[1,2,3", bad, 1))
        with pytest.raises(DatasetError, match=r"odd\.json is not valid JSON"):
            check_coco_json(str(path), str(tmp_path), check_files=False)
    for before, after, error in (('"annotations":[{', '"annotations":[7,{', "annotation #0 is not an object"),
                                 ('"annotations":[', '"annotations":{"a":[', "no 'annotations' list"),
                                 ('"id":1,"image_id"', '"id":"1","image_id"', "annotation '1' has a non-integer 'id'"),
                                 ('{"images"', '[{"images"', "top level is not an object")):
        path.write_text(text.replace(before, after, 1) + ("]" if after.startswith("[{") else "}" if "{\"a\"" in after
                                                          else ""))
        with pytest.raises(DatasetError, match=error):
            check_coco_json(str(path), str(tmp_path), check_files=False)


def test_truncated_file_names_the_place(tmp_path):
    path = _file(tmp_path, "compact")
    path.write_text(path.read_text()[:-60])
    with pytest.raises(DatasetError, match=r"compact\.json is not valid JSON: .*char \d+"):
        read_annotation_json(str(path))


def test_an_empty_file_is_named_and_a_mapped_read_outlives_its_file(tmp_path):
    """An empty file cannot be mapped: it is read, and named as not JSON. A mapped read keeps the bytes it
    decoded after the file is replaced (the polygon texts point into the mapping)."""
    empty = tmp_path / "empty.json"
    empty.write_bytes(b"")
    with pytest.raises(DatasetError, match=r"empty\.json is not valid JSON"):
        check_coco_json(str(empty), str(tmp_path), check_files=False)
    path = _file(tmp_path, "compact")
    data, stats = read_annotation_json(str(path))
    os.replace(empty, path)  # the checked file replaced, as an atomic writer does
    assert len(stats[0]) == sum(isinstance(s, list) for s in SEGMENTATIONS)  # per polygon list
    assert json.loads(bytes(data["annotations"][0].segmentation))[0][:3] == [1, 2, 3]


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


def test_the_check_on_a_whole_parse_equals_the_check_on_the_decoded_read(tmp_path):
    """A run checks the file on Detectron2's whole parse (``parsed=``), a sweep on the decoded read: one summary.
    Detectron2 keeps a polygon of an even number (>= 6) of values; an annotation without one has no mask."""
    path = _file(tmp_path, "compact")
    decoded = check_coco_json(str(path), str(tmp_path), check_files=False)
    with open(path) as f:
        whole = json.load(f)
    assert check_coco_json(str(path), str(tmp_path), check_files=False, parsed=whole) == decoded
    assert decoded["first_without_mask"] == 2 and not decoded["masks_all"] and decoded["images_with_annotations"] == 1
    # what only a whole parse can hold: a polygon that is not a list is not a valid one
    whole["annotations"][1]["segmentation"] = [[0, 0, 4, 0, 4, 4]]
    whole["images"].append({"id": 2, "file_name": "b.jpg", "height": 10, "width": 10})
    whole["annotations"][5]["image_id"] = 2
    for polygons in (["abcdefgh"], [7, {"x": 1}, "abcdefgh"]):
        whole["annotations"][2]["segmentation"] = polygons
        summary = check_coco_json(str(path), str(tmp_path), check_files=False, parsed=whole)
        assert summary["first_without_mask"] == 3 and summary["images_with_annotations"] == 2


DAMAGES = [  # (what the second annotation becomes, the error)
    ({"bbox": [1, 2, 3]}, r"annotation 2 has a malformed bbox \[1, 2, 3\]"),
    ({"bbox": [1, 2, "3", 4]}, r"annotation 2 has a malformed bbox \[1, 2, '3', 4\]"),
    ({"bbox": [1, 2, 1e999, 4]}, r"annotation 2 has a malformed bbox \[1, 2, inf, 4\]"),
    ({"bbox": None}, r"annotation 2 has no 'bbox'"),
    ({"id": 2.0}, r"annotation 2.0 has a non-integer 'id'"),
    ({"image_id": None}, r"annotation 2 has no 'image_id'"),
    ({"category_id": 9}, r"annotation 2 refers to unknown category 9"),
    ({"segmentation": "abc"}, r"annotation 2 has a malformed segmentation 'abc'"),
    ({"segmentation": {"counts": "x"}}, r"annotation 2 has a malformed RLE segmentation"),
    ({"keypoints": [1, 2]}, r"annotation 2 has 2 keypoint values"),
    ({"ignore": 1}, r"annotation 2 sets 'ignore'"),
]


@pytest.mark.parametrize("change,error", DAMAGES, ids=[str(c) for c, _ in DAMAGES])
def test_a_damaged_annotation_is_named_by_the_read_and_by_the_whole_parse(tmp_path, change, error):
    path = _file(tmp_path, "compact")
    data = json.loads(path.read_text())
    data["annotations"][1].update(change)
    if change.get("bbox") is None and "bbox" in change:
        del data["annotations"][1]["bbox"]
    path.write_text(json.dumps(data, separators=(",", ":")).replace("Infinity", "1e999"))
    with pytest.raises(DatasetError, match=error):
        check_coco_json(str(path), str(tmp_path), check_files=False)
    with open(path) as f:
        whole = json.load(f)
    with pytest.raises(DatasetError, match=error):
        check_coco_json(str(path), str(tmp_path), check_files=False, parsed=whole)


def test_missing_area_and_iscrowd_are_counted(tmp_path):
    path = _file(tmp_path, "compact")
    data = json.loads(path.read_text())
    for i, a in enumerate(data["annotations"]):
        a["area"] = 5.0
        if i % 2:
            a["iscrowd"] = 0
    del data["annotations"][0]["area"], data["annotations"][4]["area"]
    path.write_text(json.dumps(data))
    summary = check_coco_json(str(path), str(tmp_path), check_files=False)
    assert summary["missing_area"] == 2 and summary["missing_iscrowd"] == 3
    assert summary == check_coco_json(str(path), str(tmp_path), check_files=False, parsed=data)


def test_lvis_images_without_their_category_lists_are_counted(tmp_path):
    path = _file(tmp_path, "compact", [[[0, 0, 10, 0, 10, 10]]] * 3)
    data = json.loads(path.read_text())
    data["images"] = [{"id": i, "coco_url": f"http://x/train2017/{i}.jpg", "height": 10, "width": 10,
                       "neg_category_ids": [1], "not_exhaustive_category_ids": []} for i in (1, 2, 3, 4)]
    del data["images"][1]["neg_category_ids"]
    data["images"][2]["not_exhaustive_category_ids"] = None
    data["images"][3]["neg_category_ids"] = {"a": 1}
    path.write_text(json.dumps(data))
    summary = check_coco_json(str(path), str(tmp_path) + "/", lvis=True, check_files=False)
    assert summary["lvis_image_lists_missing"] == 3
    assert summary == check_coco_json(str(path), str(tmp_path) + "/", lvis=True, check_files=False, parsed=data)


@pytest.mark.parametrize("names", [["a.jpg", "b.jpg"], ["a.jpg", "sub/b.jpg", "sub//c.jpg"], ["a.jpg", "ABS"]])
@pytest.mark.parametrize("root_form", ["plain", "trailing slash", "double slash"])
def test_image_files_are_found_where_os_path_join_puts_them(tmp_path, monkeypatch, names, root_form):
    """Image paths and folders are os.path.join(image_root, file_name) and its os.path.split head, whatever
    the slashes; a missing file is named by that path."""
    root = tmp_path / "images"
    names = [str(tmp_path / "abs" / "d.jpg") if n == "ABS" else n for n in names]
    image_root = {"plain": str(root), "trailing slash": f"{root}/", "double slash": f"{root}//"}[root_form]
    paths = [os.path.join(image_root, n) for n in names]
    for p in paths:
        os.makedirs(os.path.dirname(p), exist_ok=True)
        open(p, "wb").close()
    data = {"images": [{"id": i + 1, "file_name": n, "height": 5, "width": 5} for i, n in enumerate(names)],
            "categories": [{"id": 1, "name": "x"}], "annotations": []}
    path = tmp_path / "a.json"
    path.write_text(json.dumps(data))
    summary = check_coco_json(str(path), image_root)
    assert summary["image_folders"] == sorted({os.path.split(p)[0] for p in paths})
    assert sorted(summary["sample_files"]) == sorted(paths)
    os.remove(paths[-1])
    with pytest.raises(DatasetError, match="image file not found: ") as error:
        check_coco_json(str(path), image_root)
    named = re.match(r"image file not found: (\S+) ", str(error.value))[1]
    assert os.path.normpath(named) == os.path.normpath(paths[-1])
    monkeypatch.chdir(root)  # an empty image root: names relative to the working folder
    if not os.path.isabs(names[0]):
        assert check_coco_json(str(path), "", check_files=False)["image_folders"] == sorted(
            {os.path.split(n)[0] for n in names})


def _measured_here(path):
    from transfer.data import coco_json

    anns = coco_json._DECODER.decode(open(path, "rb").read()).annotations
    return coco_json._measure_texts([a.segmentation for a in anns])


@pytest.mark.parametrize("segmentations", [SEGMENTATIONS, [[[1, 2, "x"]], [[1, 2, 3, 4, 5, 6]]], [None, [[1]]]])
def test_a_helper_process_measures_large_files_as_this_process_does(tmp_path, monkeypatch, segmentations):
    """Files from HELPER_MIN_BYTES have their polygons measured by a forked helper: the same answer as
    measuring here (None where polygon lists hold something else), and the same check."""
    from transfer.data import coco_json

    path = _file(tmp_path, "spaced", segmentations)
    data = path.read_bytes()
    here = _measured_here(path)
    monkeypatch.setattr(coco_json, "HELPER_MIN_BYTES", 0)
    helper = coco_json._Helper(data)
    assert helper.pid is not None or len(os.sched_getaffinity(0)) < 2
    answer = helper.result(len(segmentations))
    if helper.pid is None and answer is None:
        pytest.skip("one CPU: no helper")
    kind, measured = answer
    assert kind == "measured"
    if here is None:
        assert measured is None
    else:
        assert all(np.array_equal(a, b) for a, b in zip(measured, here))
    with_helper = check_coco_json(str(path), str(tmp_path), check_files=False)
    monkeypatch.setattr(coco_json, "HELPER_MIN_BYTES", 1 << 62)
    assert with_helper == check_coco_json(str(path), str(tmp_path), check_files=False)


def test_a_helper_that_fails_or_dies_leaves_the_measuring_to_this_process(tmp_path, monkeypatch):
    from transfer.data import coco_json

    path = _file(tmp_path, "compact")
    expected = check_coco_json(str(path), str(tmp_path), check_files=False)
    monkeypatch.setattr(coco_json, "HELPER_MIN_BYTES", 0)
    monkeypatch.setattr(coco_json, "_SEGMENTATIONS_DECODER", None)  # the helper raises
    assert check_coco_json(str(path), str(tmp_path), check_files=False) == expected
    monkeypatch.setattr(coco_json, "_measure_in_helper", lambda data: os._exit(9))  # it dies
    assert check_coco_json(str(path), str(tmp_path), check_files=False) == expected


def _check_in_a_daemon(path, image_root, conn):
    from transfer.data import coco_json

    coco_json.HELPER_MIN_BYTES = 0
    read = coco_json._DecodedFile(path)
    forked = read.helper.pid is not None and read.helper.result(len(read.data["annotations"])) is not None
    conn.send((forked, coco_json.check_coco_json(path, image_root, check_files=False)))


def test_the_helper_also_runs_where_multiprocessing_allows_no_children(tmp_path):
    """A daemonic multiprocessing process (a benchmark's measuring process, a pool worker) may not start
    multiprocessing children; the helper is a plain fork and runs there too."""
    import multiprocessing

    path = str(_file(tmp_path, "compact"))
    expected = check_coco_json(path, str(tmp_path), check_files=False)
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_check_in_a_daemon, args=(path, str(tmp_path), child), daemon=True)
    proc.start()
    forked, summary = parent.recv()
    proc.join()
    assert summary == expected
    assert forked or len(os.sched_getaffinity(0)) < 2


def test_a_signal_ends_the_helper_not_its_parents_handler(tmp_path, monkeypatch):
    """The helper does not run a handler its parent set (a SLURM job's requeue on SIGUSR2): it dies,
    and the parent measures the polygons itself."""
    import signal

    from transfer.data import coco_json

    path = _file(tmp_path, "compact")
    expected = check_coco_json(str(path), str(tmp_path), check_files=False)
    marker = tmp_path / "handler ran"
    monkeypatch.setattr(coco_json, "HELPER_MIN_BYTES", 0)
    monkeypatch.setattr(coco_json, "_measure_in_helper",
                        lambda data: (os.kill(os.getpid(), signal.SIGUSR2), time.sleep(5)))
    previous = signal.signal(signal.SIGUSR2, lambda *_: marker.touch())
    try:
        assert check_coco_json(str(path), str(tmp_path), check_files=False) == expected
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert not marker.exists()
