"""The demo, at its smallest settings, runs the whole pipeline end to end."""
import json
import os

from transfer.demo import QUICK, TASK, run_demo


def test_quick_demo_end_to_end(tmp_path):
    lines = []
    files = run_demo(tmp_path / "demo", size=QUICK, say=lines.append)
    announced = [line for line in lines if line.lstrip().startswith("[")]
    assert [a.split("]")[1].split()[0] for a in announced] == ["1/5", "2/5", "3/5", "4/5", "5/5"]
    runs = tmp_path / "demo" / "runs" / TASK
    found = sorted(str(p.relative_to(runs)) for p in runs.rglob("results.json"))
    assert found == [f"{b}/{m}/seed0/results.json" for b in ("moco_v2_tiny", "random") for m in ("finetune", "frozen")]
    with open(runs / "moco_v2_tiny" / "frozen" / "seed0" / "results.json") as f:
        record = json.load(f)
    assert record["weights"].endswith("moco_v2_tiny.pkl") and record["mode"] == "frozen"
    with open(files.table_md) as f:
        table = f.read()
    assert "random (baseline)" in table and "moco_v2_tiny" in table and "frozen" in table
    assert os.path.getsize(files.report_html) > 1000 and files.plots
    # a second run finds every step done and only rebuilds the report
    again = []
    run_demo(tmp_path / "demo", size=QUICK, say=again.append)
    assert not any(line.strip().startswith("iteration ") for line in again)
