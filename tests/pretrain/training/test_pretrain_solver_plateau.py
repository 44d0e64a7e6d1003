"""SOLVER.LR_SCHEDULER plateau (Wu et al. 2020, Appendix B.3): the rate drops by GAMMA when the kNN top-1
has not improved for PLATEAU_PATIENCE epochs, at most PLATEAU_DROPS times; checked against a drop
schedule worked out by hand, through a state round trip, and in a tiny run of the train loop."""
import json
import os

import pytest

from pretrain.training import train
from pretrain.config import load_config
from pretrain.training.solver import LRSchedule
from transfer.data.synthetic import write_synthetic
from pretrain.common.paths import REPO_ROOT

REPO = REPO_ROOT
MOCO = os.path.join(REPO, "configs", "pretrain", "moco_v2_R_50.yaml")
IPE = 5  # iterations per epoch of the synthetic schedules below

# epoch (1-based, as reported after that epoch) -> kNN top-1
ACCURACY = [10, 20, 30, 30, 29, 25, 31, 31, 31, 31, 32, 32, 32, 32, 32, 32]
# worked out by hand with patience 3, 2 drops:
#   best 30 at epoch 3; 4, 5, 6 do not beat it -> drop 1 after epoch 6 (reference epoch 6)
#   31 at epoch 7 is a new best; 8, 9, 10 do not beat it -> drop 2 after epoch 10
#   32 at epoch 11 is a new best; 12, 13, 14 do not beat it, but no drops are left
DROP_EPOCHS = [6, 10]


def schedule(*opts, max_iter=IPE * len(ACCURACY)):
    cfg = load_config(MOCO, ["SOLVER.LR_SCHEDULER", "plateau", "SOLVER.PLATEAU_PATIENCE", "3",
                             "SOLVER.PLATEAU_DROPS", "2", "SOLVER.GAMMA", "0.1", "SOLVER.BATCH_SIZE", "256",
                             "SOLVER.BASE_LR", "0.03", *opts])
    return LRSchedule(cfg, max_iter)


def feed(s, accuracies, first_epoch=1):
    """Run the loop's protocol: the lrs of one epoch, then the report; returns (lrs, epochs that dropped)."""
    lrs, dropped = [], []
    for epoch, acc in enumerate(accuracies, start=first_epoch):
        lrs += [s(it) for it in range((epoch - 1) * IPE, epoch * IPE)]
        if s.report_metric(epoch, acc, iteration=epoch * IPE):
            dropped.append(epoch)
    return lrs, dropped


def expected_lr(it, base=0.03):
    drops = sum(it >= e * IPE for e in DROP_EPOCHS)
    return base * 0.1 ** drops


def test_drops_match_the_hand_computed_schedule():
    s = schedule()
    lrs, dropped = feed(s, ACCURACY)
    assert dropped == DROP_EPOCHS
    assert s.drops == 2 and s.best == 32 and s.best_epoch == 11
    assert s.milestones == [30, 50]
    for it, lr in enumerate(lrs):
        assert lr == pytest.approx(expected_lr(it), rel=1e-12), it
    assert s(10 ** 6) == pytest.approx(0.03 * 0.01)  # no third drop however long the plateau lasts


def test_equal_accuracy_is_no_improvement_and_patience_counts_epochs():
    s = schedule("SOLVER.PLATEAU_PATIENCE", "2", "SOLVER.PLATEAU_DROPS", "5")
    _, dropped = feed(s, [50, 50, 50, 50, 50, 50, 50])
    assert dropped == [3, 5, 7]  # every 2 epochs without a strictly better value
    s = schedule("SOLVER.PLATEAU_PATIENCE", "2")
    _, dropped = feed(s, [1, 2, 3, 4, 5, 6, 7, 8])
    assert dropped == [] and s.drops == 0  # always improving: never drops
    s = schedule()
    assert s.report_metric(1, None) is False and s.best is None  # no kNN result: ignored


def test_state_round_trip_continues_exactly():
    whole = schedule()
    lrs_whole, _ = feed(whole, ACCURACY)
    for cut in (2, 6, 8, 12):
        first = schedule()
        lrs_a, _ = feed(first, ACCURACY[:cut])
        state = json.loads(json.dumps(first.state_dict()))  # plain containers only (weights_only checkpoints)
        second = schedule()
        assert second.load_state_dict(state) == []
        assert second.drops == first.drops and second.best == first.best
        lrs_b, dropped = feed(second, ACCURACY[cut:], first_epoch=cut + 1)
        assert lrs_a + lrs_b == lrs_whole, cut
        assert first.drop_epochs + dropped == DROP_EPOCHS
    # a changed schedule is reported, not silently mixed
    other = schedule("SOLVER.BASE_LR", "0.06")
    assert any(d.startswith("base_lr") for d in other.load_state_dict(whole.state_dict()))


def test_per_epoch_schedule_drops_and_resumes_like_the_iteration_one():
    """Linear evaluation's use: one step per epoch, the 1-based epoch reported after it; a drop applies from
    the next epoch, and a state round trip mid-run continues exactly."""
    def epoch_schedule():
        return LRSchedule.per_epoch("plateau", 0.03, len(ACCURACY), gamma=0.1, patience=3, max_drops=2)

    def run(s, epochs):
        lrs, dropped = [], []
        for e in epochs:  # 0-based
            lrs.append(s(e))
            if s.report_metric(e + 1, ACCURACY[e], iteration=e + 1):
                dropped.append(e + 1)
        return lrs, dropped

    whole = epoch_schedule()
    lrs, dropped = run(whole, range(len(ACCURACY)))
    assert dropped == DROP_EPOCHS
    assert lrs == [pytest.approx(0.03 * 0.1 ** sum(e >= d for d in DROP_EPOCHS), rel=1e-12) for e in range(len(lrs))]
    first = epoch_schedule()
    lrs_a, _ = run(first, range(8))
    second = epoch_schedule()
    assert second.load_state_dict(json.loads(json.dumps(first.state_dict()))) == []
    lrs_b, _ = run(second, range(8, len(ACCURACY)))
    assert lrs_a + lrs_b == lrs


