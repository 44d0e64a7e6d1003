"""ResNet encoders from torchvision, with the projection head in ``fc`` (MoCo's layout).

``MODEL.ARCH`` names: ``resnet18/34/50/101/152``, ``resnext{50,101,152}_{G}x{W}d`` (torchvision's
``resnext50_32x4d``, ``resnext101_32x8d``, ``resnext101_64x4d`` and the same family at other depths and
widths, e.g. InfoMin's ResNeXt-152 ``resnext152_32x8d``), ``wide_resnet{50,101}_{k}``. Every encoder is
torchvision's ``ResNet`` class, so its state-dict names are torchvision's and the converter reads them.
"""
import re

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

__all__ = ["ARCH_HELP", "HEADS", "MaxPool2d", "parse_arch", "projection_head", "build_encoder", "trunk_forward",
           "feature_dim"]

_BLOCKS = {18: (BasicBlock, [2, 2, 2, 2]), 34: (BasicBlock, [3, 4, 6, 3]), 50: (Bottleneck, [3, 4, 6, 3]),
           101: (Bottleneck, [3, 4, 23, 3]), 152: (Bottleneck, [3, 8, 36, 3])}
ARCH_HELP = ("resnet18/34/50/101/152, resnext{50,101,152}_<groups>x<width>d (e.g. resnext101_32x8d), "
             "wide_resnet{50,101}_<k> (e.g. wide_resnet50_2)")


def parse_arch(name):
    """(block, layers, groups, width_per_group) for a ``MODEL.ARCH`` name; ``ValueError`` if unknown."""
    m = re.fullmatch(r"resnet(\d+)", name)
    if m and int(m[1]) in _BLOCKS:
        block, layers = _BLOCKS[int(m[1])]
        return block, layers, 1, 64
    m = re.fullmatch(r"resnext(\d+)_(\d+)x(\d+)d", name)
    if m and int(m[1]) in (50, 101, 152) and int(m[2]) > 0 and int(m[3]) > 0:
        return Bottleneck, _BLOCKS[int(m[1])][1], int(m[2]), int(m[3])
    m = re.fullmatch(r"wide_resnet(\d+)_(\d+)", name)
    if m and int(m[1]) in (50, 101) and int(m[2]) > 0:
        return Bottleneck, _BLOCKS[int(m[1])][1], 1, 64 * int(m[2])
    raise ValueError(f"unknown MODEL.ARCH {name!r}; use {ARCH_HELP}")


def feature_dim(name):
    block, _, _, _ = parse_arch(name)
    return 512 * block.expansion


# MODEL.HEAD: the projection head after the pooled features
HEADS = ("linear", "mlp", "mlp_bn")


def projection_head(dim_in, dim_out, head, last=None):
    """The projection head ``head`` (one of :data:`HEADS`) from ``dim_in`` to ``dim_out`` features:

    - ``"linear"``: ``Linear(dim_in, dim_out)`` (MoCo v1, InstDisc);
    - ``"mlp"``: ``Linear(dim_in, dim_in) - ReLU - Linear(dim_in, dim_out)`` (MoCo v2; ``.0``, ``.2``);
    - ``"mlp_bn"``: ``Linear(dim_in, dim_in, bias=False) - BatchNorm1d - ReLU - Linear(dim_in, dim_out)``
      (``.0``, ``.1``, ``.3``), the hidden layer batch-normalised as in SimCLR v2 and MoCo v3. With small
      batches and short runs MoCo v2's plain MLP can collapse (every embedding along one direction, the
      loss stuck at ln(K+1)); the BN keeps the embeddings of a batch apart.

    ``last``: the output ``Linear`` to use (built here when None).
    """
    if head not in HEADS:
        raise ValueError(f"unknown MODEL.HEAD {head!r}; use {', '.join(HEADS)}")
    if head == "linear":
        return last if last is not None else nn.Linear(dim_in, dim_out)
    if head == "mlp":
        hidden = [nn.Linear(dim_in, dim_in), nn.ReLU(inplace=True)]
    else:
        hidden = [nn.Linear(dim_in, dim_in, bias=False), nn.BatchNorm1d(dim_in), nn.ReLU(inplace=True)]
    return nn.Sequential(*hidden, last if last is not None else nn.Linear(dim_in, dim_out))


class _PoolViaChannelsLast(torch.autograd.Function):
    """Max pooling of an NCHW CPU tensor computed by the channels_last kernel; NCHW output and gradient."""

    @staticmethod
    def forward(ctx, x, kernel, stride, padding, dilation, ceil_mode):
        out, indices = torch.ops.aten.max_pool2d_with_indices(
            x.contiguous(memory_format=torch.channels_last), kernel, stride, padding, dilation, ceil_mode)
        if ctx.needs_input_grad[0]:
            ctx.save_for_backward(x, indices.contiguous())
        ctx.args = (kernel, stride, padding, dilation, ceil_mode)
        return out.contiguous()

    @staticmethod
    def backward(ctx, grad):
        x, indices = ctx.saved_tensors
        return (torch.ops.aten.max_pool2d_with_indices_backward(grad.contiguous(), x, *ctx.args, indices),
                None, None, None, None, None)


class MaxPool2d(nn.MaxPool2d):
    """``nn.MaxPool2d`` with the same maxima, indices and gradients, faster for NCHW tensors on a CPU.

    PyTorch's CPU max pooling of an NCHW tensor is not vectorised: the ResNet stem's 3x3/2 pool of a batch of
    32 at 64 px takes about 11 ms, against under 1 ms for its channels_last kernel. This pool converts the
    input to channels_last, pools there and returns NCHW; the backward pass uses the NCHW kernel with the
    same indices (both kernels pick the first maximum of a window), so results are bit-identical
    (``tests/pretrain/test_backbones.py``). Other devices and layouts run ``nn.MaxPool2d`` itself.
    """

    def forward(self, x):
        if (x.device.type != "cpu" or x.dim() != 4 or self.return_indices or not x.is_contiguous()
                or x.is_contiguous(memory_format=torch.channels_last)):
            return super().forward(x)
        pair = nn.modules.utils._pair
        return _PoolViaChannelsLast.apply(x, pair(self.kernel_size), pair(self.stride or self.kernel_size),
                                          pair(self.padding), pair(self.dilation), self.ceil_mode)


def build_encoder(arch, head="linear", dim=128):
    """torchvision ``ResNet`` whose ``fc`` is the projection head :func:`projection_head` ``(C, dim, head)``
    (the converter drops every ``fc.*`` key), and whose stem pool is :class:`MaxPool2d` (same results)."""
    block, layers, groups, width = parse_arch(arch)
    net = ResNet(block, layers, num_classes=dim, groups=groups, width_per_group=width)
    net.fc = projection_head(net.fc.in_features, dim, head, last=net.fc)
    pool = net.maxpool
    net.maxpool = MaxPool2d(pool.kernel_size, pool.stride, pool.padding, pool.dilation, ceil_mode=pool.ceil_mode)
    return net


def trunk_forward(net, x):
    """Pooled features of a torchvision ResNet, without its ``fc``."""
    x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
    x = net.layer4(net.layer3(net.layer2(net.layer1(x))))
    return torch.flatten(net.avgpool(x), 1)
