"""The encoders' stem pool: the same maxima, indices and gradients as torch's own ``nn.MaxPool2d``."""
import pytest
import torch
from torch import nn

from pretrain.backbones import MaxPool2d, build_encoder


def _relu_input(shape, dtype, seed, memory_format=torch.contiguous_format):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g).relu()  # many exact ties at zero, as after the stem's ReLU
    x[:, :, 1:-1:3, ::2] = x[:, :, 2::3, ::2]  # and ties between positive values
    return x.to(dtype).contiguous(memory_format=memory_format)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("args", [dict(kernel_size=3, stride=2, padding=1), dict(kernel_size=2),
                                  dict(kernel_size=3, stride=2, padding=1, ceil_mode=True),
                                  dict(kernel_size=(3, 2), stride=(1, 2), padding=(1, 0), dilation=(2, 1))])
@pytest.mark.parametrize("channels_last", [False, True])
def test_pool_matches_torch_exactly_forward_and_backward(dtype, args, channels_last):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = _relu_input((4, 5, 13, 11), dtype, seed=1, memory_format=fmt)
    grad = torch.randn(nn.MaxPool2d(**args)(x).shape, generator=torch.Generator().manual_seed(2)).to(dtype)
    results = []
    for pool in (nn.MaxPool2d(**args), MaxPool2d(**args)):
        leaf = x.clone().requires_grad_()
        out = pool(leaf)
        out.backward(grad)
        results.append((out.detach(), leaf.grad))
    (ref_out, ref_grad), (out, grad_in) = results
    assert torch.equal(out, ref_out) and torch.equal(grad_in, ref_grad)
    assert out.is_contiguous(memory_format=fmt) and grad_in.shape == x.shape
    with torch.no_grad():
        assert torch.equal(MaxPool2d(**args)(x), ref_out)


def test_pool_keeps_indices_and_other_inputs_on_torch():
    x = _relu_input((2, 3, 8, 8), torch.float32, seed=3)
    out, idx = MaxPool2d(2, return_indices=True)(x)
    ref_out, ref_idx = nn.MaxPool2d(2, return_indices=True)(x)
    assert torch.equal(out, ref_out) and torch.equal(idx, ref_idx)
    strided = x[:, :, :, ::2]  # not contiguous: torch's kernel
    assert torch.equal(MaxPool2d(2)(strided), nn.MaxPool2d(2)(strided))
    assert torch.equal(MaxPool2d(2)(x[0]), nn.MaxPool2d(2)(x[0]))  # unbatched


def test_encoder_uses_the_pool_and_computes_torchvisions_resnet():
    from torchvision.models import resnet18

    torch.manual_seed(0)
    net = build_encoder("resnet18", head="linear", dim=10)
    assert isinstance(net.maxpool, MaxPool2d)
    ref = resnet18(num_classes=10)
    ref.load_state_dict(net.state_dict())  # same names: the pool holds no state
    net.train(), ref.train()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    out, ref_out = net(x), ref(x)
    assert torch.equal(out, ref_out)
    out.sum().backward(), ref_out.sum().backward()
    assert torch.equal(net.conv1.weight.grad, ref.conv1.weight.grad)
