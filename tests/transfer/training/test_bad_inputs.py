"""Hostile but realistic inputs against the real entry points (the table of cases is docs/bad_inputs.md).

Every case checks: exit status 2, one line ``prog: error: ...`` naming the problem, no traceback, nothing
written or overwritten, and for crafted pickles that the payload did not run (its marker file is absent).
Most cases are refused before a model is built or data is read, in well under a second.

Covered in other modules (and listed in the table): damaged datasets (tests/transfer/data/test_bad_data.py),
atomic checkpoint writes (tests/transfer/training/test_checkpointer.py), a lost or damaged ledger
(tests/transfer/launch/test_ledger_recovery.py), partitions without GPUs
(tests/transfer/launch/test_slurm_partition_gpus.py), K_Est beyond the held-out items
(tests/pretrain/evaluation/test_mi.py), the LRScheduler hook (tests/transfer/runtime).
"""
import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

from file_tree import read_tree
from pretrain.common.paths import REPO_ROOT
from tool_loader import load_tool
from transfer.training.config import TINY_OVERRIDES

CONFIGS = os.path.join(REPO_ROOT, "configs", "transfer")
FPN = os.path.join(CONFIGS, "coco_mask_rcnn_R_50_FPN_1x.yaml")
VOC = os.path.join(CONFIGS, "voc_faster_rcnn_R_50_C4_24k.yaml")
R18 = ["MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64"]


