"""Against a real SLURM (tools/slurm_local.sh start; CI starts it): submitit's SlurmExecutor runs a tiny
transfer run on 2 gloo tasks, a tiny pretraining run on 2 gloo tasks, a sweep as a job array (and the same
sweep on the local executor, to the same numbers), and a transfer run and a pretraining run that are
signalled as SLURM signals a job at its time limit or on preemption: each requeues, resumes from its last
checkpoint and ends as an uninterrupted run does (the same results.json; the same losses and weights).
Skipped where there is no ``sbatch``."""
import json
import os
import subprocess
import time

import pytest
import yaml

from transfer.training.config import TINY_OVERRIDES
from pretrain.common.paths import REPO_ROOT

REPO = REPO_ROOT
CONFIGS = os.path.join(REPO, "configs")
TINY = TINY_OVERRIDES + ["MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64"]
CPU = {"cluster": "slurm", "gpus_per_node": 0, "cpus_per_task": 1, "timeout_min": 20}
TIMEOUT = 420  # seconds to wait for one job

# skipped where there is no SLURM (the slurm fixture)
pytestmark = [pytest.mark.usefixtures("slurm", "jobs_one_thread"), pytest.mark.slow]


def submit_transfer_job(argv, slurm, **resources):
    from transfer.launch.submit import submit_transfer

    return slurm.track(submit_transfer(argv, {**CPU, **resources}, out=lambda *a, **k: None))


def test_tiny_transfer_run_with_two_gloo_tasks(synthetic_root, tmp_path, slurm):
    out = tmp_path / "run"
    pwned = tmp_path / "pwned"
    evil = f'"; touch {pwned} # $(touch {pwned}) `touch {pwned}`'
    job = submit_transfer_job(["--config-file", os.path.join(CONFIGS, "transfer", "coco_mask_rcnn_R_50_FPN_1x.yaml"),
                               *TINY, "SOLVER.MAX_ITER", "2", "SEED", "1", "TRANSFER.BACKBONE_NAME", evil,
                               "OUTPUT_DIR", str(out)], slurm, tasks_per_node=2)
    results = slurm.result(job)
    assert len(results) == 2 and results[0] == str(out / "results.json")
    with open(out / "results.json") as f:
        res = json.load(f)
    assert res["backbone"] == evil and res["seed"] == 1 and "AP" in res["metrics"]["bbox"]
    assert not pwned.exists()
    with open(out / "log.txt") as f:
        assert "World size: 2" in f.read()
    with open(job.paths.submission_file) as f:
        script = f.read()
    assert "#SBATCH --ntasks-per-node=2" in script and "--gpus" not in script and evil not in script


def test_tiny_pretraining_with_two_gloo_tasks(synthetic_root, tmp_path, slurm):
    import torch

    from transfer.launch.submit import submit_pretrain

    root, _ = synthetic_root
    out = tmp_path / "pretrain"
    job = submit_pretrain(["--config-file", os.path.join(CONFIGS, "pretrain", "moco_v2_R_50.yaml"),
                           "MODEL.ARCH", "resnet18", "INPUT.SIZE", "32", "SOLVER.MAX_ITER", "4",
                           "SOLVER.BATCH_SIZE", "8", "MOCO.K", "64", "DATA.ROOT", str(root / "imagenet"),
                           "DATA.NUM_WORKERS", "0", "KNN.PERIOD", "0", "TENSORBOARD", "False", "LOG_PERIOD", "1",
                           "OUTPUT_DIR", str(out)],
                          {**CPU, "tasks_per_node": 2}, out=lambda *a, **k: None)
    slurm.track(job)
    results = slurm.result(job)
    assert results[0] == str(out / "checkpoint_final.pth")
    ckpt = torch.load(out / "checkpoint_final.pth", weights_only=True, map_location="cpu")
    assert ckpt["world_size"] == 2 and ckpt["iter"] == 4 and ckpt["arch"] == "resnet18"
    with open(out / "metrics.jsonl") as f:
        assert [json.loads(line)["iter"] for line in f if '"loss"' in line] == [1, 2, 3, 4]


def write_tiny_sweep(path):
    with open(path, "w") as f:
        yaml.safe_dump({"name": "slurm_tiny", "backbones": {"random": ""}, "tasks": ["voc_faster_rcnn_R_50_C4_24k"],
                        "modes": ["finetune"], "seeds": [0, 1],
                        "overrides": TINY + ["SOLVER.MAX_ITER", "2", "TEST.PRECISE_BN.ENABLED", "False"]}, f)
    return str(path)


def test_sweep_as_a_job_array_and_the_same_sweep_locally(synthetic_root, tmp_path, slurm):
    from transfer.launch.ledger import format_status
    from transfer.launch.sweep import run_sweep

    sweep = write_tiny_sweep(tmp_path / "s.yaml")
    root = tmp_path / "slurm"
    messages = []
    ledger = run_sweep(sweep, root, {**CPU, "array_parallelism": 2}, out=lambda *a, **k: messages.append(a[0]))
    ids = [r["job_id"] for r in ledger.runs]
    slurm.ids.extend(ids)
    array = ids[0].split("_")[0]
    assert ids == [f"{array}_0", f"{array}_1"] and "a job array of 2" in messages[0]
    script = next((root / "submitit").glob("**/*_submission.sh"), None) or next((root / "submitit").glob("*.sh"))
    assert "#SBATCH --array=0-1%2" in script.read_text()
    # waiting; a second submission meanwhile duplicates nothing
    again = run_sweep(sweep, root, {**CPU, "array_parallelism": 2}, out=lambda *a, **k: None)
    assert [r["job_id"] for r in again.runs] == ids
    ledger = run_sweep(sweep, root, {**CPU, "array_parallelism": 2}, wait=True, poll_s=1, timeout_s=TIMEOUT,
                       out=lambda *a, **k: None)
    assert ledger.counts()["done"] == 2, format_status(ledger)
    assert [r["job_id"] for r in ledger.runs] == ids and all(r["attempts"] == 1 for r in ledger.runs)

    local = tmp_path / "local"
    ledger = run_sweep(sweep, local, {"cluster": "local", "gpus_per_node": 0, "timeout_min": 20}, wait=True, poll_s=0.5,
                       timeout_s=TIMEOUT, out=lambda *a, **k: None)
    assert ledger.counts()["done"] == 2, format_status(ledger)
    for record in ledger.runs:
        with open(root / record["id"] / "results.json") as f, open(local / record["id"] / "results.json") as g:
            assert json.load(f) == json.load(g)  # same runs, same numbers, whichever executor ran them


