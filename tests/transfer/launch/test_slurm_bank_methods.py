"""The memory-bank methods as 2-task gloo jobs on a real SLURM (tools/slurm_local.sh start; CI starts it):
ANN+ and LA (IR epoch, then local aggregation) run to the end, and a run stopped with SOLVER.STOP_ITER and
resumed by a second job logs the losses of the uninterrupted job and ends with its weights, memory bank and
clusters. The MI ceiling of every logged step is log(K + 1) of the logged (all-process) mean number of
negatives. Skipped where there is no ``sbatch``."""
import json
import math
import os

import pytest
from pretrain.common.paths import REPO_ROOT

REPO = REPO_ROOT
CONFIGS = os.path.join(REPO, "configs", "pretrain")
CPU = {"cluster": "slurm", "gpus_per_node": 0, "tasks_per_node": 2, "cpus_per_task": 1, "timeout_min": 20}
LOGGED = ("iter", "loss", "mi_bound", "mi_ceiling", "num_negatives", "acc", "lr", "background_size", "close_runs",
          "close_size", "la_phase")

# skipped where there is no SLURM (the slurm fixture)
pytestmark = [pytest.mark.usefixtures("slurm", "jobs_one_thread"), pytest.mark.slow]


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory):
    """40 train and 20 val images in 10 classes (ImageNet layout)."""
    from transfer.data.synthetic import write_synthetic

    root = tmp_path_factory.mktemp("bank_slurm")
    write_synthetic(root, kinds=("imagenet",), num_images=4, seed=0)
    return str(root / "imagenet")


def run_job(slurm, argv):
    """Submit a pretraining run with ``argv`` as a 2-task job and wait for both tasks' results."""
    from transfer.launch.submit import submit_pretrain

    return slurm.result(slurm.track(submit_pretrain(argv, dict(CPU), out=lambda *a, **k: None)))


def knn_lines(out_dir):
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        return [(r["iter"], r["knn_top1"], r["knn_top5"]) for r in map(json.loads, f) if "knn_top1" in r]


def losses(out_dir):
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        return [{k: r.get(k) for k in LOGGED} for r in map(json.loads, f) if "loss" in r]


# ANN+ exercises everything the bank methods share on SLURM (bank, k-means, annealing, two tasks, stop and
# resume); LA's resume with its clusters, and two gloo ranks sharing one bank, are tests/pretrain/methods' tests
@pytest.mark.parametrize("method", ["ann_plus"])
def test_two_task_bank_run_stops_and_resumes(method, imagenet, tmp_path, slurm):
    import torch

    common = ["--config-file", os.path.join(CONFIGS, f"{method}_R_18_cifar.yaml"), "DATA.ROOT", imagenet,
              "INPUT.SIZE", "32", "SOLVER.BATCH_SIZE", "8", "SOLVER.MAX_ITER", "12", "DATA.NUM_WORKERS", "0",
              "MODEL.PRECISION", "fp32", "CLUSTER.K", "4", "CLUSTER.RUNS", "2", "BANK.NUM_NEGATIVES", "16",
              "BALL.NEIGHBOURS", "8", "BALL.ANNEAL_EPOCHS", "(0.0, 0.0)", "LA.IR_EPOCHS", "1", "SEED", "3",
              "LOG_PERIOD", "1", "TENSORBOARD", "False"]
    full, split = tmp_path / "full", tmp_path / "split"
    run_job(slurm, common + ["OUTPUT_DIR", str(full)])
    run_job(slurm, common + ["OUTPUT_DIR", str(split), "SOLVER.STOP_ITER", "7"])  # mid-epoch 1
    stopped = torch.load(split / "checkpoint_last.pth", weights_only=True, map_location="cpu")
    assert stopped["iter"] == 7 and stopped["world_size"] == 2 and not (split / "checkpoint_final.pth").exists()
    results = run_job(slurm, ["--resume"] + common + ["OUTPUT_DIR", str(split)])
    assert results == [str(split / "checkpoint_final.pth")] * 2
    with open(split / "log.txt") as f:
        assert sum("resumed from" in line and "at iteration 7" in line for line in f) == 1

    a, b = losses(full), losses(split)
    assert [r["iter"] for r in a] == list(range(1, 13)) and a == b
    # the kNN monitor sees the same BatchNorm statistics on every process and after a resume (rank 0's)
    assert knn_lines(full) == knn_lines(split) and len(knn_lines(full)) >= 2
    for r in a:  # one ceiling for all processes: log(K + 1) with K the all-process mean number of negatives
        assert r["mi_ceiling"] == pytest.approx(math.log(max(1, round(r["num_negatives"])) + 1))
    if method == "ann_plus":  # B_i shrinks from the whole bank to below K, where C_i leaves fewer valid negatives
        sizes = [r["background_size"] for r in a]
        assert sizes[0] == 39 and sizes == sorted(sizes, reverse=True) and sizes[-1] < 16
        assert a[-1]["close_runs"] == 2 and a[-1]["num_negatives"] < sizes[-1]
    else:
        assert [r["la_phase"] for r in a] == [0] * 5 + [1] * 7

    ca = torch.load(full / "checkpoint_final.pth", weights_only=True, map_location="cpu")
    cb = torch.load(split / "checkpoint_final.pth", weights_only=True, map_location="cpu")
    assert ca["world_size"] == 2 and ca["iter"] == 12
    sa, sb = ca["state_dict"], cb["state_dict"]
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    torch.testing.assert_close(sa["bank.memory"].norm(dim=1), torch.ones(40))
    clusters = (lambda s: s["sampler"]["clusters"]) if method == "ann_plus" else (lambda s: s["clusters"])
    assert clusters(ca["method_state"])["epoch"] == clusters(cb["method_state"])["epoch"] == 2
    assert torch.equal(clusters(ca["method_state"])["assignments"], clusters(cb["method_state"])["assignments"])
    if method == "ann_plus":
        from transfer.conversion.convert import convert

        result = convert(str(split / "checkpoint_final.pth"), str(tmp_path / "r18.pkl"), verify=False)
        assert result.backbone.layout == "pretrain" and result.backbone.arch.depth == 18
