"""pretrain.methods.moco: queue, momentum update, InfoNCE loss and the JigSaw branch, each against a
direct computation written out here (float64 where it matters)."""
import copy
import math
import os

import pytest
import torch
import torch.nn.functional as F

from pretrain.backbones import build_encoder, parse_arch, trunk_forward
from pretrain.config import load_config
from pretrain.methods import METHODS, build_method, get_method_class
from pretrain.methods.moco import MoCo, momentum_update
from pretrain.common.paths import CONFIGS_DIR


CONFIGS = os.path.join(CONFIGS_DIR, "pretrain")


def tiny_cfg(*opts):
    return load_config(f"{CONFIGS}/moco_v2_R_50.yaml",
                       ["MODEL.ARCH", "resnet18", "INPUT.SIZE", "32", "MOCO.K", "24", "MODEL.DIM", "16",
                        "MODEL.PRECISION", "fp32", "MODEL.CHANNELS_LAST", "False", "SOLVER.BATCH_SIZE", "8",
                        *opts])


def images(n, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)


def normalised(x, cfg):
    mean = torch.tensor(cfg.INPUT.PIXEL_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(cfg.INPUT.PIXEL_STD).view(1, 3, 1, 1)
    return (x.float() / 255 - mean) / std


def infonce_direct(q, k, queue, t):
    """-log( e^{q.k/t} / (e^{q.k/t} + sum_j e^{q.n_j/t}) ), averaged, in float64, written out."""
    q, k, queue = q.detach().double(), k.detach().double(), queue.detach().double()
    total = 0.0
    for i in range(q.shape[0]):
        pos = float(q[i] @ k[i]) / t
        negs = [float(q[i] @ n) / t for n in queue]
        m = max([pos] + negs)
        denom = math.exp(pos - m) + sum(math.exp(v - m) for v in negs)
        total += -(pos - m - math.log(denom))
    return total / q.shape[0]


def test_registry_and_arch_names():
    assert get_method_class("moco") is MoCo and "moco" in METHODS
    with pytest.raises(KeyError):
        get_method_class("simclr_nope")
    for name in ("resnet18", "resnet50", "resnet152", "resnext101_32x8d", "resnext152_32x8d", "wide_resnet50_2"):
        parse_arch(name)
    for bad in ("resnet20", "vit_b_16", "resnext50", "wide_resnet18_2"):
        with pytest.raises(ValueError):
            parse_arch(bad)


def test_encoder_matches_torchvision_layout():
    import torchvision

    for arch in ("resnet18", "resnext50_32x4d", "wide_resnet50_2"):
        ours = build_encoder(arch, "linear", 128).state_dict()
        ref = torchvision.models.__dict__[arch](num_classes=128).state_dict()
        assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in ref.items()}
    mlp = build_encoder("resnet18", "mlp", 16)
    assert [k for k in mlp.state_dict() if k.startswith("fc.")] == ["fc.0.weight", "fc.0.bias", "fc.2.weight",
                                                                   "fc.2.bias"]
    assert mlp.fc[0].in_features == mlp.fc[0].out_features == 512 and mlp.fc[2].out_features == 16
    bn = build_encoder("resnet18", "mlp_bn", 16)
    assert [k for k in bn.state_dict() if k.startswith("fc.")] == [
        "fc.0.weight", "fc.1.weight", "fc.1.bias", "fc.1.running_mean", "fc.1.running_var",
        "fc.1.num_batches_tracked", "fc.3.weight", "fc.3.bias"]
    with pytest.raises(ValueError, match="unknown MODEL.HEAD 'mlp2'"):
        build_encoder("resnet18", "mlp2", 16)


