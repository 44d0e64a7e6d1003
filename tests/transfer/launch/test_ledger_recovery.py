"""A sweep's ledger lost or damaged: the run folders are the truth. Finished runs are adopted (never run
again, their results.json untouched), a damaged ledger is refused in one line that says how to rebuild it,
--rebuild-ledger rebuilds it, a results.json of another run is never overwritten, and a new ledger waits
for the jobs of an earlier submission that still run."""
import json
import os
import sys
import time

import cloudpickle
import pytest
import yaml

from pretrain.common.runs import results_record, write_results
from transfer.launch.ledger import Ledger
from transfer.launch.scheduler import live_jobs_in
from transfer.launch.resources import Resources
from transfer.launch.sweep import run_sweep
from transfer.launch.sweep_fields import SweepError
from transfer.training.config import TINY_OVERRIDES

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # local jobs unpickle ResultJob in another process

TASK = "voc_faster_rcnn_R_50_C4_24k"
DEBUG = {"cluster": "debug", "gpus_per_node": 0}
QUIET = dict(out=lambda *a, **k: None)


class ResultJob:
    """Stands in for a transfer run: notes each call in calls.txt and writes the run's own results.json
    (waits for ``go`` first, when given)."""

    def __init__(self, run, resume, go=None):
        self.task, self.backbone, self.mode, self.seed = run.task, run.backbone, run.mode, run.seed
        self.output_dir, self.resume, self.go = run.output_dir, resume, go

    def __call__(self):
        os.makedirs(self.output_dir, exist_ok=True)
        with open(os.path.join(self.output_dir, "calls.txt"), "a") as f:
            f.write(f"resume={self.resume}\n")
        deadline = time.time() + 120
        while self.go and not os.path.exists(self.go) and time.time() < deadline:
            time.sleep(0.05)
        write_results(self.output_dir, results_record(backbone=self.backbone, task=self.task, mode=self.mode,
                                                      seed=self.seed, weights="", iterations=1,
                                                      metrics={"bbox": {"AP": 10.0 + self.seed}}))
        return "ok"


def result_job(run, resume):
    return ResultJob(run, resume)


def write_sweep(path, seeds=(0, 1, 2)):
    data = {"name": "lost", "backbones": {"random": ""}, "tasks": [TASK], "modes": ["finetune"],
            "seeds": list(seeds), "overrides": TINY_OVERRIDES + ["SOLVER.MAX_ITER", "1"]}
    path.write_text(yaml.safe_dump(data))
    return str(path)


def run_folder(root, seed):
    return root / TASK / "random" / "finetune" / f"seed{seed}"


def calls(root, seed):
    path = run_folder(root, seed) / "calls.txt"
    return path.read_text().split() if path.exists() else []


def snapshot(root):
    """Every file under ``root`` with its size, mtime and content (to prove that nothing changed)."""
    files = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            st = os.stat(path)
            with open(path, "rb") as f:
                files[os.path.relpath(path, root)] = (st.st_size, st.st_mtime_ns, f.read())
    return files


def one_line_error(code, err):
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture
def finished(tmp_path):
    """A sweep of three runs, all done through the debug cluster: (sweep file, root)."""
    path = write_sweep(tmp_path / "lost.yaml")
    root = tmp_path / "root"
    ledger = run_sweep(path, root, DEBUG, make_job=result_job, check=False, **QUIET)
    assert ledger.counts()["done"] == 3
    return path, root


# ----------------------------------------------------------------------------------- a lost ledger

