"""The ResNet a state dict holds, inferred from tensor shapes alone, and torchvision's model for it.

Architecture keys come from the tensors: the depth from the blocks per stage and the block type, the
groups and width per group from the 3x3 convs of ``res2``, the stem and ``res2`` widths from their outputs,
so wide ResNets (WR-50-2), ResNeXt and R50x2-style width multipliers come out right. Names are
torchvision's (``conv1``, ``bn1``, ``layer1.0.conv1``, ...); ``res2..res5`` are ``layer1..layer4``.
"""
import dataclasses
import re

import torch
from torch import nn

from pretrain.checkpoints.errors import ConversionError, describe_keys, not_resnet_error

__all__ = ["ResNetArch", "ARCH_KEYS", "STRIDE_KEY", "TORCHVISION_RESNETS", "build_torchvision_resnet",
           "infer_architecture"]

STRIDE_KEY = "MODEL.RESNETS.STRIDE_IN_1X1"
ARCH_KEYS = ("MODEL.RESNETS.DEPTH", "MODEL.RESNETS.NUM_GROUPS", "MODEL.RESNETS.WIDTH_PER_GROUP",
             "MODEL.RESNETS.STEM_OUT_CHANNELS", "MODEL.RESNETS.RES2_OUT_CHANNELS")
TORCHVISION_RESNETS = {"resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d",
                       "resnext101_32x8d", "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2"}

_BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
_DEPTH = {("basic", (2, 2, 2, 2)): 18, ("basic", (3, 4, 6, 3)): 34, ("bottleneck", (3, 4, 6, 3)): 50,
          ("bottleneck", (3, 4, 23, 3)): 101, ("bottleneck", (3, 8, 36, 3)): 152}


@dataclasses.dataclass(frozen=True)
class ResNetArch:
    """A ResNet as both torchvision and Detectron2 can build it; widths are those of ``res2``."""

    depth: int
    bottleneck: bool
    stem_channels: int = 64
    res2_out_channels: int = 256
    num_groups: int = 1
    width_per_group: int = 64
    stride_in_1x1: bool = False

    @property
    def num_blocks(self):
        return _BLOCKS[self.depth]

    @property
    def bottleneck_channels(self):
        return self.num_groups * self.width_per_group

    @property
    def name(self):
        """Short name: R-18, R-50, X-50-32x4d, WR-50-2, R-50x2, ..."""
        if not self.bottleneck:
            name = f"R-{self.depth}"
            return name if self.stem_channels == 64 else f"{name} (stem {self.stem_channels})"
        mult = self.res2_out_channels / 256
        if self.num_groups > 1:
            name = f"X-{self.depth}-{self.num_groups}x{self.width_per_group}d"
        elif self.width_per_group == 64 * mult:
            name = f"R-{self.depth}"
        else:
            name = f"WR-{self.depth}-{self.width_per_group / (64 * mult):g}"
        if mult != 1:
            name += f"x{mult:g}"
        if self.stem_channels != 64 * mult:
            name += f" (stem {self.stem_channels})"
        return name

    @property
    def torchvision_name(self):
        """The torchvision model function building this network, or None."""
        if self.stem_channels != 64 or self.res2_out_channels != (256 if self.bottleneck else 64):
            return None
        if not self.bottleneck or (self.num_groups, self.width_per_group) == (1, 64):
            return f"resnet{self.depth}"
        if self.num_groups == 1 and self.width_per_group == 128:
            return f"wide_resnet{self.depth}_2"
        if self.num_groups > 1:
            return f"resnext{self.depth}_{self.num_groups}x{self.width_per_group}d"
        return None

    def describe(self):
        blocks = "bottleneck" if self.bottleneck else "basic"
        text = (f"{self.name}: {blocks} blocks {list(self.num_blocks)}, stem {self.stem_channels}, "
                f"res2 out {self.res2_out_channels}")
        if self.bottleneck:
            text += f", res2 bottleneck {self.num_groups}x{self.width_per_group}"
        if self.torchvision_name:
            text += f" (torchvision {self.torchvision_name})"
        return text

    def detectron2_cfg(self):
        """The ``MODEL.RESNETS.*`` keys Detectron2's ``build_resnet_backbone`` needs for this network."""
        return {"MODEL.RESNETS.DEPTH": self.depth,
                "MODEL.RESNETS.NUM_GROUPS": self.num_groups,
                "MODEL.RESNETS.WIDTH_PER_GROUP": self.width_per_group,
                "MODEL.RESNETS.STEM_OUT_CHANNELS": self.stem_channels,
                "MODEL.RESNETS.RES2_OUT_CHANNELS": self.res2_out_channels,
                STRIDE_KEY: bool(self.stride_in_1x1)}


def build_torchvision_resnet(arch, device=None):
    """torchvision's ``ResNet`` for ``arch`` (any stem and res2 width; stride moved to the 1x1 conv of
    each stage's first block when ``arch.stride_in_1x1``, as in MSRA's ResNet v1)."""
    from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

    block = Bottleneck if arch.bottleneck else BasicBlock
    planes = arch.res2_out_channels // block.expansion
    with torch.device(device or "cpu"):
        model = ResNet(BasicBlock, [1, 1, 1, 1])  # shell; every layer is rebuilt below
        model.inplanes = arch.stem_channels
        model.groups = arch.num_groups
        model.base_width = arch.width_per_group * 64 / planes
        model.conv1 = nn.Conv2d(3, arch.stem_channels, kernel_size=7, stride=2, padding=3, bias=False)
        model.bn1 = nn.BatchNorm2d(arch.stem_channels)
        for i, n in enumerate(arch.num_blocks):
            layer = model._make_layer(block, planes * 2 ** i, n, stride=1 if i == 0 else 2)
            setattr(model, f"layer{i + 1}", layer)
        model.fc = nn.Linear(planes * 8 * block.expansion, 1000)
    if arch.stride_in_1x1 and arch.bottleneck:
        for i in (2, 3, 4):
            first = getattr(model, f"layer{i}")[0]
            first.conv1.stride, first.conv2.stride = first.conv2.stride, (1, 1)
    return model