def test_bn_head_normalises_the_hidden_layer_over_the_batch():
    """mlp_bn: in training the hidden pre-activations of a batch have mean 0 and variance 1 per unit (BN's
    definition), so a common component of the features, which collapses the plain MLP head, is removed."""
    torch.manual_seed(0)
    net = build_encoder("resnet18", "mlp_bn", 16).train()
    x = torch.randn(64, 512) + 5.0  # features with a large shared component
    hidden = net.fc[1](net.fc[0](x))
    assert torch.allclose(hidden.mean(0), torch.zeros(512), atol=1e-4)
    assert torch.allclose(hidden.var(0, unbiased=False), torch.ones(512), atol=1e-3)
    plain = build_encoder("resnet18", "mlp", 16).fc
    cos = F.normalize(plain(x), dim=1) @ F.normalize(plain(x), dim=1).T
    cos_bn = F.normalize(net.fc(x), dim=1) @ F.normalize(net.fc(x), dim=1).T
    assert cos.mean() > 0.9 > 0.5 > cos_bn.mean()


def test_momentum_update_formula():
    torch.manual_seed(0)
    q = [torch.randn(5, 3), torch.randn(7)]
    k = [torch.randn(5, 3), torch.randn(7)]
    expected = [0.99 * kk.double() + 0.01 * qq.double() for kk, qq in zip(k, q)]
    momentum_update(k, q, 0.99)
    for got, want in zip(k, expected):
        torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=1e-7)

    cfg = tiny_cfg("MOCO.M", "0.9")
    model = build_method(cfg)
    with torch.no_grad():  # make q and k differ
        for p in model.encoder_q.parameters():
            p.add_(torch.randn_like(p))
    before_k = {n: p.detach().clone() for n, p in model.encoder_k.named_parameters()}
    q_now = {n: p.detach().clone() for n, p in model.encoder_q.named_parameters()}
    buffers = {n: b.clone() for n, b in model.encoder_k.named_buffers()}
    model.momentum_update()
    for n, p in model.encoder_k.named_parameters():
        torch.testing.assert_close(p.double(), 0.9 * before_k[n].double() + 0.1 * q_now[n].double(),
                                   rtol=1e-5, atol=1e-6)
        assert not p.requires_grad
    for n, b in model.encoder_k.named_buffers():  # BN statistics are the key encoder's own, not averaged
        assert torch.equal(b, buffers[n])
    for n, p in model.encoder_q.named_parameters():  # the query encoder is untouched
        assert torch.equal(p, q_now[n])


def test_key_encoder_starts_as_copy_of_query():
    model = build_method(tiny_cfg())
    for (nq, pq), (nk, pk) in zip(model.encoder_q.state_dict().items(), model.encoder_k.state_dict().items()):
        assert nq == nk and torch.equal(pq, pk)


def test_queue_ring_buffer_wraps_around():
    model = build_method(tiny_cfg("MOCO.K", "20"))
    assert model.queue.shape == (20, 16)
    torch.testing.assert_close(model.queue.norm(dim=1), torch.ones(20))
    reference = model.queue.clone()
    ptr = 0
    for step in range(5):
        keys = F.normalize(torch.randn(8, 16), dim=1)
        model.enqueue(keys)
        for i in range(8):  # written one by one at ptr, ptr+1, ... modulo K
            reference[(ptr + i) % 20] = keys[i]
        ptr = (ptr + 8) % 20
        assert int(model.queue_ptr) == ptr
        assert torch.equal(model.queue, reference), f"step {step}"
    assert ptr == 0  # 40 keys = two full turns


