"""Sweeps: the sweep file, grid expansion and output paths, the ledger through submit, success, failure,
resubmission and re-runs (submitit's local and debug executors), and a tiny sweep on the local executor."""
import json
import os
import sys
import time

import cloudpickle
import pytest
import yaml

from transfer.training.config import TINY_OVERRIDES
from transfer.launch.grid import expand
from transfer.launch.ledger import Ledger, format_status, sweep_status
from transfer.launch.sweep import run_sweep
from transfer.launch.sweep_fields import SweepError
from transfer.launch.sweep_file import GRID_KEYS, load_sweep
from pretrain.common.paths import REPO_ROOT

REPO = REPO_ROOT
SWEEPS = os.path.join(REPO, "configs", "sweeps")
TINY = TINY_OVERRIDES + ["MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64"]

# the cheap jobs below are defined here; local jobs unpickle them in another process
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def write_sweep(path, **fields):
    data = {"name": "t", "backbones": {"random": ""}, "tasks": ["coco_mask_rcnn_R_50_FPN_1x"],
            "modes": ["finetune"], "seeds": [0], "overrides": []}
    data.update(fields)
    with open(path, "w") as f:
        yaml.safe_dump(data, f)
    return str(path)


# ------------------------------------------------------------------------------------ file and grid

def test_grid_expansion_and_output_paths(tmp_path):
    weights = tmp_path / "w.pkl"
    weights.write_bytes(b"")
    path = write_sweep(tmp_path / "s.yaml", backbones={"mine": str(weights), "random": ""},
                       tasks=["coco_mask_rcnn_R_50_FPN_1x", "voc_faster_rcnn_R_50_C4_24k"],
                       modes=["finetune", "frozen"], seeds=[3, 7],
                       overrides=["SOLVER.MAX_ITER", 5, "INPUT.MIN_SIZE_TRAIN", [128]])
    sweep = load_sweep(path)
    runs = expand(sweep, tmp_path / "root")
    assert len(runs) == 2 * 2 * 2 * 2 == len({r.id for r in runs})
    assert runs[0].id == "coco_mask_rcnn_R_50_FPN_1x/mine/finetune/seed3"
    assert runs[-1].id == "voc_faster_rcnn_R_50_C4_24k/random/frozen/seed7"
    for run in runs:
        task, backbone, mode, seed = run.id.split("/")
        assert run.output_dir == os.path.join(str(tmp_path / "root"), task, backbone, mode, seed)
        assert (run.task, run.backbone, run.mode, f"seed{run.seed}") == (task, backbone, mode, seed)
        assert run.config_file == os.path.join(REPO, "configs", "transfer", task + ".yaml")
        argv = run.argv
        assert argv[:2] == ["--config-file", run.config_file]
        opts = dict(zip(argv[2::2], argv[3::2]))
        assert opts["SOLVER.MAX_ITER"] == "5" and opts["INPUT.MIN_SIZE_TRAIN"] == "(128,)"
        assert opts["OUTPUT_DIR"] == run.output_dir and opts["SEED"] == str(run.seed)
        assert opts["TRANSFER.MODE"] == mode and opts["TRANSFER.BACKBONE_NAME"] == backbone
        assert opts["MODEL.WEIGHTS"] == (str(weights) if backbone == "mine" else "")


