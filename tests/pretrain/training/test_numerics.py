"""pretrain.training.numerics: the candidates a config allows, the pick rule, the per-machine cache, the
trainer's use of it (resume keeps the recorded choice), and the documented loss tolerance of each setting."""
import json
import os
import random
import types

import pytest
import torch

from pretrain.bench import _moco_cfg
from pretrain.methods import build_method
from pretrain.training import numerics
from pretrain.training.solver import build_optimizer
from pretrain.training.trainer import Trainer, train_step

CPU = torch.device("cpu")
ALL4 = [("fp32", False), ("fp32", True), ("bf16", False), ("bf16", True)]


def test_candidates_follow_the_config_and_the_cpu(monkeypatch):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    assert numerics.candidates("auto", "auto", CPU, 64) == ALL4
    assert numerics.candidates("auto", "auto", CPU, 16) == [("fp32", False), ("fp32", True)]  # 1x1 at layer4
    assert numerics.candidates("bf16", "auto", CPU, 16) == [("bf16", False), ("bf16", True)]  # asked for
    assert numerics.candidates("auto", False, CPU, 64) == [("fp32", False), ("bf16", False)]
    assert numerics.candidates("fp32", True, CPU, 64) == [("fp32", True)]
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")  # no oneDNN bf16 kernels
    assert numerics.candidates("auto", "auto", CPU, 64) == [("fp32", False), ("fp32", True)]
    gpu = torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    assert numerics.candidates("auto", "auto", gpu, 64) == [("bf16", False), ("bf16", True)]
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 0))
    assert numerics.candidates("auto", True, gpu, 64) == [("fp16", True)]


def test_pick_prefers_fp32_nchw_unless_another_is_clearly_faster():
    assert numerics.pick({("fp32", False): 1.0, ("fp32", True): 0.98}) == ("fp32", False)  # within 3%
    assert numerics.pick({("fp32", False): 1.0, ("fp32", True): 0.9}) == ("fp32", True)
    assert numerics.pick({("fp32", False): 1.0, ("bf16", True): 1.2}) == ("fp32", False)
    assert numerics.pick(dict(zip(ALL4, (1.0, 1.1, 0.9, 0.6)))) == ("bf16", True)
    assert numerics.pick(dict(zip(ALL4, (1.0, 0.95, 0.94, 1.5)))) == ("fp32", True)  # bf16 NCHW: 1% is noise
    rng = random.Random(0)
    for _ in range(500):  # never slower than the reference, never a preferred setting given up for < 3%
        seconds = {c: rng.uniform(0.5, 1.5) for c in ALL4}
        choice = numerics.pick(seconds)
        assert seconds[choice] <= seconds[("fp32", False)]
        preferred = ALL4[:ALL4.index(choice)]
        assert all(seconds[choice] < seconds[c] for c in preferred)


def fake_timer(calls, seconds):
    def time_candidates(arch, head, dim, size, batch, device, cands, key_forward=True):
        calls.append((arch, size, batch, tuple(cands)))
        return {c: seconds.get(c, 1.0) for c in cands}
    return time_candidates


def test_choice_is_timed_once_then_read_from_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SSL_D2_TRANSFER_CACHE", str(tmp_path))
    calls = []
    monkeypatch.setattr(numerics, "time_candidates", fake_timer(calls, {("fp32", True): 0.5}))
    first = numerics.choose("resnet18", "mlp", 128, 64, 32, CPU, "fp32", "auto")
    assert first[:2] == ("fp32", True) and first[2].startswith("timed now") and len(calls) == 1
    files = os.listdir(tmp_path / "numerics")
    assert len(files) == 1
    again = numerics.choose("resnet18", "mlp", 128, 64, 32, CPU, "fp32", "auto")
    assert again[:2] == ("fp32", True) and again[2].startswith("cached in") and len(calls) == 1
    # another size, another batch, other threads: timed again; above MAX_BATCH the timed batch is the same
    numerics.choose("resnet18", "mlp", 128, 96, 32, CPU, "fp32", "auto")
    numerics.choose("resnet18", "mlp", 128, 64, 16, CPU, "fp32", "auto")
    assert len(calls) == 3
    assert numerics.choose("resnet18", "mlp", 128, 64, 64, CPU, "fp32", "auto")[2].startswith("cached")
    assert len(calls) == 3
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(threads + 1)
        numerics.choose("resnet18", "mlp", 128, 64, 32, CPU, "fp32", "auto")
    finally:
        torch.set_num_threads(threads)
    assert len(calls) == 4
    # explicit settings: nothing to time
    assert numerics.choose("resnet18", "mlp", 128, 64, 32, CPU, "fp32", False) == ("fp32", False, "configured")
    assert len(calls) == 4