class Payload:
    """Unpickling this runs ``open(marker, "w")``: the marker proves the payload ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _one_line(err, prog, *words):
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert "Traceback" not in err, err[-2000:]
    assert lines and lines[-1].startswith(f"{prog}: error: "), err[-2000:]
    assert sum(line.startswith(f"{prog}: ") for line in lines) == 1, err[-2000:]
    for word in words:
        assert word in lines[-1], (word, lines[-1])
    return lines[-1]


def _train_net(capsys, *argv, config=FPN):
    code = load_tool("train_net").main(["--config-file", config, *argv])
    return code, capsys.readouterr().err


@pytest.fixture()
def watched(tmp_path):
    """A folder with a file in it: nothing under it may change (only a payload's marker could appear)."""
    (tmp_path / "keep.txt").write_text("untouched\n")
    return tmp_path


# ------------------------------------------------------------------------------ security (items 1-3)

def test_crafted_pth_as_model_weights_is_one_line_naming_the_flag(watched, capsys):
    marker = watched / "pwned"
    torch.save({"model": Payload(str(marker))}, watched / "w.pth")
    before = read_tree(watched)
    code, err = _train_net(capsys, *TINY_OVERRIDES, "MODEL.WEIGHTS", str(watched / "w.pth"),
                           "OUTPUT_DIR", str(watched / "out"))
    assert code == 2
    line = _one_line(err, "train_net", "w.pth", "--trust-pickle", "arbitrary code")
    assert "weights_only" not in line
    assert not marker.exists() and read_tree(watched) == before


def test_crafted_pkl_as_model_weights_is_refused(watched, capsys):
    marker = watched / "pwned"
    with open(watched / "w.pkl", "wb") as f:
        pickle.dump({"model": {"x": Payload(str(marker))}, "__author__": "x"}, f)
    before = read_tree(watched)
    code, err = _train_net(capsys, "MODEL.WEIGHTS", str(watched / "w.pkl"), "OUTPUT_DIR", str(watched / "out"))
    assert code == 2
    _one_line(err, "train_net", "w.pkl", "--trust-pickle")
    assert not marker.exists() and read_tree(watched) == before


def test_resume_refuses_a_crafted_checkpoint_before_writing(watched, capsys):
    marker = watched / "pwned"
    out = watched / "run"
    out.mkdir()
    with open(out / "model_0000003.pkl", "wb") as f:
        pickle.dump({"model": {"x": Payload(str(marker))}, "__author__": "x"}, f)
    (out / "last_checkpoint").write_text("model_0000003.pkl")
    before = read_tree(watched)
    code, err = _train_net(capsys, "--resume", *TINY_OVERRIDES, *R18, "OUTPUT_DIR", str(out))
    assert code == 2
    _one_line(err, "train_net", "model_0000003.pkl", "--trust-pickle")
    assert not marker.exists() and read_tree(watched) == before  # no config.yaml, no log.txt


def test_crafted_weights_in_a_sweep_point_to_a_one_time_conversion(watched, capsys):
    """Sweep jobs read weights safely only: the line says how to make a trusted file usable, not a flag that
    submit does not have."""
    marker = watched / "pwned"
    with open(watched / "w.pkl", "wb") as f:
        pickle.dump({"model": {"x": Payload(str(marker))}, "__author__": "x"}, f)
    (watched / "s.yaml").write_text(
        "# a sweep (Table 0)\nname: s\nbackbones:\n  b: " + str(watched / "w.pkl") + "\n"
        "tasks: [voc_faster_rcnn_R_50_C4_24k]\nmodes: [frozen]\nseeds: [0]\n")
    before = read_tree(watched)
    with pytest.raises(SystemExit) as stop:
        load_tool("submit").main(["sweep", str(watched / "s.yaml"), "--dry-run", "--output-root", str(watched / "out")])
    assert stop.value.code == 2
    line = _one_line(capsys.readouterr().err, "submit sweep", "w.pkl", "convert_backbone.py --trust-pickle")
    assert "pass --trust-pickle" not in line
    assert not marker.exists() and read_tree(watched) == before


@pytest.mark.parametrize("key, value", [("MODEL.WEIGHTS", "other.pkl"), ("OUTPUT_DIR", "/tmp/elsewhere")])
def test_weights_meta_may_set_only_architecture_and_pixel_format(watched, capsys, key, value):
    with open(watched / "w.pkl", "wb") as f:
        pickle.dump({"model": {"x": np.zeros(2, np.float32)}, "__author__": "x",
                     "meta": {"cfg": {key: value}}}, f)
    before = read_tree(watched)
    code, err = _train_net(capsys, "MODEL.WEIGHTS", str(watched / "w.pkl"), "OUTPUT_DIR", str(watched / "out"))
    assert code == 2
    _one_line(err, "train_net", key, "meta['cfg'] may set only")
    assert read_tree(watched) == before


def test_crafted_pretraining_checkpoint_on_resume_names_the_flag(synthetic_root, watched, capsys):
    root, _ = synthetic_root
    marker = watched / "pwned"
    out = watched / "pre"
    out.mkdir()
    torch.save({"state_dict": Payload(str(marker)), "iter": 1}, out / "checkpoint_last.pth")
    before = read_tree(watched)
    code = load_tool("pretrain_backbone").main(
        ["--config-file", os.path.join(REPO_ROOT, "configs", "pretrain", "moco_v2_R_50.yaml"), "--resume",
         "DATA.ROOT", str(root / "imagenet"), "MODEL.ARCH", "resnet18", "SOLVER.BATCH_SIZE", "8", "MOCO.K", "16",
         "DATA.NUM_WORKERS", "0", "OUTPUT_DIR", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    line = _one_line(err, "pretrain_backbone", "checkpoint_last.pth", "--trust-pickle")
    assert "truncated" not in line and "corrupt" not in line
    assert not marker.exists() and read_tree(watched) == before


def test_crafted_checkpoint_to_the_converter_names_the_flag(watched, capsys):
    marker = watched / "pwned"
    torch.save({"state_dict": Payload(str(marker))}, watched / "ckpt.pth")
    before = read_tree(watched)
    with pytest.raises(SystemExit) as stop:
        load_tool("convert_backbone").main([str(watched / "ckpt.pth"), str(watched / "out.pkl")])
    assert stop.value.code == 2
    line = _one_line(capsys.readouterr().err, "convert_backbone", "ckpt.pth", "--trust-pickle")
    assert "truncated" not in line
    assert not marker.exists() and read_tree(watched) == before


@pytest.mark.parametrize("tool", ["train_net", "pretrain_backbone", "convert_backbone", "linear_eval", "knn_eval",
                                  "estimate_mi", "preflight"])
def test_trust_pickle_is_a_flag_of_every_entry_point_that_loads_checkpoints(tool, capsys):
    with pytest.raises(SystemExit) as stop:
        load_tool(tool).main(["--help"])
    assert stop.value.code == 0
    assert "--trust-pickle" in capsys.readouterr().out


# --------------------------------------------------------------------------- overrides (item 4)

@pytest.mark.parametrize("pair, words", [
    (["SOLVER.NO_SUCH_KEY", "1"], ["unknown config key SOLVER.NO_SUCH_KEY"]),
    (["SOLVER.MAX_ITR", "1"], ["unknown config key SOLVER.MAX_ITR", "did you mean SOLVER.MAX_ITER?"]),
    (["SOLVER.MAX_ITER", "abc"], ["bad value 'abc' for SOLVER.MAX_ITER", "expected an int"]),
    (["INPUT.MIN_SIZE_TRAIN", "(128,"], ["bad value '(128,' for INPUT.MIN_SIZE_TRAIN", "expected a tuple"]),
    (["SOLVER"], ["KEY VALUE pairs"]),
])
def test_bad_overrides_are_one_line_before_anything_is_written(watched, capsys, pair, words):
    before = read_tree(watched)
    code, err = _train_net(capsys, "OUTPUT_DIR", str(watched / "out"), *pair)
    assert code == 2
    _one_line(err, "train_net", *words)
    assert read_tree(watched) == before and not (watched / "out").exists()


def test_unknown_key_in_a_config_file_names_the_file_and_the_closest_key(watched, capsys):
    bad = watched / "bad.yaml"
    bad.write_text(f"_BASE_: {FPN}\nSOLVER:\n  BASE_LRR: 0.1\n")
    code, err = _train_net(capsys, "OUTPUT_DIR", str(watched / "out"), config=str(bad))
    assert code == 2
    _one_line(err, "train_net", "bad.yaml", "SOLVER.BASE_LRR", "did you mean SOLVER.BASE_LR?")
    assert not (watched / "out").exists()


# ------------------------------------------------------------------ resume, eval-only, output (7-9)

def _finished_run(out):
    """A run folder as a tiny R-18 run leaves it: config.yaml, a checkpoint, last_checkpoint."""
    from transfer.training.config import build_config

    out.mkdir()
    cfg = build_config(FPN, [*TINY_OVERRIDES, *R18, "OUTPUT_DIR", str(out)], has_cuda=False)
    (out / "config.yaml").write_text(cfg.dump())
    torch.save({"model": {}, "iteration": 3}, out / "model_0000003.pth")
    (out / "last_checkpoint").write_text("model_0000003.pth")


def test_resume_with_another_architecture_names_the_changed_keys(watched, capsys):
    out = watched / "run"
    _finished_run(out)
    before = read_tree(watched)
    code, err = _train_net(capsys, "--resume", *TINY_OVERRIDES, "MODEL.RESNETS.DEPTH", "34",
                           "MODEL.ROI_BOX_HEAD.FC_DIM", "128", "OUTPUT_DIR", str(out))
    assert code == 2
    _one_line(err, "train_net", "MODEL.RESNETS.DEPTH 18 -> 34", "MODEL.ROI_BOX_HEAD.FC_DIM 64 -> 128")
    assert read_tree(watched) == before  # config.yaml not overwritten


def test_resume_with_last_checkpoint_naming_no_file(watched, capsys):
    out = watched / "run"
    _finished_run(out)
    os.remove(out / "model_0000003.pth")
    before = read_tree(watched)
    code, err = _train_net(capsys, "--resume", *TINY_OVERRIDES, *R18, "OUTPUT_DIR", str(out))
    assert code == 2
    _one_line(err, "train_net", "last_checkpoint", "model_0000003.pth")
    assert read_tree(watched) == before


def test_eval_only_without_weights_is_refused_unless_asked(watched, capsys):
    before = read_tree(watched)
    code, err = _train_net(capsys, "--eval-only", *TINY_OVERRIDES, "OUTPUT_DIR", str(watched / "out"))
    assert code == 2
    _one_line(err, "train_net", "--eval-only needs weights", "--random-init")
    with pytest.raises(SystemExit) as stop:
        load_tool("train_net").main(["--config-file", FPN, "--random-init"])
    assert stop.value.code == 2
    _one_line(capsys.readouterr().err, "train_net", "--random-init goes with --eval-only")
    assert read_tree(watched) == before


def test_eval_only_record_says_what_was_evaluated_and_stays_out_of_the_table(synthetic_root, tmp_path, capsys):
    from transfer.report.runs import collect_runs

    out = tmp_path / "voc" / "random" / "frozen" / "seed0"
    code, err = _train_net(capsys, "--eval-only", "--random-init", *TINY_OVERRIDES, *R18, "TRANSFER.MODE", "frozen",
                           "SEED", "0", "DATASETS.TEST", "('voc_2007_test',)", "OUTPUT_DIR", str(out), config=VOC)
    assert code == 0, err[-2000:]
    with open(out / "results.json") as f:
        record = json.load(f)
    assert record["eval_only"] is True and record["iterations"] == 0 and record["weights"] == ""
    assert record["backbone"] == "random" and "bbox" in record["metrics"]
    runs = collect_runs(str(tmp_path))
    assert not runs.runs and "evaluation-only" in runs.skipped[0][1]


@pytest.mark.parametrize("make", ["file_in_path", "read_only"])
def test_output_dir_that_cannot_be_written_is_one_line(watched, capsys, make):
    if make == "file_in_path":
        (watched / "afile").write_text("x")
        target = watched / "afile" / "out"
    else:
        if os.geteuid() == 0:
            pytest.skip("root writes into read-only folders")
        (watched / "ro").mkdir()
        os.chmod(watched / "ro", 0o555)
        target = watched / "ro" / "out"
    before = read_tree(watched)
    code, err = _train_net(capsys, *TINY_OVERRIDES, "OUTPUT_DIR", str(target))
    assert code == 2
    _one_line(err, "train_net", "OUTPUT_DIR", str(target))
    assert read_tree(watched) == before


def test_truncated_pth_weights_are_one_line_before_the_model_is_built(watched, capsys, monkeypatch):
    from transfer.training import trainer

    torch.save({"model": {"w": torch.zeros(1000)}}, watched / "w.pth")
    data = (watched / "w.pth").read_bytes()
    (watched / "w.pth").write_bytes(data[: len(data) // 2])
    monkeypatch.setattr(trainer.TransferTrainer, "build_model",
                        classmethod(lambda cls, cfg: pytest.fail("model built before the weights were checked")))
    before = read_tree(watched)
    code, err = _train_net(capsys, *TINY_OVERRIDES, "MODEL.WEIGHTS", str(watched / "w.pth"),
                           "OUTPUT_DIR", str(watched / "out"))
    assert code == 2
    _one_line(err, "train_net", "w.pth", "truncated or corrupt")
    assert read_tree(watched) == before


# ----------------------------------------------------------------------------- pretraining (13)

def test_refused_pretraining_run_leaves_nothing(synthetic_root, tmp_path, capsys):
    root, counts = synthetic_root
    out = tmp_path / "pre"
    code = load_tool("pretrain_backbone").main(
        ["--config-file", os.path.join(REPO_ROOT, "configs", "pretrain", "moco_v2_R_50.yaml"),
         "DATA.ROOT", str(root / "imagenet"), "SOLVER.BATCH_SIZE", "4096", "MOCO.K", "8192", "OUTPUT_DIR", str(out)])
    assert code == 2
    _one_line(capsys.readouterr().err, "pretrain_backbone", "SOLVER.BATCH_SIZE 4096")
    assert not out.exists()


# ---------------------------------------------------------------- one run as a user starts it

def test_command_line_exit_status_and_no_traceback(watched):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "tools", "train_net.py"), "--config-file", FPN,
                           "SOLVER.MAX_ITER", "abc", "OUTPUT_DIR", str(watched / "out")],
                          capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=300)
    assert done.returncode == 2
    _one_line(done.stderr, "train_net", "SOLVER.MAX_ITER")
    assert not (watched / "out").exists()
