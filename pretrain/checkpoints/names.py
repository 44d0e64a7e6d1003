"""ResNet tensor names: torchvision <-> Detectron2, and Caffe2 (Detectron1) -> torchvision.

Pure string tables (no Detectron2 import): a Detectron2 or Caffe2 ``.pkl`` is read into torchvision names,
and torchvision names are written back as Detectron2's::

    torchvision                       Detectron2                      Caffe2
    conv1.weight                      stem.conv1.weight               conv1_w
    bn1.<p>                           stem.conv1.norm.<p>             res_conv1_bn_<bn>
    layer<L>.<b>.conv<i>.weight       res<L+1>.<b>.conv<i>.weight     res<L+1>_<b>_branch2<a|b|c>_w
    layer<L>.<b>.bn<i>.<p>            res<L+1>.<b>.conv<i>.norm.<p>   res<L+1>_<b>_branch2<a|b|c>_bn_<bn>
    layer<L>.<b>.downsample.0.weight  res<L+1>.<b>.shortcut.weight    res<L+1>_<b>_branch1_w
    layer<L>.<b>.downsample.1.<p>     res<L+1>.<b>.shortcut.norm.<p>  res<L+1>_<b>_branch1_bn_<bn>

``<p>`` is a BatchNorm parameter (``weight``, ``bias``, ``running_mean``, ``running_var``); Caffe2's ``<bn>``
is ``s``, ``b``, ``rm``, ``riv`` (or ``gamma``, ``beta``, ``running_mean``, ``running_var``).
"""
import re

from pretrain.checkpoints.errors import ConversionError

__all__ = ["torchvision_to_detectron2_name", "detectron2_to_torchvision_name", "caffe2_to_torchvision_name",
           "torchvision_to_detectron2", "detectron2_to_torchvision"]

_BN_PARAMS = ("weight", "bias", "running_mean", "running_var")
_C2_BN = {"s": "weight", "b": "bias", "rm": "running_mean", "riv": "running_var", "gamma": "weight",
          "beta": "bias", "running_mean": "running_mean", "running_var": "running_var"}


def torchvision_to_detectron2_name(name):
    """Detectron2's name for a torchvision ResNet backbone tensor, or None."""
    if name == "conv1.weight":
        return "stem.conv1.weight"
    m = re.fullmatch(r"bn1\.(\w+)", name)
    if m and m[1] in _BN_PARAMS:
        return f"stem.conv1.norm.{m[1]}"
    m = re.fullmatch(r"layer([1-4])\.(\d+)\.(.+)", name)
    if not m:
        return None
    block, rest = f"res{int(m[1]) + 1}.{m[2]}.", m[3]
    if re.fullmatch(r"conv\d\.weight", rest):
        return block + rest
    r = re.fullmatch(r"bn(\d)\.(\w+)", rest)
    if r and r[2] in _BN_PARAMS:
        return f"{block}conv{r[1]}.norm.{r[2]}"
    if rest == "downsample.0.weight":
        return block + "shortcut.weight"
    r = re.fullmatch(r"downsample\.1\.(\w+)", rest)
    if r and r[1] in _BN_PARAMS:
        return f"{block}shortcut.norm.{r[1]}"
    return None


def detectron2_to_torchvision_name(name):
    """torchvision's name for a Detectron2 ResNet backbone tensor (``stem.*``, ``res2..5.*``), or None."""
    if name == "stem.conv1.weight":
        return "conv1.weight"
    m = re.fullmatch(r"stem\.conv1\.norm\.(\w+)", name)
    if m and m[1] in _BN_PARAMS:
        return f"bn1.{m[1]}"
    m = re.fullmatch(r"res([2-5])\.(\d+)\.(.+)", name)
    if not m:
        return None
    block, rest = f"layer{int(m[1]) - 1}.{m[2]}.", m[3]
    if re.fullmatch(r"conv\d\.weight", rest):
        return block + rest
    r = re.fullmatch(r"conv(\d)\.norm\.(\w+)", rest)
    if r and r[2] in _BN_PARAMS:
        return f"{block}bn{r[1]}.{r[2]}"
    if rest == "shortcut.weight":
        return block + "downsample.0.weight"
    r = re.fullmatch(r"shortcut\.norm\.(\w+)", rest)
    if r and r[1] in _BN_PARAMS:
        return f"{block}downsample.1.{r[1]}"
    return None


def caffe2_to_torchvision_name(name):
    """torchvision's name for a Caffe2 / Detectron1 ResNet blob (``conv1_w``, ``res2_0_branch2a_w``), or None."""
    if name == "conv1_w":
        return "conv1.weight"
    m = re.fullmatch(r"res_conv1_bn_(\w+)", name)
    if m and m[1] in _C2_BN:
        return f"bn1.{_C2_BN[m[1]]}"
    m = re.fullmatch(r"res([2-5])_(\d+)_branch(1|2[abc])_(w|bn_\w+)", name)
    if not m:
        return None
    block = f"layer{int(m[1]) - 1}.{m[2]}."
    branch = m[3]
    if m[4] == "w":
        return block + ("downsample.0.weight" if branch == "1" else f"conv{'abc'.index(branch[1]) + 1}.weight")
    param = _C2_BN.get(m[4][3:])
    if param is None:
        return None
    return block + (f"downsample.1.{param}" if branch == "1" else f"bn{'abc'.index(branch[1]) + 1}.{param}")


def torchvision_to_detectron2(state):
    """Rename a torchvision ResNet state dict (backbone tensors only) to Detectron2's names."""
    out = {}
    for key, value in state.items():
        new = torchvision_to_detectron2_name(key)
        if new is None:
            raise ConversionError(f"no Detectron2 name for the torchvision tensor {key}")
        out[new] = value
    return out


def detectron2_to_torchvision(state):
    """Rename Detectron2 ResNet backbone tensors (``stem.*``, ``res2..5.*``) to torchvision's names."""
    out = {}
    for key, value in state.items():
        new = detectron2_to_torchvision_name(key)
        if new is None:
            raise ConversionError(f"no torchvision name for the Detectron2 tensor {key}")
        out[new] = value
    return out
