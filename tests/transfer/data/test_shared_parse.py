"""A run's uncached training set is checked on the parse Detectron2's loading uses: the file is read once,
Detectron2 loads exactly what it loads from the file, and the check's summary is cached."""
import builtins
import os
import shutil

import pytest

from pretrain.common.paths import REPO_ROOT
from tool_loader import load_tool
from transfer.training.config import TINY_OVERRIDES


@pytest.fixture()
def opened(monkeypatch):
    """The paths opened (by anyone in this process) while the test runs, in order."""
    paths = []
    original = builtins.open

    def spy(file, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)):
            paths.append(os.path.realpath(file))
        return original(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", spy)
    return paths


@pytest.mark.parametrize("name", ["coco_2017_train", "lvis_v1_train"])
def test_detectron2_loads_the_parsed_data_without_reading_the_file(synthetic_root, opened, name):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from transfer.data.coco_json import parse_whole
    from transfer.data.shared_parse import parsed_for_detectron2

    json_file = os.path.realpath(MetadataCatalog.get(name).json_file)
    plain = DatasetCatalog.get(name)
    assert opened.count(json_file) == 1
    data = parse_whole(json_file)
    with parsed_for_detectron2(json_file, data):
        shared = DatasetCatalog.get(name)
    assert opened.count(json_file) == 2  # the parse, not Detectron2 again
    assert shared == plain
    DatasetCatalog.get(name)  # the patch is gone: the file is read again
    assert opened.count(json_file) == 3


def test_run_checks_an_uncached_training_set_on_the_one_parse_it_loads(synthetic_root, tmp_path, opened, monkeypatch):
    from transfer.data import check_cache
    from transfer.data.datasets import set_datasets_root
    from transfer.data.validate import cached_summary, dataset_summary

    root, _ = synthetic_root
    copy = tmp_path / "datasets"
    shutil.copytree(root / "coco", copy / "coco")  # a file the cache has not seen
    monkeypatch.setenv(check_cache.CACHE_ENV, str(tmp_path / "cache"))
    check_cache.clear_memory()
    set_datasets_root(copy)
    try:
        train_json = os.path.realpath(copy / "coco" / "annotations" / "instances_train2017.json")
        out = tmp_path / "out"

        def train(iterations, *argv):
            return load_tool("train_net").main([
                "--config-file", os.path.join(REPO_ROOT, "configs", "transfer", "coco_mask_rcnn_R_50_FPN_1x.yaml"),
                *argv, *TINY_OVERRIDES, "SOLVER.MAX_ITER", str(iterations), "OUTPUT_DIR", str(out)])

        start = len(opened)
        assert train(1) == 0
        # one parse for the check and Detectron2's loading; the PreciseBN hook's loader shares what was loaded
        assert opened[start:].count(train_json) == 1
        assert (out / "results.json").is_file()
        check_cache.clear_memory()  # what a new process sees: the summary the run's check cached
        assert cached_summary("coco_2017_train") == dataset_summary("coco_2017_train", use_cache=False)
        start = len(opened)
        assert train(2, "--resume") == 0  # cached: no check; the loader rebuilt at iteration 1 shares the load
        assert opened[start:].count(train_json) == 1
    finally:
        set_datasets_root(root)
        check_cache.clear_memory()


def test_the_parsed_data_is_freed_when_detectron2_is_done(synthetic_root):
    """Not kept alive by the patch's classes until some later cyclic collection: 2 GB for COCO train."""
    import gc
    import weakref

    from detectron2.data import DatasetCatalog, MetadataCatalog

    from transfer.data.coco_json import parse_whole
    from transfer.data.shared_parse import parsed_for_detectron2

    class Parsed(dict):  # a dict that can be referred to weakly
        pass

    json_file = MetadataCatalog.get("coco_2017_train").json_file
    data = Parsed(parse_whole(json_file))
    ref = weakref.ref(data)
    gc.disable()
    try:
        with parsed_for_detectron2(json_file, data):
            del data
            dicts = DatasetCatalog.get("coco_2017_train")
        assert dicts and ref() is None
    finally:
        gc.enable()
