"""tools/preflight.py (transfer.runtime.preflight) on a machine without CUDA: what it cannot check it says so
(skipped, with the reason), the rest is checked for real (SyncBN over gloo processes, a CPU training step,
the sweep's weights and datasets), and a failing check makes the exit status 1."""
import pytest
import torch

from tool_loader import load_tool

from transfer.runtime.preflight import CheckResult, Preflight, SpeedRow, format_report


@pytest.fixture
def no_cuda(monkeypatch):
    """This process sees no GPU, whatever the machine has (the CPU path is what is tested)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def _sweep(tmp_path, weights):
    path = tmp_path / "sweep.yaml"
    path.write_text(f"name: pf\nbackbones: {{tv: '{weights}', random: ''}}\ntasks: [coco_mask_rcnn_R_50_FPN_1x]\n"
                    "modes: [frozen]\nseeds: [0]\n")
    return str(path)


@pytest.fixture
def weights(tmp_path):
    import torchvision

    path = tmp_path / "tv_r18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    return str(path)


@pytest.mark.slow
def test_cpu_path_checks_what_it_can(synthetic_root, no_cuda, weights, tmp_path, capsys):
    tool = load_tool("preflight")
    code = tool.main(["--sweep", _sweep(tmp_path, weights), "--steps", "1"])
    out = capsys.readouterr().out
    assert code == 0, out
    lines = {line.split()[0]: line for line in out.splitlines() if line.split()}
    for name in ("cuda", "nccl"):
        assert lines[name].split()[1] == "skipped" and "no CUDA device visible" in lines[name]
    # without CUDA: Detectron2's NaiveSyncBatchNorm over 2 gloo processes, equal to BN on the whole batch
    assert lines["syncbn"].split()[1] == "ok" and "NaiveSyncBatchNorm over 2 gloo processes" in lines["syncbn"]
    assert lines["compiled_ops"].split()[1] in ("ok", "warn")
    assert lines["train_step"].split()[1] == "ok" and "AMP" in lines["train_step"] and "cannot be checked" in \
        lines["train_step"]
    assert lines["weights"].split()[1] == "ok" and "tv (" in lines["weights"]
    assert lines["datasets"].split()[1] == "ok" and "coco_2017_train" in lines["datasets"]
    assert "Mask R-CNN R18-FPN tiny" in out and "s/iter" in out
    assert "preflight passed: 5 ok" in out or "preflight passed: 6 ok" in out


def test_missing_or_unsafe_weights_fail_the_preflight(synthetic_root, no_cuda, tmp_path, capsys):
    import pickle

    tool = load_tool("preflight")
    code = tool.main(["--sweep", _sweep(tmp_path, str(tmp_path / "missing.pkl")), "--only", "weights", "datasets"])
    out = capsys.readouterr().out
    assert code == 1
    weights_line = next(line for line in out.splitlines() if line.startswith("weights"))
    assert "FAIL" in weights_line and "missing.pkl" in weights_line
    assert "preflight FAILED: 1 ok, 0 warn, 0 skipped, 1 FAIL" in out  # datasets still checked

    unsafe = tmp_path / "unsafe.pkl"
    with open(unsafe, "wb") as f:
        pickle.dump({"model": {"w": object()}}, f)  # needs full unpickling
    assert tool.main(["--sweep", _sweep(tmp_path, str(unsafe)), "--only", "weights"]) == 1
    assert "--trust-pickle" in capsys.readouterr().out


def test_usage_errors_are_one_line(capsys):
    tool = load_tool("preflight")
    for argv, text in ((["--gpu-type", "h999"], "--gpu-type h999: no cost table"),
                       (["--only", "nope"], "--only: unknown check(s) nope"),
                       (["--sweep", "/nonexistent.yaml"], "--sweep: file not found")):
        with pytest.raises(SystemExit) as stop:
            tool.main(argv)
        assert stop.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("preflight: error: ") and text in err and len(err.strip().splitlines()) == 1


def test_report_format():
    report = Preflight("preflight on node1: python")
    report.checks = [CheckResult("cuda", "ok", "8 GPU(s): 0: H100", 1.25),
                     CheckResult("nccl", "FAIL", "RuntimeError: timeout", 180.0),
                     CheckResult("weights", "skipped", "no sweep file given (--sweep FILE)")]
    report.speed = [SpeedRow("Mask R-CNN R50-FPN finetune, 800x1333, 2 img, AMP", "cuda:0 H100", 0.2, 10.0, 5.5,
                             "0.371 s/iter, 5.4 img/s per GPU on 8 x V100")]
    report.notes = ["no cost table for H100"]
    text = format_report(report)
    lines = text.splitlines()
    assert lines[0] == "preflight on node1: python"
    header = lines[2].split()
    assert header == ["check", "status", "seconds", "detail"]
    assert lines[4].split()[:3] == ["cuda", "ok", "1.2"] or lines[4].split()[:3] == ["cuda", "ok", "1.3"]
    assert lines[5].split()[:3] == ["nccl", "FAIL", "180.0"]
    speed = next(line for line in lines if line.startswith("Mask R-CNN R50-FPN finetune"))
    assert "0.2000" in speed and "10.00" in speed and "5.5" in speed and "8 x V100" in speed
    assert "note: no cost table for H100" in lines
    assert lines[-1] == "preflight FAILED: 1 ok, 0 warn, 1 skipped, 1 FAIL"
    assert report.failed == [report.checks[1]]
