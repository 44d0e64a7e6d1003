"""SOLVER.SNAPSHOT_EPOCHS: the checkpoint kept after every K epochs (checkpoint_epochXXXX.pth) for the evaluations
that follow a pretraining run: written once, atomically, never rewritten by a resumed run that passes the
epoch again, and holding the weights of that epoch (the last one's are the final checkpoint's)."""
import os
import shutil

import pytest
import torch

from pretrain.common.paths import REPO_ROOT
from pretrain.evaluation.frozen import load_frozen_encoder
from pretrain.training import train
from pretrain.training.checks import PretrainError

MOCO = os.path.join(REPO_ROOT, "configs", "pretrain", "moco_v2_R_50.yaml")
# 20 images, batch 8: 2 iterations per epoch, 2 epochs
TINY = ["MODEL.ARCH", "resnet18", "INPUT.SIZE", "32", "SOLVER.BATCH_SIZE", "8", "MOCO.K", "16", "MODEL.DIM", "16",
        "SOLVER.EPOCHS", "2", "LOG_PERIOD", "1", "KNN.PERIOD", "0", "DATA.NUM_WORKERS", "0", "SEED", "3",
        "MODEL.PRECISION", "fp32", "TENSORBOARD", "False", "SOLVER.SNAPSHOT_EPOCHS", "1"]

pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory):
    from transfer.data.synthetic import write_synthetic

    root = tmp_path_factory.mktemp("snapshots")
    write_synthetic(root, kinds=("imagenet",), num_images=2, image_size=96, seed=0)
    return str(root / "imagenet")


def _load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def test_snapshots_are_kept_once_and_hold_their_epoch(imagenet, tmp_path):
    out = tmp_path / "run"
    common = ["--config-file", MOCO, "DATA.ROOT", imagenet, *TINY, "OUTPUT_DIR", str(out)]
    assert train.main([*common, "SOLVER.STOP_ITER", "1"]) == 0        # mid-epoch 1: nothing kept yet
    assert not list(out.glob("checkpoint_epoch*"))
    early = tmp_path / "early.pth"
    shutil.copy(out / "checkpoint_last.pth", early)
    assert train.main([*common, "SOLVER.STOP_ITER", "3", "--resume"]) == 0   # past the end of epoch 1
    kept = out / "checkpoint_epoch0001.pth"
    first = os.stat(kept)
    # preempted after the snapshot and before the resumable checkpoint: the run resumes before epoch 1 ends,
    # passes it again and leaves the kept checkpoint (which evaluations may be reading) as it is
    shutil.copy(early, out / "checkpoint_last.pth")
    assert train.main([*common, "--resume"]) == 0
    assert sorted(p.name for p in out.iterdir() if "epoch" in p.name) == [
        "checkpoint_epoch0001.pth", "checkpoint_epoch0002.pth"]  # no temporary file left behind
    again = os.stat(kept)
    assert (again.st_ino, again.st_mtime_ns) == (first.st_ino, first.st_mtime_ns)

    one, two, final = _load(kept), _load(out / "checkpoint_epoch0002.pth"), _load(out / "checkpoint_final.pth")
    assert (one["epoch"], one["iter"], two["epoch"], two["iter"]) == (1, 2, 2, 4) and one["snapshot"] is True
    assert not {"optimizer", "rng", "grad_scaler", "sampler"} & set(one)  # weights, not a resumable state
    assert one["method"] == "moco" and one["arch"] == "resnet18" and "SNAPSHOT_EPOCHS: 1" in one["config"]
    # the last epoch's snapshot is the final weights; the first one's differ from them
    assert two["state_dict"].keys() == final["state_dict"].keys()
    assert all(torch.equal(two["state_dict"][k], final["state_dict"][k]) for k in final["state_dict"])
    assert not torch.equal(one["state_dict"]["encoder_q.conv1.weight"], final["state_dict"]["encoder_q.conv1.weight"])
    encoder = load_frozen_encoder(str(kept))  # what the curves' frozen evaluations read
    assert encoder.feature_dim == 512


def test_snapshot_period_must_not_be_negative(imagenet, tmp_path):
    args = train.parse_args(["--config-file", MOCO, "DATA.ROOT", imagenet, *TINY, "SOLVER.SNAPSHOT_EPOCHS", "-1",
                             "OUTPUT_DIR", str(tmp_path / "x")])
    with pytest.raises(PretrainError, match="SOLVER.SNAPSHOT_EPOCHS -1 must be >= 0"):
        train.setup(args)
