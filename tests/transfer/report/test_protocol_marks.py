"""Cells whose runs depart from the protocol they claim carry a mark (double dagger) and a note saying why,
in every format; results.json files from before protocols were recorded stay usable, unmarked, and noted."""
import csv
import io
import json
import os

import pytest

from transfer.report import FORMATS, table_text
from transfer.report.runs import collect_runs

TASK = "voc_faster_rcnn_R_50_C4_24k"
CLAIM = "moco:pascal_voc_R_50_C4_24k"
SHORT = {"key": "SOLVER.MAX_ITER", "expected": 24000, "actual": 2, "source": "MoCo detection/configs",
         "why": "shortened schedule", "documented": False}
RESCALED = {"key": "SOLVER.IMS_PER_BATCH", "expected": 16, "actual": 8, "source": "MoCo detection/configs",
            "why": "linear scaling rule: 8 images per step instead of 16", "documented": True}


def _write(root, backbone, seed, ap, **fields):
    folder = os.path.join(root, TASK, backbone, "finetune", f"seed{seed}")
    os.makedirs(folder)
    record = {"backbone": backbone, "task": TASK, "mode": "finetune", "seed": seed, "weights": "",
              "iterations": 24000, "metrics": {"bbox": {"AP": ap, "AP50": ap + 20, "AP75": ap + 5}}, **fields}
    with open(os.path.join(folder, "results.json"), "w") as f:
        json.dump(record, f)


@pytest.fixture
def root(tmp_path):
    root = str(tmp_path)
    for seed in (0, 1):
        # exact protocol; the batch changed under the linear scaling rule (same epochs) is still the protocol
        _write(root, "exact", seed, 50.0 + seed, protocol=CLAIM, deviations=[RESCALED] if seed else [])
        # one of its two runs is shortened: every cell of the row and mode is marked
        _write(root, "short", seed, 40.0 + seed, protocol=CLAIM, deviations=[SHORT] if seed else [])
        _write(root, "old", seed, 45.0 + seed)  # written before results.json recorded protocols
    return root


def test_runs_read_the_protocol_fields(root, tmp_path):
    runs = {(r.backbone, r.seed): r for r in collect_runs(root).runs}
    assert runs[("short", 1)].protocol == CLAIM and runs[("short", 1)].protocol_alterations() == [SHORT]
    assert runs[("exact", 1)].protocol_alterations() == [] and runs[("exact", 1)].protocol_recorded
    assert runs[("old", 0)].protocol is None and not runs[("old", 0)].protocol_recorded
    assert runs[("old", 0)].protocol_alterations() == []
    # a malformed deviations field is a schema violation: skipped with a reason, never fatal
    _write(str(tmp_path), "bad", 0, 1.0, protocol=CLAIM, deviations="shortened")
    skipped = dict(collect_runs(root).skipped)
    assert any("`deviations`" in why for why in skipped.values())


REASON = f"short fine-tuned seed 1 (claims {CLAIM}): SOLVER.MAX_ITER 2 instead of 24000: shortened schedule"


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_marks_departing_cells_and_says_why(root, fmt):
    text = table_text(root, fmt)
    if fmt == "csv":
        rows = {(r["backbone"], r["metric"]): r for r in csv.DictReader(io.StringIO(text))}
        for metric in ("AP", "AP50", "AP75"):
            assert rows[("short", metric)]["off_protocol"] == "yes"
            assert rows[("short", metric)]["protocol_note"] == REASON.split("fine-tuned ", 1)[1]
            assert rows[("exact", metric)]["off_protocol"] == "no" and rows[("exact", metric)]["protocol_note"] == ""
            assert rows[("old", metric)]["off_protocol"] == ""
            assert rows[("old", metric)]["protocol_note"] == "protocol not recorded"
        return
    lines = text.splitlines()
    if fmt == "markdown":
        row = {line.split(" | ")[0][2:]: line for line in lines if line.startswith("| ")}
        assert row["short"].count("\u2021") == 3 and "\u2021" not in row["exact"] + row["old"]
        assert "40.5 \u00b1 0.7 (n=2: too few seeds)\u2021" in row["short"]
        assert any(REASON in line and "not the claimed published protocol" in line for line in lines)
        assert any("protocol not recorded" in line and "old fine-tuned seeds 0, 1" in line for line in lines)
    elif fmt == "latex":
        row = {line.split(" & ")[0]: line for line in lines if " & " in line and "\\\\" in line}
        assert row["short"].count("$^\\ddagger$") == 3 and "ddagger" not in row["exact"] + row["old"]
        assert any("SOLVER.MAX\\_ITER 2 instead of 24000: shortened schedule" in line and "\\footnotesize" in line
                   for line in lines)
        assert any("protocol not recorded" in line for line in lines)
    else:
        row = {line.split("</td>")[0]: line for line in lines if line.startswith("<tr")}
        short = next(v for k, v in row.items() if ">short" in k)
        exact = next(v for k, v in row.items() if ">exact" in k)
        assert short.count("\u2021</span>") == 3 and "\u2021" not in exact
        assert "<li>not the claimed published protocol" in text and "shortened schedule" in text
        assert "protocol not recorded" in text
