"""pretrain.config and pretrain.training.solver: the config idiom, _BASE_, errors, the lr schedule, precision choice."""
import math
import os

import pytest
import torch

from pretrain.config import ConfigError, get_cfg, load_config
from pretrain.training.solver import CPU_BF16_MIN_INPUT, LRSchedule, resolve_precision
from pretrain.common.paths import CONFIGS_DIR


CONFIGS = os.path.join(CONFIGS_DIR, "pretrain")


def test_overrides_and_coercion():
    cfg = load_config(f"{CONFIGS}/moco_v2_R_50.yaml",
                      ["MOCO.T", "1", "DATA.ROOT", "/data/imagenet", "INPUT.CROP_SCALE", "(0.1, 1)",
                       "JIGSAW.ENABLED", "True"])
    assert cfg.MOCO.T == 1.0 and isinstance(cfg.MOCO.T, float)
    assert cfg.DATA.ROOT == "/data/imagenet" and tuple(cfg.INPUT.CROP_SCALE) == (0.1, 1.0)
    assert cfg.JIGSAW.ENABLED is True
    assert get_cfg().MOCO.T == 0.07  # defaults untouched


@pytest.mark.parametrize("opts, message", [
    (["MOCO.KK", "1"], "unknown config key MOCO.KK"),
    (["MOCO", "1"], "MOCO is a group of keys"),
    (["MOCO.K", "lots"], "bad value for MOCO.K"),
    (["MOCO.K"], "KEY VALUE pairs"),
])
def test_override_errors(opts, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, opts)


def test_base_chain_and_file_errors(tmp_path):
    (tmp_path / "base.yaml").write_text("MOCO:\n  T: 0.3\n  K: 1024\nINPUT:\n  SIZE: 96\n")
    (tmp_path / "child.yaml").write_text("_BASE_: base.yaml\nMOCO:\n  K: 2048\n")
    cfg = load_config(str(tmp_path / "child.yaml"))
    assert (cfg.MOCO.T, cfg.MOCO.K, cfg.INPUT.SIZE) == (0.3, 2048, 96)
    (tmp_path / "bad_key.yaml").write_text("SOLVER:\n  EPOCH: 3\n")
    with pytest.raises(ConfigError, match=r"bad_key.yaml: unknown config key SOLVER.EPOCH"):
        load_config(str(tmp_path / "bad_key.yaml"))
    (tmp_path / "loop.yaml").write_text("_BASE_: loop.yaml\n")
    with pytest.raises(ConfigError, match="loops"):
        load_config(str(tmp_path / "loop.yaml"))
    (tmp_path / "broken.yaml").write_text("MOCO: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(str(tmp_path / "broken.yaml"))
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(str(tmp_path / "missing.yaml"))


def test_step_schedule_of_moco_v1_scales_to_max_iter():
    cfg = load_config(f"{CONFIGS}/moco_v1_R_50.yaml", ["SOLVER.BATCH_SIZE", "512"])
    sched = LRSchedule(cfg, max_iter=200 * 100)  # 100 iterations per epoch
    assert sched(0) == pytest.approx(0.06)  # 0.03 per 256 images
    assert sched(120 * 100 - 1) == pytest.approx(0.06) and sched(120 * 100) == pytest.approx(0.006)
    assert sched(160 * 100) == pytest.approx(0.0006)
    short = LRSchedule(cfg, max_iter=50)  # SOLVER.MAX_ITER 50: drops at 60% and 80% of the run
    assert short(29) == pytest.approx(0.06) and short(30) == pytest.approx(0.006) and short(40) == pytest.approx(0.0006)


def test_cosine_schedule_and_warmup():
    cfg = load_config(f"{CONFIGS}/moco_v2_R_50.yaml")
    sched = LRSchedule(cfg, max_iter=1000)
    for it in (0, 250, 500, 999):
        assert sched(it) == pytest.approx(0.03 * 0.5 * (1 + math.cos(math.pi * it / 1000)))
    cfg = load_config(f"{CONFIGS}/infomin_R_50.yaml", ["SOLVER.WARMUP_EPOCHS", "10"])
    sched = LRSchedule(cfg, max_iter=2000)  # warm-up over 10 of 200 epochs = 100 iterations
    top = sched._main(100)
    assert sched(0) == pytest.approx(0.01 * top) and sched(50) == pytest.approx((0.01 * 0.5 + 0.5) * top)
    assert sched(100) == pytest.approx(top)
    assert sched(1999) == pytest.approx(0.03 * (0.001 + 0.999 * 0.5 * (1 + math.cos(math.pi * 1899 / 1900))))
    state = sched.state_dict()
    again = LRSchedule(cfg, max_iter=2000)
    assert again.load_state_dict(state) == [] and again.last_iter == 1999
    assert LRSchedule(cfg, max_iter=10).load_state_dict(state)  # a changed schedule is reported


def test_precision_choice():
    cpu = torch.device("cpu")
    assert resolve_precision("fp32", cpu) == "fp32" and resolve_precision("bf16", cpu, 8) == "bf16"
    # tiny inputs reach layer4 at 1x1, where oneDNN's bf16 conv backward is unreliable: auto stays fp32
    assert resolve_precision("auto", cpu, CPU_BF16_MIN_INPUT - 1) == "fp32"
    assert resolve_precision("auto", cpu, 224) in ("bf16", "fp32")