def test_forward_loss_is_infonce_and_keys_are_enqueued():
    cfg = tiny_cfg("MOCO.T", "0.2")
    torch.manual_seed(0)
    model = build_method(cfg).train()
    batch = {"view1": images(6, seed=1), "view2": images(6, seed=2)}
    enc_q, enc_k = copy.deepcopy(model.encoder_q), copy.deepcopy(model.encoder_k)
    queue_before = model.queue.clone()

    out = model(batch)
    # direct computation with copies of the encoders (train-mode BN: batch statistics, as in forward)
    q = F.normalize(enc_q(normalised(batch["view1"], cfg)).double(), dim=1)
    k = F.normalize(enc_k(normalised(batch["view2"], cfg)).double(), dim=1)
    want = infonce_direct(q, k, queue_before, 0.2)
    assert out["loss"].item() == pytest.approx(want, rel=1e-4, abs=1e-5)
    assert out["mi_loss"].item() == pytest.approx(want, rel=1e-4, abs=1e-5)
    assert model.mi_ceiling() == pytest.approx(math.log(24 + 1))
    assert model.mi_bound(out["mi_loss"]) == pytest.approx(math.log(25) - want, rel=1e-4, abs=1e-5)

    # the queue is untouched until the step ends, then holds the keys at [0, 6)
    assert torch.equal(model.queue, queue_before)
    out["loss"].backward()
    model.on_step_end(0)
    assert int(model.queue_ptr) == 6
    torch.testing.assert_close(model.queue[:6].double(), k, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(model.queue[:6].norm(dim=1), torch.ones(6))
    assert torch.equal(model.queue[6:], queue_before[6:])
    assert not model.queue.requires_grad and model.queue.grad_fn is None
    # gradients reach the query encoder only
    assert all(p.grad is not None for p in model.encoder_q.parameters())
    assert all(p.grad is None for p in model.encoder_k.parameters())


def test_jigsaw_branch_loss():
    cfg = load_config(f"{CONFIGS}/infomin_R_50.yaml",
                      ["MODEL.ARCH", "resnet18", "INPUT.SIZE", "32", "MOCO.K", "16", "MODEL.DIM", "8",
                       "MODEL.PRECISION", "fp32", "MODEL.CHANNELS_LAST", "False", "SOLVER.BATCH_SIZE", "4"])
    torch.manual_seed(0)
    model = build_method(cfg).train()
    tiles = torch.stack([images(9, size=9, seed=10 + i) for i in range(4)])  # B x 9 x 3 x 9 x 9
    batch = {"view1": images(4, seed=1), "view2": images(4, seed=2), "jigsaw": tiles}
    copies = copy.deepcopy(model)
    queue = model.queue.clone()
    out = model(batch)

    q = F.normalize(copies.encoder_q(normalised(batch["view1"], cfg)).double(), dim=1)
    k = F.normalize(copies.encoder_k(normalised(batch["view2"], cfg)).double(), dim=1)
    feats = trunk_forward(copies.encoder_q, normalised(tiles.reshape(36, 3, 9, 9), cfg))  # 36 x 512
    per_tile = copies.jigsaw_head.fc1(feats)                                             # 36 x 8
    joined = torch.stack([torch.cat([per_tile[9 * i + j] for j in range(9)]) for i in range(4)])
    q_jig = F.normalize(copies.jigsaw_head.fc2(joined).double(), dim=1)
    l_inst = infonce_direct(q, k, queue, 0.15)
    l_jig = infonce_direct(q_jig, k, queue, 0.15)
    assert out["loss_inst"].item() == pytest.approx(l_inst, rel=1e-4, abs=1e-5)
    assert out["loss_jig"].item() == pytest.approx(l_jig, rel=1e-4, abs=1e-5)
    assert out["loss"].item() == pytest.approx(0.5 * l_inst + 0.5 * l_jig, rel=1e-4, abs=1e-5)
    assert out["mi_loss"].item() == pytest.approx(l_inst, rel=1e-4, abs=1e-5)


def test_bf16_autocast_keeps_loss_and_queue_in_fp32():
    cfg = tiny_cfg("MODEL.CHANNELS_LAST", "True")
    torch.manual_seed(0)
    model = build_method(cfg).to(memory_format=torch.channels_last).train()
    batch = {"view1": images(6, seed=1), "view2": images(6, seed=2)}
    ref = copy.deepcopy(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(batch)
    fp32 = ref(batch)
    assert out["loss"].dtype == torch.float32
    assert math.isfinite(out["loss"].item())
    assert out["loss"].item() == pytest.approx(fp32["loss"].item(), rel=0.2)  # bf16: ~3 significant digits
    model.on_step_end(0)
    assert model.queue.dtype == torch.float32


def test_check_config_rejects_small_queue():
    with pytest.raises(ValueError, match="MOCO.K"):
        MoCo.check_config(tiny_cfg("MOCO.K", "4"))