def test_warmup_applies_before_the_plateau_rate():
    s = schedule("SOLVER.WARMUP_EPOCHS", "5", "SOLVER.EPOCHS", "20", max_iter=100)  # 25 warm-up iterations
    assert s.warmup_iters == 25
    assert s(0) == pytest.approx(0.03 * 0.01)
    assert s(12) == pytest.approx(0.03 * (0.01 * (1 - 12 / 25) + 12 / 25))
    assert s(25) == pytest.approx(0.03)
    lrs, dropped = feed(s, ACCURACY)
    assert dropped == DROP_EPOCHS and lrs[60] == pytest.approx(0.03 * 0.01)


def test_other_schedules_ignore_reports():
    cfg = load_config(MOCO, ["SOLVER.LR_SCHEDULER", "step", "SOLVER.EPOCHS", "10", "SOLVER.STEPS", "[5]"])
    s = LRSchedule(cfg, 100)
    assert all(s.report_metric(e, 1.0, iteration=e * 10) is False for e in range(1, 10))
    assert s.milestones == [50] and s(49) == pytest.approx(0.03) and s(50) == pytest.approx(0.003)


# --------------------------------------------------------------------------------------------- the loop
TINY = ["MODEL.ARCH", "resnet18", "INPUT.SIZE", "32", "SOLVER.BATCH_SIZE", "8", "MOCO.K", "16", "MODEL.DIM", "16",
        "MODEL.PRECISION", "fp32", "LOG_PERIOD", "1", "KNN.BATCH_SIZE", "20", "KNN.K", "5", "DATA.NUM_WORKERS", "0",
        "SEED", "3", "SOLVER.LR_SCHEDULER", "plateau", "SOLVER.PLATEAU_PATIENCE", "1", "SOLVER.PLATEAU_DROPS", "2",
        "KNN.PERIOD", "1", "SOLVER.EPOCHS", "5", "SOLVER.CHECKPOINT_PERIOD", "0", "TENSORBOARD", "False"]


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory):
    root = tmp_path_factory.mktemp("plateau")
    write_synthetic(root, kinds=("imagenet",), num_images=2, seed=0)  # 20 train, 20 val images, 10 classes
    return os.path.join(root, "imagenet")


def records(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_tiny_run_drops_on_knn_plateau_and_resumes(imagenet, tmp_path):
    import torch

    full, split = str(tmp_path / "full"), str(tmp_path / "split")
    common = ["--config-file", MOCO, "DATA.ROOT", imagenet, *TINY]
    assert train.main([*common, "OUTPUT_DIR", full]) == 0
    a = records(full)
    knn = [(m["iter"], m["knn_top1"]) for m in a if "knn_top1" in m]
    assert [i for i, _ in knn] == [2, 4, 6, 8, 10]  # every epoch (2 iterations each), plus the final one
    # the rule applied here to the logged accuracies (patience 1): a report that does not beat the best drops
    base, lr, best, drops, want = 0.03 * 8 / 256, {}, None, 0, []
    for it, top1 in knn[:-1]:  # the final evaluation comes after the last step
        if best is None or top1 > best:
            best = top1
        elif drops < 2:
            drops += 1
            want.append(it)
    for m in a:
        if "loss" in m:
            lr[m["iter"]] = m["lr"]
    for it, value in lr.items():  # the logged lr is that of iteration it - 1
        assert value == pytest.approx(base * 0.1 ** sum(it - 1 >= w for w in want), rel=1e-9), it
    assert want, f"no plateau in {knn}: pick a SEED that has one"
    ckpt = torch.load(os.path.join(full, "checkpoint_final.pth"), weights_only=True)
    assert ckpt["scheduler"]["milestones"] == want and ckpt["scheduler"]["name"] == "plateau"

    # stopped at an epoch end (after its kNN report), resumed: the same drops and rates
    assert train.main([*common, "OUTPUT_DIR", split, "SOLVER.STOP_ITER", "6"]) == 0
    assert train.main([*common, "OUTPUT_DIR", split, "--resume"]) == 0
    b = records(split)
    assert [(m["iter"], m["lr"], m["loss"]) for m in a if "loss" in m] == \
        [(m["iter"], m["lr"], m["loss"]) for m in b if "loss" in m]
    assert knn == [(m["iter"], m["knn_top1"]) for m in b if "knn_top1" in m]


@pytest.mark.parametrize("extra, message", [
    (["KNN.PERIOD", "2"], "set KNN.PERIOD 1"),
    (["DATA.VAL_DIR", "nothing_here"], "needs the kNN accuracy on a labelled validation folder"),
    (["SOLVER.PLATEAU_PATIENCE", "0"], "PLATEAU_PATIENCE 0 must be >= 1"),
])
def test_plateau_config_errors_are_one_line(extra, message, imagenet, tmp_path, capsys):
    out = tmp_path / "out"
    code = train.main(["--config-file", MOCO, "DATA.ROOT", imagenet, *TINY, "OUTPUT_DIR", str(out), *extra])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1
    assert not out.exists()
