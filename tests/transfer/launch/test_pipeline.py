"""Sweeps that pretrain their backbones: the pretrain/evaluations sections, run order and dependencies,
a tiny pretrain -> convert -> frozen Detectron2 run on the debug cluster, and the SLURM dependency flags."""
import json
import os
import pickle

import pytest
import yaml

from transfer.training.config import TINY_OVERRIDES
from transfer.launch.grid import expand
from transfer.launch.ledger import Ledger
from transfer.launch.sweep import run_sweep, select_runs
from transfer.launch.sweep_fields import SweepError
from transfer.launch.sweep_file import load_sweep
from pretrain.common.paths import REPO_ROOT

REPO = REPO_ROOT
PRETRAIN = os.path.join(REPO, "configs", "pretrain")
TINY_PRETRAIN = ["MODEL.ARCH", "resnet18", "INPUT.SIZE", "32", "SOLVER.BATCH_SIZE", "8", "MOCO.K", "16",
                 "MODEL.DIM", "16", "SOLVER.MAX_ITER", "2", "KNN.PERIOD", "0", "DATA.NUM_WORKERS", "0",
                 "MODEL.PRECISION", "fp32", "TENSORBOARD", "False"]
TINY_TRANSFER = TINY_OVERRIDES + ["SOLVER.MAX_ITER", "2"]


def write(path, data):
    with open(path, "w") as f:
        yaml.safe_dump(data, f)
    return str(path)


def pipeline_sweep(tmp_path, imagenet, **extra):
    data = {"name": "pipe", "pretrain": {"overrides": ["DATA.ROOT", imagenet, *TINY_PRETRAIN],
                                         "backbones": {"moco": os.path.join(PRETRAIN, "moco_v2_R_50.yaml")}},
            "tasks": ["voc_faster_rcnn_R_50_C4_24k"], "modes": ["frozen"], "seeds": [0],
            "overrides": TINY_TRANSFER, "resources": {"cluster": "debug", "gpus_per_node": 0}}
    data.update(extra)
    return write(tmp_path / "pipe.yaml", data)


def test_pretrain_section_order_and_dependencies(tmp_path, synthetic_root):
    root, _ = synthetic_root
    path = pipeline_sweep(tmp_path, str(root / "imagenet"), backbones={"random": ""})
    sweep = load_sweep(path)
    assert sweep.pretrain["moco"].method == "moco" and sweep.pretrain["moco"].rgb_backbone
    runs = expand(sweep, tmp_path / "out")
    assert [r.id for r in runs] == ["pretrain/moco", "voc_faster_rcnn_R_50_C4_24k/random/frozen/seed0",
                                    "voc_faster_rcnn_R_50_C4_24k/moco/frozen/seed0"]
    pre, rand, moco = runs
    assert pre.kind == "pretrain" and pre.done_file == "weights.pkl"
    assert pre.output_dir == str(tmp_path / "out" / "pretrain" / "moco")
    assert moco.after == ("pretrain/moco",) and rand.after == ()
    assert moco.weights == os.path.join(pre.output_dir, "weights.pkl")
    # only what has its prerequisites done is selected; on SLURM the dependants go with the job ids
    ledger = Ledger(str(tmp_path / "out"), {"name": "pipe", "runs": []})
    assert [r.id for r in select_runs(ledger, runs)] == [pre.id, rand.id]
    ledger.record(pre.id).update(state="pending", job_id="41")
    deps = {}
    assert [r.id for r in select_runs(ledger, runs, cluster="slurm", deps=deps)] == [rand.id, moco.id]
    assert deps == {moco.id: ["41"]}
    assert [r.id for r in select_runs(ledger, runs, cluster="local")] == [rand.id]
    ledger.record(pre.id)["state"] = "failed"
    assert [r.id for r in select_runs(ledger, runs, cluster="slurm", retry_failed=False)] == [rand.id]


@pytest.mark.parametrize("section, message", [
    ({"pretrain": {"backbones": {"x": "configs/pretrain/nope.yaml"}}}, "pretraining config not found"),
    ({"pretrain": {"backbones": {"x": {"config": os.path.join(PRETRAIN, "moco_v2_R_50.yaml"),
                                       "overrides": ["OUTPUT_DIR", "/tmp/x"]}}}}, "may not set OUTPUT_DIR"),
    ({"pretrain": {"backbones": {"x": {"config": os.path.join(PRETRAIN, "moco_v2_R_50.yaml"),
                                       "overrides": ["MODEL.METHOD", "nope"]}}}}, "unknown MODEL.METHOD 'nope'"),
    ({"pretrain": {"backbones": {"x y": os.path.join(PRETRAIN, "moco_v2_R_50.yaml")}}}, "letters, digits"),
    ({"pretrain": {"backbone": {}}}, "unknown key(s) backbone"),
    ({"evaluations": {"mi": {"a": {"pairing": "simclr"}}}}, "needs 'data'"),
    ({"evaluations": {"mi": {"a": {"data": "x", "pairing": "simclr", "k_est": 0}}}}, "k_est must be a positive"),
    ({"evaluations": {"linear": {"a": "configs/linear/nope.yaml"}}}, "linear-evaluation config not found"),
])
def test_pipeline_section_errors(tmp_path, section, message):
    data = {"name": "p", "backbones": {"random": ""}, "tasks": ["voc_faster_rcnn_R_50_C4_24k"],
            "modes": ["frozen"], "seeds": [0], **section}
    with pytest.raises(SweepError, match=None) as e:
        load_sweep(write(tmp_path / "s.yaml", data))
    assert message in str(e.value) and "\n" not in str(e.value)