def infer_architecture(state, where="the backbone", stride_in_1x1=False):
    """Infer the :class:`ResNetArch` of a state dict with torchvision names from tensor shapes alone.

    Checks that the network is complete and that every tensor has the shape the architecture implies;
    raises :class:`~pretrain.checkpoints.errors.ConversionError` otherwise.
    """
    keys = set(state)
    stages = {i: sorted({int(m.group(1)) for k in keys for m in [re.match(rf"layer{i}\.(\d+)\.", k)] if m})
              for i in (1, 2, 3, 4)}
    if "conv1.weight" not in keys and not any(stages.values()):
        if any(k.startswith("conv1.0.") or k.startswith("stem.") for k in keys):
            raise ConversionError(f"{where} has a deep (3-conv) stem; Detectron2's BasicStem is a single "
                                  "7x7 conv, so ResNet-D style stems cannot be converted")
        raise not_resnet_error(where, keys)
    missing = ([] if "conv1.weight" in keys else ["stem (conv1)"]) + \
        [f"res{i + 1} (layer{i})" for i in (1, 2, 3, 4) if not stages[i]]
    if missing:
        raise ConversionError(f"partial backbone in {where}: {', '.join(missing)} missing")
    conv1 = state["conv1.weight"]
    if conv1.ndim != 4:
        raise ConversionError(f"{where}: conv1.weight has shape {tuple(conv1.shape)}, not a conv kernel")
    if conv1.shape[1] in (1, 2):
        raise ConversionError(f"{where}: conv1 takes {conv1.shape[1]} input channel(s), as CMC's L/ab "
                              "encoders do; two encoders on L and ab inputs are not an RGB backbone")
    if conv1.shape[1] != 3:
        raise ConversionError(f"{where}: conv1 takes {conv1.shape[1]} input channels; Detectron2's ResNet "
                              "takes 3 (RGB or BGR)")
    if tuple(conv1.shape[2:]) != (7, 7):
        raise ConversionError(f"{where}: the stem conv is {conv1.shape[2]}x{conv1.shape[3]} (a CIFAR-style "
                              "ResNet?); Detectron2's BasicStem is a 7x7 stride-2 conv with max-pool")
    counts = []
    for i in (1, 2, 3, 4):
        if stages[i] != list(range(len(stages[i]))):
            gaps = sorted(set(range(max(stages[i]) + 1)) - set(stages[i]))
            raise ConversionError(f"partial backbone in {where}: res{i + 1} (layer{i}) lacks block(s) "
                                  f"{', '.join(map(str, gaps))}")
        counts.append(len(stages[i]))
    counts = tuple(counts)
    kind = "bottleneck" if "layer1.0.conv3.weight" in keys else "basic"
    depth = _DEPTH.get((kind, counts))
    if depth is None:
        raise ConversionError(f"{where}: {kind} blocks per stage {list(counts)} match no Detectron2 ResNet "
                              "depth (18, 34: basic [2,2,2,2], [3,4,6,3]; 50, 101, 152: bottleneck "
                              "[3,4,6,3], [3,4,23,3], [3,8,36,3])")
    stem = int(conv1.shape[0])
    if kind == "basic":
        out = int(_shape(state, "layer1.0.conv1.weight", where)[0])
        if out != 64:
            raise ConversionError(f"{where}: res2 of this R-{depth} is {out} channels wide; Detectron2 builds "
                                  "R-18/34 only with RES2_OUT_CHANNELS = 64")
        arch = ResNetArch(depth, False, stem, 64, 1, 64, False)
    else:
        width = int(_shape(state, "layer1.0.conv1.weight", where)[0])
        per_group = int(_shape(state, "layer1.0.conv2.weight", where)[1])
        out = int(_shape(state, "layer1.0.conv3.weight", where)[0])
        if per_group <= 0 or width % per_group:
            raise ConversionError(f"{where}: layer1.0.conv2.weight with {per_group} input channels does not "
                                  f"divide the bottleneck width {width} into groups")
        groups = width // per_group
        arch = ResNetArch(depth, True, stem, out, groups, per_group, bool(stride_in_1x1))
    _check_shapes(state, arch, where)
    return arch


def _shape(state, key, where):
    if key not in state:
        raise ConversionError(f"partial backbone in {where}: {key} missing")
    return tuple(state[key].shape)


def _expected_shapes(arch):
    model = build_torchvision_resnet(arch, device="meta")
    return {k: tuple(v.shape) for k, v in model.state_dict().items()
            if not k.startswith("fc.") and not k.endswith("num_batches_tracked")}


def _check_shapes(state, arch, where):
    expected = _expected_shapes(arch)
    missing = [k for k in expected if k not in state]
    if missing:
        raise ConversionError(f"partial backbone in {where}: {len(missing)} tensor(s) of {arch.name} missing, "
                              f"e.g. {describe_keys(missing, 3)}")
    unexpected = sorted(k for k in state if k not in expected)
    if unexpected:
        raise ConversionError(f"{where} has tensors that are not part of a torchvision-style {arch.name}: "
                              f"{describe_keys(unexpected, 4)}")
    for key, shape in expected.items():
        if tuple(state[key].shape) != shape:
            raise ConversionError(f"shape mismatch in {where}: {key} is {tuple(state[key].shape)}, but "
                                  f"{arch.name} (inferred from the stem and res2) needs {shape}")
