"""The cache of dataset checks (transfer.data.check_cache): hit while the files are unchanged, miss when
one is touched or an image folder changes, a corrupt entry is a miss; and a sweep's runs are checked
once, at submission, not again in their jobs."""
import json
import os
import shutil

import pytest

from transfer.data import check_cache, coco_json, voc_xml
from transfer.data.validate import dataset_summary


@pytest.fixture()
def counted(monkeypatch, tmp_path):
    """How many times each checker really ran; a fresh cache folder; nothing kept in memory."""
    calls = []
    for module, name in ((coco_json, "check_coco_json"), (voc_xml, "check_voc_split")):
        original = getattr(module, name)

        def spy(*args, _original=original, _name=name, **kwargs):
            calls.append(_name)
            return _original(*args, **kwargs)
        monkeypatch.setattr(module, name, spy)
    monkeypatch.setenv(check_cache.CACHE_ENV, str(tmp_path / "cache"))
    check_cache.clear_memory()
    yield calls
    check_cache.clear_memory()


@pytest.fixture()
def own_dataset(synthetic_root, tmp_path):
    """A copy of the synthetic COCO val split registered as ``cache_test_<n>``: its json and image folder."""
    from transfer.data.datasets import register_coco_dataset

    root, _ = synthetic_root
    folder = tmp_path / "data"
    shutil.copytree(root / "coco" / "val2017", folder / "images")
    json_file = folder / "instances.json"
    shutil.copy(root / "coco" / "annotations" / "instances_val2017.json", json_file)
    name = f"cache_test_{len(os.listdir(tmp_path.parent))}_{tmp_path.name}"
    register_coco_dataset(name, str(json_file), str(folder / "images"))
    return name, json_file, folder / "images"


def _fresh_process_view():
    """What a new process sees: the disk cache, nothing in memory."""
    check_cache.clear_memory()


def test_unchanged_dataset_is_checked_once(counted, own_dataset):
    name, json_file, _ = own_dataset
    first = dataset_summary(name)
    _fresh_process_view()
    assert dataset_summary(name) == first
    assert counted == ["check_coco_json"]
    assert len(os.listdir(os.environ[check_cache.CACHE_ENV])) == 1


def test_touching_the_file_or_changing_the_images_checks_again(counted, own_dataset):
    name, json_file, images = own_dataset
    dataset_summary(name)
    st = os.stat(json_file)
    os.utime(json_file, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # same size, newer
    _fresh_process_view()
    dataset_summary(name)
    assert counted == ["check_coco_json"] * 2
    os.remove(images / sorted(os.listdir(images))[0])  # the folder changes: its check is stale
    _fresh_process_view()
    with pytest.raises(Exception, match="image file not found"):
        dataset_summary(name)
    assert len(counted) == 3


def test_corrupt_or_foreign_cache_entries_are_misses(counted, own_dataset):
    name, _, _ = own_dataset
    first = dataset_summary(name)
    folder = os.environ[check_cache.CACHE_ENV]
    (entry,) = os.listdir(folder)
    for text in ("{truncated", json.dumps({"key": "another", "summary": {"images": 1}}), "[]"):
        with open(os.path.join(folder, entry), "w") as f:
            f.write(text)
        _fresh_process_view()
        assert dataset_summary(name) == first
    assert len(counted) == 4
    with open(os.path.join(folder, entry)) as f:  # rewritten whole
        assert json.load(f)["summary"] == first


def test_cache_can_be_turned_off(counted, own_dataset, monkeypatch):
    name, _, _ = own_dataset
    monkeypatch.setenv(check_cache.CACHE_ENV, "none")
    dataset_summary(name)
    _fresh_process_view()
    dataset_summary(name)
    assert counted == ["check_coco_json"] * 2


@pytest.mark.slow
def test_sweep_runs_are_checked_at_submission_only(synthetic_root, tmp_path, counted, monkeypatch):
    """A tiny sweep on the debug cluster (its job runs in this process): each dataset is checked once,
    when the sweep is submitted; the job trains without checking again."""
    from transfer.launch.sweep import run_sweep
    from transfer.training.config import TINY_OVERRIDES

    import transfer.data.validate as validate

    checked = []
    original = validate.dataset_summary
    monkeypatch.setattr(validate, "dataset_summary", lambda name, *a, **k: checked.append(name) or original(name, *a, **k))
    sweep = tmp_path / "tiny.yaml"
    sweep.write_text(json.dumps({
        "name": "tiny", "backbones": {"random": ""}, "tasks": ["coco_mask_rcnn_R_50_FPN_1x"], "modes": ["finetune"],
        "seeds": [0], "overrides": TINY_OVERRIDES + ["SOLVER.MAX_ITER", "1", "TEST.PRECISE_BN.ENABLED", "False",
                                                     "MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64"]}))
    ledger = run_sweep(str(sweep), str(tmp_path / "root"), {"cluster": "debug", "gpus_per_node": 0},
                       out=lambda *a, **k: None)
    assert ledger.counts()["done"] == 1
    assert sorted(checked) == ["coco_2017_train", "coco_2017_val"]
    assert counted == ["check_coco_json"] * 2