def test_slurm_dependency_flags_in_the_script(tmp_path, synthetic_root, monkeypatch):
    """On SLURM the dependants are submitted at once, waiting on the pretraining job."""
    from transfer.launch import ledger as ledger_mod
    from transfer.launch import sweep as sweep_mod
    root, _ = synthetic_root
    path = pipeline_sweep(tmp_path, str(root / "imagenet"), resources={"cluster": "slurm", "gpus_per_node": 0})
    scripts = []

    class FakeJob:
        def __init__(self, job_id):
            self.job_id = job_id

    class FakeExecutor:
        def __init__(self, res, folder, name):
            self.params = {}

        def update_parameters(self, **kw):
            self.params.update(kw)

        def submit(self, job):
            scripts.append((type(job).__name__, dict(self.params)))
            return FakeJob(str(100 + len(scripts)))

    monkeypatch.setattr(sweep_mod, "make_executor", FakeExecutor)
    monkeypatch.setattr(sweep_mod, "check_cluster", lambda res: None)
    monkeypatch.setattr(ledger_mod, "job_states", lambda cluster, ids: {i: ("pending", "PENDING") for i in ids})
    ledger = run_sweep(path, str(tmp_path / "out"), out=lambda *a, **k: None)
    assert [s[0] for s in scripts] == ["PretrainStageJob", "TransferJob"]
    assert "additional_parameters" not in scripts[0][1]
    assert scripts[1][1]["additional_parameters"] == {"dependency": "afterok:101", "kill_on_invalid_dep": "yes"}
    states = {r["id"]: (r["state"], r["job_id"]) for r in ledger.runs}
    assert states == {"pretrain/moco": ("pending", "101"),
                      "voc_faster_rcnn_R_50_C4_24k/moco/frozen/seed0": ("pending", "102")}


def test_tiny_pipeline_on_the_debug_cluster(tmp_path, synthetic_root):
    """Pretraining, conversion to verified weights and a frozen Detectron2 run, one after the other."""
    root, _ = synthetic_root
    path = pipeline_sweep(tmp_path, str(root / "imagenet"))
    out = tmp_path / "out"
    lines = []
    ledger = run_sweep(path, str(out), out=lambda *a, **k: lines.append(" ".join(map(str, a))))
    states = {r["id"]: r["state"] for r in ledger.runs}
    assert states == {"pretrain/moco": "done", "voc_faster_rcnn_R_50_C4_24k/moco/frozen/seed0": "done"}, \
        [(r["id"], r["error"]) for r in ledger.runs]
    weights = out / "pretrain" / "moco" / "weights.pkl"
    with open(weights, "rb") as f:
        payload = pickle.load(f)
    assert payload["meta"]["cfg"]["MODEL.RESNETS.DEPTH"] == 18 and payload["meta"]["format"] == "pretrain"
    with open(out / "voc_faster_rcnn_R_50_C4_24k" / "moco" / "frozen" / "seed0" / "results.json") as f:
        results = json.load(f)
    assert results["backbone"] == "moco" and results["mode"] == "frozen"
    assert results["weights"] == str(weights)
    # a second submission has nothing to do
    again = run_sweep(path, str(out), out=lambda *a, **k: None)
    assert all(r["attempts"] == 1 for r in again.runs)


BANK_TINY = ["MODEL.ARCH", "resnet18", "INPUT.SIZE", "32", "SOLVER.BATCH_SIZE", "8", "MODEL.DIM", "16",
             "SOLVER.MAX_ITER", "4", "DATA.NUM_WORKERS", "0", "MODEL.PRECISION", "fp32", "TENSORBOARD", "False",
             "BANK.NUM_NEGATIVES", "16", "BALL.NEIGHBOURS", "8", "CLUSTER.K", "3", "CLUSTER.RUNS", "2",
             "LA.IR_EPOCHS", "0", "BALL.ANNEAL_EPOCHS", "(0.0, 1.0)", "SOLVER.EPOCHS", "2"]