@pytest.mark.parametrize("fields, message", [
    ({"tasks": ["coco_mask_rcnn_R_50_FPN_9x"]}, "unknown task 'coco_mask_rcnn_R_50_FPN_9x'"),
    ({"backbones": {"mine": "weights/nope_R_50.pkl"}}, "weights file not found: weights/nope_R_50.pkl"),
    ({"modes": ["finetune", "linear"]}, "mode 'linear' is not one of finetune, frozen"),
    ({"overrides": ["SEED", "3"]}, "overrides may not set SEED"),
    ({"overrides": ["SOLVER.MAX_ITER"]}, "KEY, VALUE pairs"),
    ({"seeds": [0, "one"]}, "seed 'one' must be a non-negative integer"),
    ({"seeds": []}, "'seeds' is missing or empty"),
    ({"backbones": {"a/b": ""}}, "backbone name 'a/b'"),
    ({"name": "bad name; rm"}, "'name' must be"),
    ({"resources": {"gpus": 8}}, "unknown key(s) gpus"),
    ({"resources": {"cluster": "lsf"}}, "cluster 'lsf' is not one of"),
    ({"extra": 1}, "unknown key(s) extra"),
])
def test_sweep_file_errors_are_one_line_and_submit_nothing(tmp_path, submit_cli, fields, message):
    path = write_sweep(tmp_path / "s.yaml", **fields)
    with pytest.raises(SweepError, match=None) as info:
        load_sweep(path)
    assert message in str(info.value) and "\n" not in str(info.value)
    code, out, err = submit_cli(["sweep", path, "--output-root", str(tmp_path / "root"), "--cluster", "local"])
    assert code == 2 and err.count("\n") == 1 and err.startswith("submit sweep: error: ") and message in err
    assert not (tmp_path / "root").exists()


def test_shipped_sweeps(synthetic_root):
    expected = {"infomin_table2.yaml": (4, 5, ["finetune"], 1, "Table 2"),
                "infomin_voc_table3.yaml": (1, 6, ["finetune"], 5, "Table 3"),
                "wu2020_frozen_r18.yaml": (5, 6, ["frozen"], 1, "Table 2"),
                "demo.yaml": (2, 1, ["finetune", "frozen"], 2, "Table"),
                "wu2020_table2.yaml": (5, 6, ["frozen"], 1, "Table 2"),
                "infomin_reverse_u.yaml": (0, 14, ["frozen"], 1, "Fig. 5"),
                "infomin_reverse_u_tiny.yaml": (0, 7, ["frozen"], 1, "Fig. 5"),
                "curves_tiny.yaml": (0, 2, ["frozen"], 1, "Transfer curves")}
    assert sorted(f for f in os.listdir(SWEEPS) if f.endswith(".yaml")) == sorted(expected)
    for name, (tasks, backbones, modes, seeds, table) in expected.items():
        with open(os.path.join(SWEEPS, name)) as f:
            first = f.readline()
        assert first.startswith("# ") and table in first, name  # names the table it reproduces
        sweep = load_sweep(os.path.join(SWEEPS, name), check_weights=False)
        grid = (len(sweep.tasks), len(sweep.backbones) + len(sweep.pretrain), sweep.modes, len(sweep.seeds))
        assert grid == (tasks, backbones, modes, seeds), name
    table2 = load_sweep(os.path.join(SWEEPS, "infomin_table2.yaml"), check_weights=False)
    assert set(table2.tasks) == {"coco_mask_rcnn_R_50_FPN_1x", "coco_mask_rcnn_R_50_FPN_2x",
                                 "coco_mask_rcnn_R_50_C4_1x", "coco_mask_rcnn_R_50_C4_2x"}
    assert table2.backbones["random"] == "" and table2.backbones["infomin"].endswith("weights/infomin_R_50.pkl")
    assert "supervised" in table2.backbones
    wu = load_sweep(os.path.join(SWEEPS, "wu2020_frozen_r18.yaml"), check_weights=False)
    assert {"coco_keypoint_rcnn_R_50_FPN_1x", "voc_faster_rcnn_R_50_C4_24k"} <= set(wu.tasks)
    assert any(t.startswith("lvis") for t in wu.tasks)
    # Table 2 end to end: the six methods pretrained, linear evaluation and the same five frozen tasks
    table2 = load_sweep(os.path.join(SWEEPS, "wu2020_table2.yaml"), check_weights=False)
    assert set(table2.tasks) == set(wu.tasks) and table2.modes == ["frozen"]
    assert {b: s.method for b, s in table2.pretrain.items()} == {
        "ir": "ir", "ball": "ball", "ann": "ann", "la": "la", "ball+": "ball_plus", "ann+": "ann_plus"}
    assert [s.name for s in table2.linear] == ["imagenet"]
    from transfer.report.references import find_references, load_references

    refs = load_references()
    for task in table2.tasks:  # the backbone names are the references' (the tables put them side by side)
        assert set(table2.pretrain) == {r.backbone for r in find_references(refs, paper="Wu2020", task=task)}
    # the reverse-U study: one augmentation per backbone at several strengths, MI with each one's own views
    for name in ("infomin_reverse_u.yaml", "infomin_reverse_u_tiny.yaml"):
        ru = load_sweep(os.path.join(SWEEPS, name), check_weights=False)
        views = {b: dict(zip(s.overrides[::2], s.overrides[1::2]))["INPUT.VIEWS"] for b, s in ru.pretrain.items()}
        assert set(views.values()) == {"color_jitter_only", "crop_only"}
        assert all(v == ("color_jitter_only" if b.startswith("cj") else "crop_only") for b, v in views.items())
        assert [m.views for m in ru.mi] == ["pretrain"] and {s.name for s in ru.linear} == {"color", "digit", "position"}
    # the demo is complete: configs build and the datasets it names are there
    from transfer.launch.grid import check_runs
    from transfer.launch.resources import Resources

    demo = load_sweep(os.path.join(SWEEPS, "demo.yaml"))
    assert demo.resources["cluster"] == "local" and demo.resources["gpus_per_node"] == 0
    pairs = dict(zip(demo.overrides[::2], demo.overrides[1::2]))
    assert all(pairs.get(k) == v for k, v in zip(TINY_OVERRIDES[::2], TINY_OVERRIDES[1::2])), "demo.yaml: TINY_OVERRIDES"
    check_runs(expand(demo, "/tmp/unused"), Resources().updated(demo.resources))


