"""The backbone converter's errors (one line, nothing written) and its command-line tool."""
import argparse
import os
import subprocess
import sys

import pytest
import torch

import transfer  # noqa: F401  (Detectron2 compatibility fixes before any detectron2 import)
from checkpoint_builders import (assert_same_features, model, pycontrast_checkpoint, tv_state, with_changes,
                                 without, write)
from tool_loader import load_tool
from pretrain.checkpoints import names
from pretrain.checkpoints.errors import ConversionError
from pretrain.common.paths import REPO_ROOT
from transfer.conversion.convert import convert

TOOL = os.path.join(REPO_ROOT, "tools", "convert_backbone.py")

pytestmark = pytest.mark.usefixtures("torch_one_thread")


# ----------------------------------------------------------------------------------- errors
ERROR_CASES = {
    "unknown layout": ({"weights": {"foo.weight": torch.zeros(2)}, "bar": torch.zeros(1)},
                       "unknown checkpoint layout; keys seen: weights.foo.weight, bar; layouts tried: pretrain"),
    "partial backbone": (without("layer4."), r"partial backbone .*: res5 \(layer4\) missing"),
    "missing tensor": ({k: v for k, v in tv_state().items() if k != "layer2.0.bn1.running_var"},
                       "missing, e.g. layer2.0.bn1.running_var"),
    "shape mismatch": (with_changes(layer3__0__conv1__weight=torch.zeros(256, 64, 3, 3)),
                       r"shape mismatch .*layer3.0.conv1.weight is \(256, 64, 3, 3\).*needs \(256, 128, 3, 3\)"),
    "vision transformer": ({"cls_token": torch.zeros(1, 1, 8), "pos_embed": torch.zeros(1, 5, 8),
                            "patch_embed.proj.weight": torch.zeros(8, 3, 16, 16),
                            "blocks.0.attn.qkv.weight": torch.zeros(24, 8)}, "Vision Transformer"),
    "mocov3 vit": ({"state_dict": {"module.base_encoder.cls_token": torch.zeros(1, 1, 8),
                                   "module.base_encoder.patch_embed.proj.weight": torch.zeros(8, 3, 16, 16)}},
                   "holds no ResNet.*Vision Transformer"),
    "cmc": ({"model": {"module.encoder.l_to_ab.conv1.weight": torch.zeros(32, 1, 7, 7),
                       "module.encoder.ab_to_l.conv1.weight": torch.zeros(32, 2, 7, 7)}},
            "CMC checkpoint.*two encoders on L and ab inputs are not an RGB backbone"),
    "cifar stem": (with_changes(conv1__weight=torch.zeros(64, 3, 3, 3)), "stem conv is 3x3"),
    "needs full unpickling": ({"opt": argparse.Namespace(lr=0.1), "model": tv_state()},
                              r"needs full unpickling \(it stores argparse.Namespace\).*--trust-pickle"),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_error_is_one_line_and_writes_nothing(case, tmp_path):
    obj, message = ERROR_CASES[case]
    src = write(obj, tmp_path / "in.pth", "torch")
    out = tmp_path / "out.pkl"
    with pytest.raises(ConversionError, match=message) as info:
        convert(src, str(out))
    assert "\n" not in str(info.value)
    assert os.listdir(tmp_path) == ["in.pth"]


def test_file_errors(tmp_path):
    out = str(tmp_path / "out.pkl")
    with pytest.raises(ConversionError, match="nothere.pth: no such file"):
        convert(str(tmp_path / "nothere.pth"), out)
    good = write(tv_state(), tmp_path / "good.pth", "torch")
    data = open(good, "rb").read()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(ConversionError, match="cut.pth: cannot read the checkpoint .truncated or corrupt"):
        convert(str(tmp_path / "cut.pth"), out)
    (tmp_path / "junk.pkl").write_bytes(b"\x80\x04not a pickle at all" * 10)
    with pytest.raises(ConversionError, match="junk.pkl: cannot read the checkpoint"):
        convert(str(tmp_path / "junk.pkl"), out)
    unsafe = write({"model": {}, "cfg": argparse.Namespace(a=1)}, tmp_path / "unsafe.pkl", "pickle")
    with pytest.raises(ConversionError, match=r"unsafe.pkl: needs full unpickling .*argparse.Namespace"):
        convert(unsafe, out)
    with pytest.raises(ConversionError, match="must end in .pkl"):
        convert(good, str(tmp_path / "out.pth"))
    with pytest.raises(ConversionError, match="--ema: torchvision checkpoints have no EMA|no EMA/momentum"):
        convert(good, out, ema=True)
    with pytest.raises(ConversionError, match="is not a moco checkpoint"):
        convert(good, out, fmt="moco")
    assert not os.path.exists(out)


def test_verification_catches_a_wrong_mapping(tmp_path, monkeypatch):
    """Swapping two BatchNorms' statistics keeps every name and shape valid: only the features tell."""
    src = write(tv_state(), tmp_path / "tv.pth", "torch")
    real = names.torchvision_to_detectron2_name
    swap = {"layer2.1.bn1.running_var": "layer2.1.bn2.running_var",
            "layer2.1.bn2.running_var": "layer2.1.bn1.running_var"}
    monkeypatch.setattr(names, "torchvision_to_detectron2_name", lambda name: real(swap.get(name, name)))
    with pytest.raises(ConversionError, match=r"verification failed: Detectron2's res\d differs"):
        convert(src, str(tmp_path / "out.pkl"))
    assert os.listdir(tmp_path) == ["tv.pth"]
    convert(src, str(tmp_path / "unverified.pkl"), verify=False)  # --no-verify writes it anyway
    assert os.path.exists(tmp_path / "unverified.pkl")


# ----------------------------------------------------------------------------------- the CLI
def _run(*args):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # tiny models: one thread is faster on a busy machine
    return subprocess.run([sys.executable, TOOL, *args], capture_output=True, text=True, cwd=REPO_ROOT, env=env,
                          timeout=300)


def test_cli_converts_and_prints_a_summary(tmp_path):
    src = write(pycontrast_checkpoint(tv_state(), tv_state()), tmp_path / "infomin.pth", "torch")
    out = tmp_path / "infomin.pkl"
    done = _run(src, str(out), "--trust-pickle", "--format", "pycontrast")
    assert done.returncode == 0, done.stderr
    for text in ("layout        pycontrast", "R-18", "kept 100", "max relative error",
                 "MODEL.RESNETS.STRIDE_IN_1X1 = False", "INPUT.FORMAT = 'RGB'"):
        assert text in done.stdout
    assert_same_features(str(out), model("resnet18"))


def _exit_status(tool, argv):
    with pytest.raises(SystemExit) as exit_info:
        tool.main(argv)
    return exit_info.value.code


def test_cli_errors_are_one_line_without_output(tmp_path, capsys):
    """Every user error, from the converter or from argparse, is one line on stderr and exit status 2."""
    tool = load_tool("convert_backbone")
    partial = write(without("layer3."), tmp_path / "partial.pth", "torch")
    assert _exit_status(tool, [partial, str(tmp_path / "out.pkl")]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == [
        f"convert_backbone: error: partial backbone in {partial}: res4 (layer3) missing"]
    assert _exit_status(tool, [partial, str(tmp_path / "out.pkl"), "--to", "torchvision"]) == 2
    assert "must end in .pth or .pt" in capsys.readouterr().err
    infomin = write(pycontrast_checkpoint(tv_state(), tv_state()), tmp_path / "infomin.pth", "torch")
    assert _exit_status(tool, [infomin, str(tmp_path / "out.pkl")]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("convert_backbone: error: ") and "--trust-pickle" in lines[0]
    assert _exit_status(tool, [infomin, str(tmp_path / "out.pkl"), "--format", "simclr"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("convert_backbone: error: argument --format: invalid choice")
    assert sorted(os.listdir(tmp_path)) == ["infomin.pth", "partial.pth"]