def test_every_method_pretrains_converts_and_feeds_frozen_runs(tmp_path, synthetic_root):
    """Wu et al.'s methods and CMC through the whole pipeline, tiny: pretraining, conversion (CMC: none, its
    checkpoint is read directly), ImageNet-folder linear evaluation, a frozen Detectron2 run."""
    root, _ = synthetic_root
    imagenet = str(root / "imagenet")
    methods = ["ir", "ball", "ann", "la", "ball_plus", "ann_plus", "cmc"]
    data = {"name": "methods",
            "pretrain": {"overrides": ["DATA.ROOT", imagenet, *BANK_TINY],
                         "backbones": {m: os.path.join(PRETRAIN, f"{m}_R_18_cifar.yaml") for m in methods}},
            "evaluations": {"linear": {"tiny": {"config": os.path.join(REPO, "configs", "linear", "cdp.yaml"),
                                                "overrides": ["DATA.ROOT", imagenet, "DATA.ATTRIBUTE", "",
                                                              "INPUT.SIZE", "32", "SOLVER.EPOCHS", "2",
                                                              "DATA.NUM_WORKERS", "0"]}}},
            "tasks": ["voc_faster_rcnn_R_50_C4_24k"], "modes": ["frozen"], "seeds": [0],
            "overrides": TINY_TRANSFER, "resources": {"cluster": "debug", "gpus_per_node": 0}}
    sweep = load_sweep(write(tmp_path / "m.yaml", data))
    assert not sweep.pretrain["cmc"].rgb_backbone and all(sweep.pretrain[m].rgb_backbone for m in methods[:-1])
    lines = []
    ledger = run_sweep(str(tmp_path / "m.yaml"), str(tmp_path / "out"),
                       out=lambda *a, **k: lines.append(" ".join(map(str, a))))
    assert any("cmc is left out of the Detectron2 tasks" in line for line in lines)
    states = {r["id"]: (r["state"], r["error"]) for r in ledger.runs}
    assert all(state == "done" for state, _ in states.values()), states
    assert {i for i in states if i.startswith("voc_")} == {f"voc_faster_rcnn_R_50_C4_24k/{m}/frozen/seed0"
                                                           for m in methods[:-1]}
    assert {i for i in states if i.startswith("linear_")} == {f"linear_tiny/{m}/frozen/seed0" for m in methods}
    out = tmp_path / "out"
    for m in methods[:-1]:
        assert (out / "pretrain" / m / "weights.pkl").is_file()
    assert not (out / "pretrain" / "cmc" / "weights.pkl").exists()
    with open(out / "linear_tiny" / "cmc" / "frozen" / "seed0" / "results.json") as f:
        cmc = json.load(f)
    assert cmc["task"] == "linear_tiny" and cmc["weights"].endswith("checkpoint_final.pth")
    assert set(cmc["metrics"]["linear"]) >= {"top1", "top5"}


def test_linear_evaluation_checked_before_submitting(tmp_path, synthetic_root):
    root, _ = synthetic_root
    linear = {"bad": {"config": os.path.join(REPO, "configs", "linear", "cdp.yaml"),
                      "overrides": ["DATA.ROOT", str(tmp_path / "nowhere")]}}
    path = pipeline_sweep(tmp_path, str(root / "imagenet"), tasks=[], evaluations={"linear": linear})
    with pytest.raises(SweepError) as e:
        run_sweep(path, str(tmp_path / "out"), out=lambda *a, **k: None)
    assert str(e.value).startswith("linear_bad/moco/frozen/seed0: DATA.ROOT") and "no such folder" in str(e.value)
    assert not (tmp_path / "out" / "sweep.json").exists()


def test_evaluation_job_runs_in_process_and_fails_with_the_last_error_line(tmp_path):
    """An evaluation job runs its command's main(argv) here; a non-zero exit status fails the job with the
    command's one-line error, and an argument error (SystemExit) does too."""
    from transfer.launch.jobs import LinearEvalJob, MIEstimateJob

    job = LinearEvalJob(["--config-file", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "out")],
                        str(tmp_path / "out"))
    with pytest.raises(RuntimeError) as e:
        job()
    message = str(e.value)
    assert message.startswith("pretrain.evaluation.linear.command exited with status 2: linear_eval: error: ")
    assert "nope.yaml" in message and "\n" not in message
    assert "--resume" not in job.resumed().command()  # evaluations continue by themselves
    with pytest.raises(RuntimeError, match="exited with status 2: .*--bogus"):
        LinearEvalJob(["--bogus"], str(tmp_path / "out"))()
    mi = MIEstimateJob(["--weights", str(tmp_path / "none.pkl"), "--data", str(tmp_path), "--pairing", "simclr",
                        "--out", str(tmp_path / "mi")], str(tmp_path / "mi"))
    with pytest.raises(RuntimeError, match=r"mi\.command exited with status 2: estimate_mi: error: .*none\.pkl"):
        mi()