def test_signalled_job_requeues_resumes_and_matches_an_uninterrupted_run(synthetic_root, tmp_path, slurm):
    config = os.path.join(CONFIGS, "transfer", "coco_mask_rcnn_R_50_FPN_1x.yaml")
    opts = [*TINY, "SOLVER.MAX_ITER", "14", "SOLVER.CHECKPOINT_PERIOD", "2", "SEED", "5", "DATALOADER.NUM_WORKERS", "1",
            "TEST.PRECISE_BN.ENABLED", "False"]
    full = submit_transfer_job(["--config-file", config, *opts, "OUTPUT_DIR", str(tmp_path / "full")], slurm)
    cut_dir = tmp_path / "cut"
    cut = submit_transfer_job(["--config-file", config, *opts, "OUTPUT_DIR", str(cut_dir)], slurm)

    deadline = time.time() + TIMEOUT
    while not (cut_dir / "last_checkpoint").exists():  # written once a checkpoint is complete
        assert time.time() < deadline and not cut.paths.result_pickle.exists(), \
            f"no checkpoint before the end\n{slurm.logs(cut)}"
        time.sleep(0.1)
    # what SLURM sends at the time limit (#SBATCH --signal=USR2@90) or on preemption
    subprocess.run(["scancel", "--signal=USR2", str(cut.job_id)], check=True, timeout=60)
    slurm.completed(cut, cut_dir / "results.json")
    slurm.result(full)

    with open(cut.paths.stdout) as f:
        submitit_log = f.read()
    assert submitit_log.count("Caught signal SIGUSR2") == 1, slurm.logs(cut)  # the task only, not its loader workers
    assert f"Requeued job {cut.job_id}" in submitit_log and "Job completed successfully" in submitit_log, slurm.logs(cut)
    proc = subprocess.run(["scontrol", "show", "job", str(cut.job_id)], capture_output=True, text=True, timeout=60)
    assert "Restarts=1" in proc.stdout, proc.stdout
    with open(cut_dir / "log.txt") as f:
        log = f.read()
    resumed = [line for line in log.splitlines() if "Starting training from iteration" in line]
    assert len(resumed) == 2 and resumed[0].endswith("iteration 0") and not resumed[1].endswith("iteration 0"), resumed
    with open(tmp_path / "full" / "results.json") as f, open(cut_dir / "results.json") as g:
        assert json.load(f) == json.load(g)


def test_signalled_pretraining_requeues_and_resumes_exactly(synthetic_root, tmp_path, slurm):
    import torch

    from transfer.launch.submit import submit_pretrain

    root, _ = synthetic_root

    def submit(out):
        job = submit_pretrain(["--config-file", os.path.join(CONFIGS, "pretrain", "moco_v2_R_50.yaml"),
                               "MODEL.ARCH", "resnet18", "INPUT.SIZE", "32", "SOLVER.MAX_ITER", "40",
                               "SOLVER.CHECKPOINT_PERIOD", "4", "SOLVER.BATCH_SIZE", "8", "MOCO.K", "64", "SEED", "3",
                               "DATA.ROOT", str(root / "imagenet"), "DATA.NUM_WORKERS", "0", "KNN.PERIOD", "0",
                               "TENSORBOARD", "False", "LOG_PERIOD", "1", "OUTPUT_DIR", str(out)],
                              CPU, out=lambda *a, **k: None)
        return slurm.track(job)

    full, cut_dir = submit(tmp_path / "full"), tmp_path / "cut"
    cut = submit(cut_dir)
    deadline = time.time() + TIMEOUT
    while not (cut_dir / "checkpoint_last.pth").exists():  # written atomically
        assert time.time() < deadline and not cut.paths.result_pickle.exists(), slurm.logs(cut)
        time.sleep(0.1)
    subprocess.run(["scancel", "--signal=USR2", str(cut.job_id)], check=True, timeout=60)
    slurm.completed(cut, cut_dir / "checkpoint_final.pth")
    slurm.result(full)

    with open(cut.paths.stdout) as f:
        assert f"Requeued job {cut.job_id}" in f.read(), slurm.logs(cut)
    with open(cut_dir / "log.txt") as f:
        resumed = [line for line in f if "resumed from" in line]
    assert len(resumed) == 1 and 0 < int(resumed[0].split("at iteration ")[1]) < 40, resumed

    def losses(folder):
        with open(folder / "metrics.jsonl") as f:
            return [(r["iter"], r["loss"]) for r in map(json.loads, f) if "loss" in r]

    assert losses(cut_dir) == losses(tmp_path / "full") and len(losses(cut_dir)) == 40
    a = torch.load(tmp_path / "full" / "checkpoint_final.pth", weights_only=True, map_location="cpu")["state_dict"]
    b = torch.load(cut_dir / "checkpoint_final.pth", weights_only=True, map_location="cpu")["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