def test_lost_ledger_adopts_finished_runs_and_resumes_started_ones(finished):
    path, root = finished
    (root / "sweep.json").unlink()
    before = {s: snapshot(run_folder(root, s)) for s in (0, 1)}
    (run_folder(root, 2) / "results.json").unlink()           # seed 2: interrupted after a checkpoint
    (run_folder(root, 2) / "last_checkpoint").write_text("model_0000001.pth")
    lines = []
    ledger = run_sweep(path, root, DEBUG, make_job=result_job, check=False, out=lambda *a, **k: lines.append(a[0]))

    records = {r["id"].rsplit("/", 1)[1]: r for r in ledger.runs}
    for seed in (0, 1):  # adopted: not run again, results.json byte for byte and mtime unchanged
        assert calls(root, seed) == ["resume=False"]
        assert snapshot(run_folder(root, seed)) == before[seed]
        r = records[f"seed{seed}"]
        assert (r["state"], r["adopted"], r["job_id"], r["attempts"]) == ("done", "results.json", None, 0)
    assert calls(root, 2) == ["resume=False", "resume=True"]  # continued from its checkpoint
    assert records["seed2"]["state"] == "done" and records["seed2"]["adopted"] == "last_checkpoint"
    assert any("adopted from their run folders: 2 finished run(s)" in line and "1 with a checkpoint" in line
               for line in lines), lines
    assert Ledger.load(str(root)).data == ledger.data

    # the grid grows: the new seed runs, the adopted ones stay as they are
    before = snapshot(root / TASK)
    grown = run_sweep(write_sweep(root.parent / "lost.yaml", seeds=(0, 1, 2, 3)), root, DEBUG,
                      make_job=result_job, check=False, **QUIET)
    assert grown.counts()["done"] == 4 and calls(root, 3) == ["resume=False"]
    after = snapshot(root / TASK)
    assert {k: v for k, v in after.items() if "seed3" not in k} == before


# ------------------------------------------------------------------------------- a damaged ledger