def test_placeholder_weights_stop_the_paper_sweep_before_submitting(tmp_path, submit_cli):
    code, out, err = submit_cli(["sweep", os.path.join(SWEEPS, "infomin_table2.yaml"), "--dry-run",
                                  "--output-root", str(tmp_path / "root")])
    assert code == 2 and "weights file not found: weights/" in err and err.count("\n") == 1


# ------------------------------------------------------------------------------------------ the ledger

class CheapJob:
    """Stands in for a transfer run: waits for a GO file, then writes results.json or fails."""

    def __init__(self, output_dir, resume, go):
        self.output_dir, self.resume, self.go = output_dir, resume, go

    def __call__(self):
        os.makedirs(self.output_dir, exist_ok=True)
        with open(os.path.join(self.output_dir, "attempts.txt"), "a") as f:
            f.write(f"resume={self.resume} start={time.time()}\n")
        deadline = time.time() + 120
        while not os.path.exists(self.go) and time.time() < deadline:
            time.sleep(0.05)
        if os.path.exists(os.path.join(self.output_dir, "FAIL")):
            raise RuntimeError(f"planned failure in {os.path.basename(self.output_dir)}")
        with open(os.path.join(self.output_dir, "attempts.txt"), "a") as f:
            f.write(f"end={time.time()}\n")
        with open(os.path.join(self.output_dir, "results.json"), "w") as f:
            json.dump({"ok": True}, f)
        return "ok"

    def checkpoint(self, *args, **kwargs):
        import submitit

        return submitit.helpers.DelayedSubmission(CheapJob(self.output_dir, True, self.go))


def _cheap(go):
    return lambda run, resume: CheapJob(run.output_dir, resume, str(go))


def _wait_states(root, done, timeout=90):
    deadline = time.time() + timeout
    while True:
        ledger = sweep_status(root)
        if done(ledger) or time.time() > deadline:
            return ledger
        time.sleep(0.3)


