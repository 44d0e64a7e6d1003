"""The project's checkpointer: crafted pickles are refused on every load path, writes are atomic."""
import errno
import os
import pickle

import numpy as np
import pytest
import torch

from transfer.training.checkpointer import CheckpointError, CheckpointWriteError, SafeCheckpointer


class Payload:
    """Unpickling this runs ``open(marker, "w")``: the marker proves the payload ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 2))


def test_resume_refuses_a_crafted_pickle_named_by_last_checkpoint(tmp_path):
    marker = tmp_path / "pwned"
    with open(tmp_path / "model_0000003.pkl", "wb") as f:
        pickle.dump({"model": {"0.weight": Payload(str(marker))}, "__author__": "x"}, f)
    (tmp_path / "last_checkpoint").write_text("model_0000003.pkl")
    checkpointer = SafeCheckpointer(_model(), save_dir=str(tmp_path))
    with pytest.raises(CheckpointError, match="--trust-pickle"):
        checkpointer.resume_or_load("", resume=True)
    assert not marker.exists()
    trusted = SafeCheckpointer(_model(), save_dir=str(tmp_path))
    trusted.trust_pickle = True
    with pytest.raises(Exception):  # the payload's result is no tensor, but it did run: trusted means trusted
        trusted.resume_or_load("", resume=True)
    assert marker.exists()


def test_crafted_pth_weights_are_refused_in_one_line(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"model": Payload(str(marker))}, tmp_path / "w.pth")
    with pytest.raises(CheckpointError) as e:
        SafeCheckpointer(_model()).load(str(tmp_path / "w.pth"))
    assert "--trust-pickle" in str(e.value) and "\n" not in str(e.value)
    assert not marker.exists()


def test_detectron2_and_caffe2_pickles_load_as_detectron2_reads_them(tmp_path):
    model = _model()
    weights = {k: v.numpy() + 1 for k, v in model.state_dict().items()}
    with open(tmp_path / "d2.pkl", "wb") as f:
        pickle.dump({"model": weights, "__author__": "test", "matching_heuristics": False}, f)
    with open(tmp_path / "c2.pkl", "wb") as f:
        pickle.dump({"blobs": {**weights, "0.weight_momentum": np.zeros(1)}}, f)
    for name in ("d2.pkl", "c2.pkl"):
        fresh = _model()
        SafeCheckpointer(fresh).load(str(tmp_path / name))
        for k, v in fresh.state_dict().items():
            assert np.allclose(v.numpy(), weights[k]), (name, k)


def test_a_failed_write_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    checkpointer = SafeCheckpointer(_model(), save_dir=str(tmp_path))
    checkpointer.save("model_0000001")
    good = (tmp_path / "model_0000001.pth").read_bytes()

    def disk_full(obj, path, *args, **kwargs):
        with open(path, "wb") as f:
            f.write(b"PK\x03\x04partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(CheckpointWriteError, match="write failed: .*model_0000002.pth: no space left"):
        checkpointer.save("model_0000002")
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000001.pth"]
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"
    assert (tmp_path / "model_0000001.pth").read_bytes() == good


def test_train_net_resume_refuses_the_crafted_checkpoint_in_one_line(synthetic_root, tmp_path):
    import subprocess
    import sys

    from pretrain.common.paths import REPO_ROOT
    from transfer.training.config import TINY_OVERRIDES

    out = tmp_path / "run"
    out.mkdir()
    marker = tmp_path / "pwned"
    with open(out / "model_0000003.pkl", "wb") as f:
        pickle.dump({"model": {"x": Payload(str(marker))}, "__author__": "x"}, f)
    (out / "last_checkpoint").write_text("model_0000003.pkl")
    before = sorted(os.listdir(out))
    cmd = [sys.executable, os.path.join(REPO_ROOT, "tools", "train_net.py"), "--config-file",
           os.path.join(REPO_ROOT, "configs", "transfer", "coco_mask_rcnn_R_50_FPN_1x.yaml"), "--resume",
           *TINY_OVERRIDES, "MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64",
           "SOLVER.MAX_ITER", "2", "OUTPUT_DIR", str(out)]
    env = dict(os.environ, DETECTRON2_DATASETS=str(synthetic_root[0]), OMP_NUM_THREADS="1")
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=600)
    assert done.returncode == 2, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("train_net: error: ") and "--trust-pickle" in last and "model_0000003.pkl" in last
    assert "Traceback" not in done.stderr
    assert not marker.exists()
    assert not (out / "results.json").exists()
    assert set(before) <= set(os.listdir(out))
