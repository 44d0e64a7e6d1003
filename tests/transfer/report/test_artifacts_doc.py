"""docs/artifacts.md documents every run file name and every results.json key the code defines."""
import os

from pretrain.common import runs
from pretrain.common.paths import REPO_ROOT

DOC = os.path.join(REPO_ROOT, "docs", "artifacts.md")
FILE_CONSTANTS = ("RESULTS_FILE", "METRICS_FILE", "MI_FILE", "LEDGER_FILE", "CONFIG_FILE", "WEIGHTS_FILE",
                  "CHECKPOINT_LAST", "CHECKPOINT_FINAL", "CURVES_FILE")


def _doc():
    with open(DOC, encoding="utf-8") as f:
        return f.read()


def test_every_file_name_is_documented():
    text = _doc()
    missing = [name for name in FILE_CONSTANTS if f"`{getattr(runs, name)}`" not in text]
    assert not missing, f"docs/artifacts.md lacks {[getattr(runs, n) for n in missing]}"


def test_every_results_key_is_documented():
    text = _doc()
    by_dataset = {"coco_2017_val": {"bbox": {"AP": 40.0}}, "coco_2017_val_100": {"bbox": {"AP": float("nan")}}}
    record = runs.results_record(backbone="moco_v2", task="coco_mask_rcnn_R_50_FPN_1x", mode="finetune", seed=0,
                                 weights="/weights/moco_v2.pkl", iterations=90000, metrics=by_dataset)
    assert "datasets" in record  # several test datasets: the optional key is there too
    missing = [key for key in record if f"| `{key}` |" not in text]
    assert not missing, f"docs/artifacts.md has no row for the results.json keys {missing}"