def _truncate(text):
    return text[: len(text) // 2]


def _drop_key(key, index=1):
    def damage(text):
        data = json.loads(text)
        del data["runs"][index][key]
        return json.dumps(data)
    return damage


def _set(key, value, index=1):
    def damage(text):
        data = json.loads(text)
        data["runs"][index][key] = value
        return json.dumps(data)
    return damage


@pytest.mark.parametrize("damage, message", [
    (_truncate, "the ledger is truncated or not JSON"),
    (lambda text: "", "the ledger is empty"),
    (_drop_key("job_id"), f"run entry 1 ({TASK}/random/finetune/seed1) lacks 'job_id'"),
    (_set("state", "finished"), "state 'finished' is not one of pending, running, done, failed"),
    (_set("attempts", "2"), "'attempts' is '2' (expected int)"),
    (lambda text: json.dumps({"name": "lost", "runs": {}}), "not a sweep ledger (no 'runs' list)"),
    (lambda text: json.dumps({**json.loads(text), "runs": json.loads(text)["runs"] * 2}), "a second entry"),
])
def test_damaged_ledger_is_refused_in_one_line_saying_how_to_rebuild(synthetic_root, finished, submit_cli, damage,
                                                                     message):
    path, root = finished
    ledger = root / "sweep.json"
    ledger.write_text(damage(ledger.read_text()))
    before = snapshot(root)
    for argv in (["status", str(root)],
                 ["sweep", path, "--output-root", str(root), "--cluster", "debug", "--gpus-per-node", "0"],
                 ["sweep", path, "--output-root", str(root), "--dry-run", "--cluster", "debug"]):
        code, out, err = submit_cli(argv)
        line = one_line_error(code, err)
        assert message in line and str(ledger) in line, line
        assert "--rebuild-ledger" in line and f"--output-root {root}" in line, line
        if damage is _truncate:  # the sweep file is named when the damaged text still says it
            assert f"submit.py sweep {path} " in line, line
        assert snapshot(root) == before  # nothing written, nothing overwritten


def test_rebuild_ledger_from_the_run_folders(synthetic_root, finished, submit_cli):
    path, root = finished
    ledger = root / "sweep.json"
    damaged = _drop_key("job_id")(ledger.read_text())
    ledger.write_text(damaged)
    results = {s: snapshot(run_folder(root, s)) for s in (0, 1, 2)}
    # the dry run writes nothing and would submit nothing: every run is finished
    code, out, err = submit_cli(["sweep", path, "--output-root", str(root), "--rebuild-ledger", "--dry-run",
                                 "--cluster", "debug", "--gpus-per-node", "0"])
    assert code == 0 and "3 runs, 0 to submit" in out, err
    assert ledger.read_text() == damaged
    code, out, err = submit_cli(["sweep", path, "--output-root", str(root), "--rebuild-ledger",
                                 "--cluster", "debug", "--gpus-per-node", "0"])
    assert code == 0, err
    kept = [n for n in os.listdir(root) if n.startswith("sweep.json.broken-")]
    assert len(kept) == 1 and (root / kept[0]).read_text() == damaged
    assert f"kept as {root / kept[0]}" in out and "3 finished run(s)" in out
    rebuilt = Ledger.load(str(root))
    assert rebuilt.counts()["done"] == 3 and all(r["adopted"] == "results.json" for r in rebuilt.runs)
    for seed in (0, 1, 2):
        assert calls(root, seed) == ["resume=False"] and snapshot(run_folder(root, seed)) == results[seed]
    code, out, _ = submit_cli(["status", str(root)])
    assert code == 0 and "3 done" in out


def test_rebuild_refuses_a_ledger_that_loads(synthetic_root, finished, submit_cli):
    path, root = finished
    before = snapshot(root)
    code, _, err = submit_cli(["sweep", path, "--output-root", str(root), "--rebuild-ledger",
                               "--cluster", "debug", "--gpus-per-node", "0"])
    line = one_line_error(code, err)
    assert "is a valid ledger (3 runs) and is kept" in line
    assert snapshot(root) == before


# ------------------------------------------------------------------- results that are not the run's

@pytest.mark.parametrize("content, message", [
    ("{\"task\": \"x\"", "is not valid JSON"),
    ("", "is empty"),
    (json.dumps(results_record(backbone="random", task=TASK, mode="finetune", seed=7, weights="", iterations=1,
                               metrics={"bbox": {"AP": 1.0}})), f"holds the results of {TASK}/random/finetune/seed7"),
    (json.dumps({"ok": True}), "lacks the task, backbone, mode and seed"),
])
def test_results_of_another_run_are_never_overwritten(synthetic_root, tmp_path, submit_cli, content, message):
    path = write_sweep(tmp_path / "lost.yaml", seeds=(0,))
    root = tmp_path / "root"
    folder = run_folder(root, 0)
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(content)
    before = snapshot(root)
    for extra in ([], ["--dry-run"]):
        code, _, err = submit_cli(["sweep", path, "--output-root", str(root), "--cluster", "debug",
                                   "--gpus-per-node", "0", *extra])
        line = one_line_error(code, err)
        assert str(folder / "results.json") in line and message in line and "move it away" in line, line
        assert snapshot(root) == before and not (root / "sweep.json").exists()


# ------------------------------------------------------------------- jobs of a lost ledger still run

def test_a_new_ledger_waits_for_jobs_still_running(tmp_path):
    path = write_sweep(tmp_path / "lost.yaml", seeds=(0,))
    root = tmp_path / "root"
    go = tmp_path / "GO"
    res = {"cluster": "local", "gpus_per_node": 0, "timeout_min": 5}
    ledger = run_sweep(path, root, res, make_job=lambda run, resume: ResultJob(run, resume, str(go)), check=False,
                       **QUIET)
    job_id = ledger.runs[0]["job_id"]
    local = Resources(cluster="local", gpus_per_node=0)
    deadline = time.time() + 60
    while not calls(root, 0) and time.time() < deadline:  # the job runs (and waits for GO)
        time.sleep(0.1)
    assert job_id in live_jobs_in(local, str(root / "submitit" / "%j"))
    (root / "sweep.json").unlink()
    try:
        with pytest.raises(SweepError, match=f"job\\(s\\) {job_id} of an earlier submission still run"):
            run_sweep(path, root, res, make_job=result_job, check=False, **QUIET)
        assert not (root / "sweep.json").exists() and calls(root, 0) == ["resume=False"]
    finally:
        go.write_text("")
    deadline = time.time() + 90
    while live_jobs_in(local, str(root / "submitit" / "%j")) and time.time() < deadline:
        time.sleep(0.2)
    ledger = run_sweep(path, root, res, make_job=result_job, check=False, **QUIET)
    assert ledger.runs[0]["state"] == "done" and ledger.runs[0]["adopted"] == "results.json"
    assert calls(root, 0) == ["resume=False"]