def test_a_damaged_entry_is_replaced_and_none_turns_the_cache_off(tmp_path, monkeypatch):
    monkeypatch.setenv("SSL_D2_TRANSFER_CACHE", str(tmp_path))
    calls = []
    monkeypatch.setattr(numerics, "time_candidates", fake_timer(calls, {("fp32", True): 0.5}))
    numerics.choose("resnet18", "mlp", 128, 64, 32, CPU, "fp32", "auto")
    (entry,) = (tmp_path / "numerics").iterdir()
    entry.write_text("{not json")
    assert numerics.choose("resnet18", "mlp", 128, 64, 32, CPU, "fp32", "auto")[2].startswith("timed now")
    assert json.loads(entry.read_text())["choice"] == ["fp32", True]
    assert numerics.choose("resnet18", "mlp", 128, 64, 32, CPU, "fp32", "auto")[2].startswith("cached")
    assert len(calls) == 2
    monkeypatch.setenv("SSL_D2_TRANSFER_CACHE", "none")
    for _ in range(2):
        assert numerics.choose("resnet18", "mlp", 128, 64, 32, CPU, "fp32", "auto")[2].startswith("timed now")
    assert len(calls) == 4


def test_the_first_writer_wins(tmp_path, monkeypatch):
    """Two runs timing the same shape at once end up with one choice: the one stored first."""
    monkeypatch.setenv("SSL_D2_TRANSFER_CACHE", str(tmp_path))
    inner = fake_timer([], {("fp32", True): 0.5})

    def racing(*args, **kwargs):
        out = inner(*args, **kwargs)
        # meanwhile another process stores its own (different) choice under the same key
        monkeypatch.setattr(numerics, "time_candidates", fake_timer([], {("fp32", False): 0.1}))
        numerics.choose("resnet18", "mlp", 128, 64, 32, CPU, "fp32", "auto")
        return out

    monkeypatch.setattr(numerics, "time_candidates", racing)
    got = numerics.choose("resnet18", "mlp", 128, 64, 32, CPU, "fp32", "auto")
    assert got[:2] == ("fp32", False) and "concurrent" in got[2]


def test_timing_runs_and_leaves_the_callers_random_stream_alone():
    torch.manual_seed(3)
    state = torch.get_rng_state()
    seconds = numerics.time_candidates("resnet18", "mlp", 16, 32, 2, CPU, [("fp32", False), ("fp32", True)],
                                       rounds=1)
    assert set(seconds) == {("fp32", False), ("fp32", True)} and all(s > 0 for s in seconds.values())
    assert torch.equal(torch.get_rng_state(), state)


def trainer_stub(precision, channels_last):
    cfg = _moco_cfg("resnet18", 32, 8, 64, precision, channels_last)
    cfg.freeze()
    return types.SimpleNamespace(cfg=cfg, rank=0, device=CPU, local_batch=8,
                                 method=types.SimpleNamespace(encoder_k=None))


def test_trainer_resumes_with_the_recorded_choice(tmp_path, monkeypatch):
    monkeypatch.setenv("SSL_D2_TRANSFER_CACHE", str(tmp_path))
    calls = []
    monkeypatch.setattr(numerics, "time_candidates", fake_timer(calls, {("fp32", True): 0.5}))
    stub = trainer_stub("fp32", "auto")
    assert Trainer._numerics(stub, None, 32) == ("fp32", True) and len(calls) == 1
    # the checkpoint recorded NCHW: a resumed run continues with it, whatever this machine would time now
    ckpt = {"numerics": {"precision": "fp32", "channels_last": False}}
    assert Trainer._numerics(stub, ckpt, 32) == ("fp32", False) and len(calls) == 1
    # an explicit setting beats the checkpoint's
    assert Trainer._numerics(trainer_stub("fp32", True), ckpt, 32) == ("fp32", True)


def losses(setting, size=32, steps=5):
    precision, channels_last = setting
    cfg = _moco_cfg("resnet18", size, 16, 256, "fp32", False)
    torch.manual_seed(0)
    method = build_method(cfg)
    method.channels_last = channels_last
    if channels_last:
        method.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(cfg, method.trainable_parameters())
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    g = torch.Generator().manual_seed(1)
    dtype = torch.bfloat16 if precision == "bf16" else None
    out = []
    torch.manual_seed(5)
    for it in range(steps):
        batch = {k: torch.randint(0, 256, (16, 3, size, size), dtype=torch.uint8, generator=g)
                 for k in ("view1", "view2")}
        out.append(train_step(method, method, optimizer, scaler, batch, it, dtype, "cpu")["loss"].item())
    return out


@pytest.mark.parametrize("setting,tolerance", [(("fp32", True), 1e-3), (("bf16", False), 0.02),
                                               (("bf16", True), 0.02)])
def test_losses_stay_within_the_documented_tolerance_of_fp32_nchw(setting, tolerance):
    """README / numerics docstring: over the first 5 steps from the same weights and batches, the loss of
    fp32 channels_last stays within 0.1% of fp32 NCHW's and bf16's within 2% (measured: 4e-4 and 1%)."""
    if setting[0] == "bf16" and ("bf16", True) not in numerics.candidates("auto", "auto", CPU, 32):
        pytest.skip("no oneDNN bf16 kernels on this CPU")
    reference = losses(("fp32", False))
    got = losses(setting)
    assert all(abs(a - b) <= tolerance * b for a, b in zip(got, reference)), (got, reference)
    assert got != reference  # another computation did run
