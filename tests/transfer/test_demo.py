"""The demo, at its smallest settings, runs the whole pipeline end to end; its runner and its verdicts."""
import json
import os
import re
import sys

import pytest
from scipy import stats

from transfer.demo import BASELINE, PRETRAINED, QUICK, TASK, DemoError, run_demo, run_parallel, verdicts
from transfer.report import make_tables


def test_quick_demo_end_to_end(tmp_path):
    lines = []
    files = run_demo(tmp_path / "demo", size=QUICK, say=lines.append)
    announced = [line for line in lines if line.lstrip().startswith("[")]
    assert [a.split("]")[1].split()[0] for a in announced] == ["1/5", "2/5", "3/5", "4/5", "5/5"]
    runs = tmp_path / "demo" / "runs" / TASK
    found = sorted(str(p.relative_to(runs)) for p in runs.rglob("results.json"))
    assert found == [f"{b}/{m}/seed{s}/results.json" for b in (PRETRAINED, BASELINE) for m in ("finetune", "frozen")
                     for s in QUICK.seeds]
    assert len(QUICK.seeds) >= 2  # every row over several seeds, as the full demo
    with open(runs / PRETRAINED / "frozen" / "seed1" / "results.json") as f:
        record = json.load(f)
    assert record["weights"].endswith(f"{PRETRAINED}.pkl") and record["mode"] == "frozen" and record["seed"] == 1
    with open(files.table_md) as f:
        table = f.read()
    assert f"{BASELINE} (baseline)" in table and PRETRAINED in table and "frozen" in table
    assert "(n=2: too few seeds)" in table and "**[" not in table  # two seeds: no test, no mark
    said = [line for line in lines if line.startswith(("finetune: ", "frozen: "))]
    assert len(said) == 2 and all("not tested" in line for line in said)
    assert sum(re.match(r"\s+done \d+/\d+: ", line) is not None for line in lines) == 4 * len(QUICK.seeds)
    assert os.path.getsize(files.report_html) > 1000 and files.plots
    # a second run finds every step done and only rebuilds the report
    again = []
    run_demo(tmp_path / "demo", size=QUICK, say=again.append)
    assert not any(re.match(r"\s+(iteration |done \d+/)", line) for line in again)


def test_runner_stops_at_a_failed_run(tmp_path):
    ok = [sys.executable, "-c", "import os; print(os.environ['OMP_NUM_THREADS'])"]
    bad = [sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"]
    said = []
    assert run_parallel([("a", ok, str(tmp_path / "a" / "log")), ("b", ok, str(tmp_path / "b" / "log"))],
                        dict(os.environ), say=said.append) == 2
    assert said[-1] == "    done 2/2: b" or said[-1] == "    done 2/2: a"
    assert (tmp_path / "a" / "log").read_text().strip().isdigit()  # one thread count per run
    with pytest.raises(DemoError, match=r"^bad failed \(exit 3\): boom \(log: .*bad.log\)$"):
        run_parallel([("bad", bad, str(tmp_path / "bad.log"))], dict(os.environ), say=said.append)


def _write(root, backbone, mode, seed, ap):
    folder = os.path.join(root, TASK, backbone, mode, f"seed{seed}")
    os.makedirs(folder)
    with open(os.path.join(folder, "results.json"), "w") as f:
        json.dump({"backbone": backbone, "task": TASK, "mode": mode, "seed": seed, "weights": "",
                   "iterations": 300, "metrics": {"bbox": {"AP": ap}}}, f)


def test_verdicts_name_the_test_and_its_outcome(tmp_path):
    root = str(tmp_path)
    base = {"frozen": [0.10, 0.12, 0.11], "finetune": [0.50, 0.40, 0.60]}
    mine = {"frozen": [0.30, 0.33, 0.31], "finetune": [0.52, 0.38, 0.65]}
    for mode in base:
        for seed in range(3):
            _write(root, BASELINE, mode, seed, base[mode][seed])
            _write(root, PRETRAINED, mode, seed, mine[mode][seed])
    _, tables = make_tables(root, baseline=BASELINE)
    lines = dict(line.split(": ", 1) for line in verdicts(tables))
    p_frozen = stats.ttest_rel(mine["frozen"], base["frozen"]).pvalue
    p_finetune = stats.ttest_rel(mine["finetune"], base["finetune"]).pvalue
    assert p_frozen < 0.05 < p_finetune
    assert lines["frozen"].startswith(f"{PRETRAINED} vs {BASELINE}, box AP +0.203 over 3 seeds: beyond seed noise")
    assert f"p = {p_frozen:.2g}" in lines["frozen"] and "paired t-test" in lines["frozen"]
    assert "within seed noise" in lines["finetune"] and f"p = {p_finetune:.2g}" in lines["finetune"]
