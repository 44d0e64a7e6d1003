"""``train_net --print-config``: the effective config and the protocol lines, without data or a model."""
import os

import yaml

from pretrain.common.paths import REPO_ROOT

CONFIGS = os.path.join(REPO_ROOT, "configs", "transfer")
VOC = os.path.join(CONFIGS, "voc_faster_rcnn_R_50_C4_24k.yaml")


def _print_config(argv, capsys):
    from transfer.training.train_net import main

    assert main(["--config-file", VOC, "--print-config", *argv]) == 0
    out = capsys.readouterr().out
    comments = [line for line in out.splitlines() if line.startswith("#")]
    return yaml.safe_load(out), comments


def test_reference_hardware_reads_no_data(tmp_path, monkeypatch, capsys):
    # no datasets anywhere, no writable output: it still succeeds and writes nothing
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "nowhere"))
    out_dir = tmp_path / "out"
    cfg, comments = _print_config(["--reference", "TRANSFER.MODE", "frozen", "OUTPUT_DIR", str(out_dir)], capsys)
    # Detectron2's VOC config on 8 GPUs: 16 images per step, 18k iterations (Wu et al. use its default)
    assert cfg["SOLVER"]["IMS_PER_BATCH"] == 16 and cfg["SOLVER"]["MAX_ITER"] == 18000
    assert cfg["MODEL"]["DEVICE"] == "cuda" and cfg["MODEL"]["RESNETS"]["NORM"] == "FrozenBN"
    assert "8 processes with CUDA" in comments[0]
    assert "# protocol: wu2020:PascalVOC-Detection/faster_rcnn_R_50_C4 (" in "\n".join(comments)
    # no weights: Detectron2's R-50 where the paper has R-18, each deviation named
    assert any(line.startswith("# deviation: MODEL.RESNETS.DEPTH 50 instead of 18") for line in comments)
    assert not out_dir.exists() and not (tmp_path / "nowhere").exists()


def test_given_hardware_scales_and_lists_the_deviations(capsys):
    cfg, comments = _print_config(["--num-gpus", "2", "SOLVER.MAX_ITER", "100"], capsys)
    # the linear scaling rule from 8 processes (16 images) to 2 (4 images), then the shortened schedule
    assert cfg["SOLVER"]["IMS_PER_BATCH"] == 4 and cfg["SOLVER"]["MAX_ITER"] == 400
    text = "\n".join(comments)
    assert "# protocol: moco:pascal_voc_R_50_C4_24k" in text
    assert "# deviation: SOLVER.IMS_PER_BATCH 4 instead of 16" in text and "linear scaling rule" in text
    assert "SOLVER.MAX_ITER 400 instead of 24000" in text and "shortened schedule [not documented]" in text


def test_reference_needs_print_config(capsys):
    import pytest

    from transfer.training.train_net import main

    with pytest.raises(SystemExit) as stop:
        main(["--config-file", VOC, "--reference"])
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip().startswith("train_net: error: --reference goes with --print-config")
