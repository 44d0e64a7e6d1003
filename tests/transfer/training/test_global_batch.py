"""transfer.training.global_batch: SyncBN on gloo equals BN over the whole batch; an image's RPN/ROI sampling
depends on its own seed, not on the process's RNG; padding to the global batch's size."""
import os

import pytest
import torch

from pretrain.common import distributed as du
from transfer.training.global_batch import GlobalBatchNorm, pad_to_global_batch, replace_naive_sync_bn

pytestmark = pytest.mark.usefixtures("torch_one_thread")

CHANNELS = 3


def _inputs():
    g = torch.Generator().manual_seed(0)
    # (process 0, process 1): 3 and 1 samples, then 2 and none (a process without ROIs)
    return [(torch.randn(3, CHANNELS, 5, 4, generator=g) * 2 + 1, torch.randn(1, CHANNELS, 5, 4, generator=g) - 3),
            (torch.randn(2, CHANNELS, 5, 4, generator=g) + 0.5, torch.zeros(0, CHANNELS, 5, 4))]


def _weights_of_output(place, n):
    """Loss weights of global places ``place`` to ``place + n - 1`` (one fixed tensor sliced)."""
    return torch.linspace(-1, 1, 8 * CHANNELS * 20).reshape(8, CHANNELS, 5, 4)[place:place + n]


def _norm(cls):
    torch.manual_seed(1)
    bn = cls(CHANNELS)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    return bn


def _bn_step(bn, x, place):
    """Forward, a loss weighted by the global place of each output, backward."""
    x = x.clone().requires_grad_()
    y = bn(x)
    weights = _weights_of_output(place, x.shape[0])
    (y * weights).sum().backward()
    return y.detach(), x.grad


def _bn_worker(info, out_dir):
    du.init_process_group(info)
    bn = _norm(GlobalBatchNorm)
    results = []
    for pair in _inputs():
        place = sum(t.shape[0] for t in pair[:info.rank])
        y, grad = _bn_step(bn, pair[info.rank], place)
        results.append((y, grad))
    for p in bn.parameters():  # the sum over processes, as for a loss summed over the whole batch
        torch.distributed.all_reduce(p.grad)
    torch.save({"results": results, "state": bn.state_dict(), "grads": [p.grad for p in bn.parameters()]},
               os.path.join(out_dir, f"rank{info.rank}.pt"))


def test_global_batch_norm_on_two_gloo_processes_is_bn_over_the_whole_batch(tmp_path):
    du.launch(_bn_worker, args=(str(tmp_path),), num_local=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]

    bn = _norm(torch.nn.BatchNorm2d)
    for step, pair in enumerate(_inputs()):
        whole = torch.cat(pair)
        y, grad = _bn_step(bn, whole, 0)
        split = [r["results"][step] for r in ranks]
        assert torch.allclose(torch.cat([s[0] for s in split]), y, atol=1e-5)
        assert torch.allclose(torch.cat([s[1] for s in split]), grad, atol=1e-5)
    for r in ranks:
        for key, value in bn.state_dict().items():  # running mean, unbiased running var, batch count
            assert torch.allclose(r["state"][key].double(), value.double(), atol=1e-6), key
        for mine, reference in zip(r["grads"], [p.grad for p in bn.parameters()]):
            assert torch.allclose(mine, reference, atol=1e-5)


def test_replacing_naive_sync_bn_keeps_state_and_mode():
    from detectron2.layers import Conv2d, NaiveSyncBatchNorm

    norm = NaiveSyncBatchNorm(4, stats_mode="N")
    norm.running_mean.fill_(0.3)
    norm.weight.requires_grad_(False)
    model = torch.nn.Sequential(Conv2d(2, 4, 3, norm=norm), torch.nn.BatchNorm2d(4)).eval()
    assert replace_naive_sync_bn(model) == 1
    new = model[0].norm
    assert type(new) is GlobalBatchNorm and not new.training and not new.weight.requires_grad
    assert torch.equal(new.running_mean, torch.full((4,), 0.3)) and type(model[1]) is torch.nn.BatchNorm2d
    x = torch.randn(2, 4, 3, 3)
    new.train()
    assert torch.allclose(new(x), torch.nn.functional.batch_norm(x, None, None, new.weight, new.bias, True))


def test_padding_to_the_global_batch_is_detectron2s_padding_in_one_process():
    from detectron2.structures import ImageList

    images = ImageList.from_tensors([torch.ones(3, 10, 7), torch.ones(3, 6, 12)], 8)
    assert pad_to_global_batch(images) is images  # nothing to add in one process
    assert images.tensor.shape[-2:] == (16, 16)


# --------------------------------------------------------------------------------- per-image sampling

def _tiny_model_and_batch(synthetic_root):
    from transfer.data.loader import build_resumable_train_loader
    from transfer.training.config import TINY_OVERRIDES, build_config
    from transfer.training.trainer import TransferTrainer
    from pretrain.common.paths import REPO_ROOT

    cfg = build_config(os.path.join(REPO_ROOT, "configs", "transfer", "voc_faster_rcnn_R_50_C4_24k.yaml"),
                       [*TINY_OVERRIDES, "MODEL.WEIGHTS", "", "MODEL.RESNETS.DEPTH", "18",
                        "MODEL.RESNETS.RES2_OUT_CHANNELS", "64", "SEED", "2"], has_cuda=False)
    torch.manual_seed(0)
    model = TransferTrainer.build_model(cfg)
    batch = next(iter(build_resumable_train_loader(cfg)))
    return model, batch


def _losses(model, batch, rng_seed):
    from detectron2.utils.events import EventStorage

    torch.manual_seed(rng_seed)
    with torch.no_grad(), EventStorage(0):
        losses = model(batch)
    return {k: float(v) for k, v in losses.items()}


def test_an_images_sampling_depends_on_its_seed_not_on_the_process_rng(synthetic_root):
    from transfer.data.loader import SAMPLE_SEED_KEY

    model, batch = _tiny_model_and_batch(synthetic_root)
    model.train()
    first = _losses(model, batch, 0)
    assert _losses(model, batch, 123) == first
    # the process's RNG is not drawn from
    torch.manual_seed(5)
    before = torch.get_rng_state()
    _losses(model, batch, 5)
    assert torch.equal(torch.get_rng_state(), before)
    # without seeds (another loader's dicts) the sampling is Detectron2's: it follows the process's RNG
    unseeded = [{k: v for k, v in d.items() if k != SAMPLE_SEED_KEY} for d in batch]
    assert _losses(model, unseeded, 0) != _losses(model, unseeded, 123)
    # another seed for an image changes its sample
    reseeded = [dict(d) for d in batch]
    reseeded[0][SAMPLE_SEED_KEY] += 1
    assert _losses(model, reseeded, 0) != first