def test_ledger_through_submit_success_failure_resubmission_and_rerun(tmp_path, submit_cli):
    path = write_sweep(tmp_path / "s.yaml", seeds=[0, 1, 2])
    root = tmp_path / "root"
    go = tmp_path / "GO"
    (root / "coco_mask_rcnn_R_50_FPN_1x" / "random" / "finetune" / "seed1").mkdir(parents=True)
    (root / "coco_mask_rcnn_R_50_FPN_1x" / "random" / "finetune" / "seed1" / "FAIL").write_text("")
    res = {"cluster": "local", "gpus_per_node": 0, "array_parallelism": 8, "timeout_min": 5}

    ledger = run_sweep(path, root, res, make_job=_cheap(go), check=False, out=lambda *a, **k: None)
    with open(root / "sweep.json") as f:
        on_disk = json.load(f)
    assert on_disk == ledger.data and on_disk["name"] == "t" and len(on_disk["runs"]) == 3
    for record in on_disk["runs"]:
        assert record["state"] == "pending" and record["job_id"] and record["cluster"] == "local"
        assert record["attempts"] == 1 and record["history"] == []
        assert record["output_dir"] == str(root / record["id"])
        assert record["stdout"].endswith("_0_log.out") and record["job_id"] in record["stdout"]
        assert "--config-file" in record["command"] and "SEED" in record["command"]
    first_ids = {r["id"]: r["job_id"] for r in on_disk["runs"]}

    # jobs hold on GO: they run; a second submission of the same sweep duplicates nothing
    ledger = _wait_states(root, lambda l: l.counts()["running"] == 3)
    assert ledger.counts()["running"] == 3
    again = run_sweep(path, root, res, make_job=_cheap(go), check=False, out=lambda *a, **k: None)
    assert {r["id"]: r["job_id"] for r in again.runs} == first_ids

    go.write_text("")
    ledger = _wait_states(root, lambda l: l.counts()["done"] + l.counts()["failed"] == 3)
    states = {r["id"].rsplit("/", 1)[1]: r for r in ledger.runs}
    assert [states[s]["state"] for s in ("seed0", "seed1", "seed2")] == ["done", "failed", "done"]
    failed = states["seed1"]
    assert "RuntimeError: planned failure in seed1" in failed["error"] and os.path.isfile(failed["stderr"])
    table = format_status(ledger)
    assert "1 failed" in table and "planned failure in seed1" in table and failed["stderr"] in table
    code, out, _ = submit_cli(["status", str(root)])
    assert code == 0 and "2 done" in out and "seed1: RuntimeError: planned failure" in out

    # re-run: only the failed run goes out again, with --resume; its earlier attempt is in the history
    (root / failed["id"] / "FAIL").unlink()
    rerun = run_sweep(path, root, res, make_job=_cheap(go), check=False, out=lambda *a, **k: None)
    records = {r["id"]: r for r in rerun.runs}
    assert records[failed["id"]]["job_id"] != failed["job_id"] and records[failed["id"]]["attempts"] == 2
    assert records[failed["id"]]["history"][0]["job_id"] == failed["job_id"]
    assert records[failed["id"]]["history"][0]["state"] == "failed"
    for rid, record in records.items():
        if rid != failed["id"]:
            assert record["job_id"] == first_ids[rid] and record["attempts"] == 1
    ledger = _wait_states(root, lambda l: l.counts()["done"] == 3)
    assert ledger.counts() == {"pending": 0, "running": 0, "done": 3, "failed": 0}
    attempts = (root / failed["id"] / "attempts.txt").read_text()
    assert "resume=False" in attempts and "resume=True" in attempts

    # idempotent: a third run submits nothing and changes no record
    before = json.loads((root / "sweep.json").read_text())["runs"]
    run_sweep(path, root, res, make_job=_cheap(go), check=False, out=lambda *a, **k: None)
    assert json.loads((root / "sweep.json").read_text())["runs"] == before


def test_local_parallelism_limit_and_wait(tmp_path):
    path = write_sweep(tmp_path / "s.yaml", seeds=[0, 1, 2])
    root = tmp_path / "root"
    go = tmp_path / "GO"
    go.write_text("")
    res = {"cluster": "local", "gpus_per_node": 0, "array_parallelism": 1, "timeout_min": 5}
    ledger = run_sweep(path, root, res, make_job=_cheap(go), check=False, wait=True, poll_s=0.2, timeout_s=120,
                       out=lambda *a, **k: None)
    assert ledger.counts()["done"] == 3
    spans = []
    for record in ledger.runs:
        text = (root / record["id"] / "attempts.txt").read_text()
        start = float(text.split("start=")[1].split()[0])
        end = float(text.split("end=")[1].split()[0])
        spans.append((start, end))
    spans.sort()
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))  # one at a time


def test_debug_cluster_runs_in_this_process(tmp_path):
    path = write_sweep(tmp_path / "s.yaml", seeds=[0, 1])
    root = tmp_path / "root"
    go = tmp_path / "GO"
    go.write_text("")
    (root / "coco_mask_rcnn_R_50_FPN_1x" / "random" / "finetune" / "seed1").mkdir(parents=True)
    (root / "coco_mask_rcnn_R_50_FPN_1x" / "random" / "finetune" / "seed1" / "FAIL").write_text("")
    ledger = run_sweep(path, root, {"cluster": "debug", "gpus_per_node": 0}, make_job=_cheap(go), check=False,
                       out=lambda *a, **k: None)
    assert [r["state"] for r in ledger.runs] == ["done", "failed"]
    assert "planned failure" in ledger.runs[1]["error"]
    assert Ledger.load(str(root)).data == ledger.data


def test_ledger_of_another_sweep_is_refused(tmp_path):
    root = tmp_path / "root"
    go = tmp_path / "GO"
    go.write_text("")
    run_sweep(write_sweep(tmp_path / "a.yaml", name="a"), root, {"cluster": "debug", "gpus_per_node": 0},
              make_job=_cheap(go), check=False, out=lambda *a, **k: None)
    with pytest.raises(SweepError, match="belongs to sweep 'a'"):
        run_sweep(write_sweep(tmp_path / "b.yaml", name="b"), root, {"cluster": "debug", "gpus_per_node": 0},
                  make_job=_cheap(go), check=False, out=lambda *a, **k: None)


# --------------------------------------------------------------------------- a real sweep, locally

def tiny_sweep(tmp_path, name="tiny"):
    """Two tiny training runs (one task, one backbone, one mode, two seeds)."""
    return write_sweep(tmp_path / f"{name}.yaml", name=name, tasks=["voc_faster_rcnn_R_50_C4_24k"], seeds=[0, 1],
                       modes=["finetune"],
                       overrides=TINY + ["SOLVER.MAX_ITER", "2", "TEST.PRECISE_BN.ENABLED", "False"])


def test_tiny_sweep_on_the_local_executor(synthetic_root, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    root = tmp_path / "root"
    ledger = run_sweep(tiny_sweep(tmp_path), root, {"cluster": "local", "gpus_per_node": 0, "timeout_min": 10,
                                                    "array_parallelism": 2},
                       wait=True, poll_s=0.5, timeout_s=400, out=lambda *a, **k: None)
    assert ledger.counts()["done"] == 2, format_status(ledger)
    for seed in (0, 1):
        with open(root / "voc_faster_rcnn_R_50_C4_24k" / "random" / "finetune" / f"seed{seed}" / "results.json") as f:
            res = json.load(f)
        assert (res["task"], res["backbone"], res["mode"], res["seed"]) == ("voc_faster_rcnn_R_50_C4_24k", "random",
                                                                            "finetune", seed)
        assert "AP50" in res["metrics"]["bbox"]
    assert set(GRID_KEYS) <= set(ledger.runs[0]["command"].split())
