"""pretrain.data.lab_color and pretrain.methods.cmc: Lab values against the CIE definitions computed independently
here, the L/ab split and its inverse, the cross-view bank loss against a direct computation, bank updates,
features, config errors, and a tiny end-to-end run that resumes exactly, feeds the kNN monitor and the
frozen-feature loader, and that the converter refuses in one line."""
import copy
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pretrain.training import train
from pretrain.config import load_config
from pretrain.data.lab_color import LAB_MEAN, LAB_STD, lab_to_rgb, merge_lab, rgb_to_lab, split_lab
from pretrain.methods import build_method, get_method_class
from pretrain.methods.cmc import CMC
from transfer.data.synthetic import write_synthetic
from pretrain.common.paths import REPO_ROOT

REPO = REPO_ROOT
CONFIGS = os.path.join(REPO, "configs", "pretrain")
CMC_CFG = os.path.join(CONFIGS, "cmc_R_18.yaml")


# --------------------------------------------------------------------------------------------- Lab
def _primaries_matrix():
    """sRGB -> XYZ derived from the sRGB primaries' and D65's chromaticities (IEC 61966-2-1), not a table."""
    xy = np.array([[0.64, 0.33], [0.30, 0.60], [0.15, 0.06]])
    white = np.array([0.3127 / 0.3290, 1.0, (1 - 0.3127 - 0.3290) / 0.3290])
    cols = np.stack([xy[:, 0] / xy[:, 1], np.ones(3), (1 - xy[:, 0] - xy[:, 1]) / xy[:, 1]])  # XYZ per primary, Y=1
    scale = np.linalg.solve(cols, white)
    return cols * scale, white


def lab_reference(rgb, matrix, white):
    """CIE 1976 L*a*b* of one sRGB triple in [0, 1], written out scalar by scalar (float64)."""
    lin = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in rgb]
    xyz = [sum(matrix[r][k] * lin[k] for k in range(3)) / white[r] for r in range(3)]
    eps = (6 / 29) ** 3

    def f(t):
        return t ** (1 / 3) if t > eps else t / (3 * (6 / 29) ** 2) + 4 / 29

    fx, fy, fz = (f(t) for t in xyz)
    return 116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)


def lab_of(*rgb):
    x = torch.tensor(rgb, dtype=torch.float64).view(1, 3, 1, 1)
    return rgb_to_lab(x).view(3).tolist()


def test_white_black_and_primaries():
    assert lab_of(1, 1, 1) == pytest.approx([100, 0, 0], abs=1e-3)
    assert lab_of(0, 0, 0) == pytest.approx([0, 0, 0], abs=1e-6)
    # published CIE Lab (D65) of the sRGB primaries
    assert lab_of(1, 0, 0) == pytest.approx([53.2408, 80.0925, 67.2032], abs=2e-3)
    assert lab_of(0, 1, 0) == pytest.approx([87.7347, -86.1827, 83.1793], abs=2e-3)
    assert lab_of(0, 0, 1) == pytest.approx([32.2970, 79.1875, -107.8602], abs=2e-3)
    grey = lab_of(0.5, 0.5, 0.5)
    assert grey[0] == pytest.approx(53.3890, abs=2e-3) and grey[1:] == pytest.approx([0, 0], abs=1e-3)


def test_lab_matches_independent_computations():
    from pretrain.data.lab_color import RGB_TO_XYZ, WHITE_D65

    g = torch.Generator().manual_seed(0)
    rgb = torch.rand(2, 3, 5, 7, generator=g, dtype=torch.float64)
    rgb[0, :, 0, 0] = torch.tensor([0.01, 0.02, 0.03])  # dark: the linear branches of both curves
    ours = rgb_to_lab(rgb)
    ours32 = rgb_to_lab(rgb.float())
    derived, d65 = _primaries_matrix()
    for n, y, x in [(0, 0, 0), (0, 1, 3), (1, 4, 6), (1, 2, 2), (0, 3, 5)]:
        px = rgb[n, :, y, x].tolist()
        want = lab_reference(px, RGB_TO_XYZ, WHITE_D65)  # same constants, scalar code
        assert ours[n, :, y, x].tolist() == pytest.approx(want, abs=1e-9)
        assert ours32[n, :, y, x].tolist() == pytest.approx(want, abs=1e-3)
        # the constants themselves: the matrix derived from the primaries' chromaticities agrees closely
        assert ours[n, :, y, x].tolist() == pytest.approx(lab_reference(px, derived, d65), abs=0.05)
    try:
        from skimage.color import rgb2lab
    except ImportError:
        return
    ref = rgb2lab(rgb.permute(0, 2, 3, 1).numpy())
    np.testing.assert_allclose(ours.permute(0, 2, 3, 1).numpy(), ref, atol=1e-2)


def test_normalisation_maps_the_srgb_gamut_onto_minus_one_one():
    corners = torch.tensor([[r, g, b] for r in (0, 255) for g in (0, 255) for b in (0, 255)], dtype=torch.uint8)
    l, ab = split_lab(corners.view(8, 3, 1, 1))
    lab = torch.cat([l, ab], dim=1).view(8, 3)
    assert lab.abs().max() <= 1 + 1e-4
    by_name = dict(zip([(r, g, b) for r in (0, 1) for g in (0, 1) for b in (0, 1)], lab.tolist()))
    assert by_name[(0, 0, 0)][0] == pytest.approx(-1, abs=1e-4) and by_name[(1, 1, 1)][0] == pytest.approx(1, abs=1e-4)
    assert by_name[(0, 1, 0)][1] == pytest.approx(-1, abs=1e-4)  # green: the smallest a
    assert by_name[(1, 0, 1)][1] == pytest.approx(1, abs=1e-4)   # magenta: the largest a
    assert by_name[(0, 0, 1)][2] == pytest.approx(-1, abs=1e-4)  # blue: the smallest b
    assert by_name[(1, 1, 0)][2] == pytest.approx(1, abs=1e-4)   # yellow: the largest b
    assert LAB_MEAN[0] == 50 and LAB_STD[0] == 50
    g = torch.Generator().manual_seed(1)
    l, ab = split_lab(torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8, generator=g))
    assert l.shape == (4, 1, 16, 16) and ab.shape == (4, 2, 16, 16) and l.dtype == ab.dtype == torch.float32
    assert l.abs().max() <= 1 + 1e-4 and ab.abs().max() <= 1 + 1e-4


def test_split_and_reassembly_round_trip():
    g = torch.Generator().manual_seed(2)
    images = torch.randint(0, 256, (3, 3, 16, 16), dtype=torch.uint8, generator=g)
    images[0, :, 0, :] = 0      # black and near-black rows: the linear segments
    images[0, :, 1, :] = 3
    images[1, :, 0, :] = 255
    l, ab = split_lab(images)
    back = merge_lab(l, ab)
    assert (back - images.float() / 255).abs().max() < 1e-4
    assert torch.equal((back * 255).round().to(torch.uint8), images)
    x = torch.rand(2, 3, 4, 4, generator=g, dtype=torch.float64)
    assert (lab_to_rgb(rgb_to_lab(x)) - x).abs().max() < 1e-10
    # L alone carries no colour: zeroing ab gives a grey with the same lightness
    grey = merge_lab(l, torch.zeros_like(ab) - torch.tensor([LAB_MEAN[1] / LAB_STD[1], LAB_MEAN[2] / LAB_STD[2]]
                                                              ).view(1, 2, 1, 1))
    assert (grey.max(dim=1).values - grey.min(dim=1).values).abs().max() < 1e-4


# --------------------------------------------------------------------------------------------- the method
def tiny_cfg(*opts):
    return load_config(CMC_CFG, ["INPUT.SIZE", "32", "BANK.NUM_NEGATIVES", "8", "MODEL.DIM", "16",
                                 "MODEL.PRECISION", "fp32", "MODEL.CHANNELS_LAST", "False", "SOLVER.BATCH_SIZE", "6",
                                 *opts])


def images(n, seed=0, size=32):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)


def infonce_direct(z, pos_rows, neg_rows, t, valid=None):
    """-log e^{z.p/t} / (e^{z.p/t} + sum_k e^{z.n_k/t}) per anchor (valid negatives only), averaged; float64,
    written out."""
    total = 0.0
    for i in range(z.shape[0]):
        pos = float(z[i].detach() @ pos_rows[i]) / t
        negs = [float(z[i].detach() @ n) / t for k, n in enumerate(neg_rows[i]) if valid is None or valid[i, k]]
        m = max([pos] + negs)
        total += -(pos - m - math.log(math.exp(pos - m) + sum(math.exp(v - m) for v in negs)))
    return total / z.shape[0]


class Recording:
    """Wraps a negative sampler and keeps what it was given and returned."""

    def __init__(self, inner):
        self.inner, self.calls, self.epochs = inner, [], []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def on_epoch_start(self, epoch, memory):
        self.epochs.append((epoch, memory))
        return self.inner.on_epoch_start(epoch, memory)

    def sample(self, query, indices, memory, iteration):
        out = self.inner.sample(query, indices, memory, iteration)
        self.calls.append((query.clone(), memory, out[0].clone(), out[1].clone()))
        return out


def test_registry_encoders_and_banks():
    assert get_method_class("cmc") is CMC
    model = build_method(tiny_cfg(), num_train_images=20)
    assert model.encoder_l.conv1.in_channels == 1 and model.encoder_ab.conv1.in_channels == 2
    assert model.encoder_l.fc.out_features == model.encoder_ab.fc.out_features == 16
    assert model.memory_l.memory.shape == model.memory_ab.memory.shape == (20, 16)
    assert not torch.equal(model.memory_l.memory, model.memory_ab.memory)
    keys = model.state_dict().keys()
    assert "encoder_l.layer4.1.bn2.running_var" in keys and "encoder_ab.fc.weight" in keys
    assert {"memory_l.memory", "memory_ab.memory"} <= set(keys)
    assert model.loss_form == "bank" and model.mi_ceiling() == pytest.approx(math.log(9))
    with pytest.raises(ValueError, match="number of training images"):
        build_method(tiny_cfg())

    half = build_method(tiny_cfg("CMC.WIDTH", "0.5"), num_train_images=20)
    enc = half.encoder_ab
    assert enc.conv1.out_channels == 32 and enc.layer1[0].conv1.out_channels == 32
    assert enc.layer4[1].conv2.out_channels == 256 and enc.fc.in_features == 256
    out = enc(torch.randn(2, 2, 32, 32))
    assert out.shape == (2, 16)
    wide = build_method(tiny_cfg("MODEL.ARCH", "resnet50", "CMC.WIDTH", "0.25", "MODEL.HEAD", "mlp"), 20).encoder_l
    assert wide.layer4[0].conv3.out_channels == 512 and wide.fc[0].in_features == 512


def test_loss_is_cross_view_infonce_and_banks_update_after_the_step():
    cfg = tiny_cfg("BANK.T", "0.2", "BANK.MOMENTUM", "0.5")
    torch.manual_seed(0)
    model = build_method(cfg, num_train_images=20).train()
    model.negatives_l, model.negatives_ab = Recording(model.negatives_l), Recording(model.negatives_ab)
    index = torch.tensor([3, 0, 17, 8, 12, 5])
    batch = {"view1": images(6, seed=1), "index": index}
    enc_l, enc_ab = copy.deepcopy(model.encoder_l), copy.deepcopy(model.encoder_ab)
    mem_l, mem_ab = model.memory_l.memory.clone(), model.memory_ab.memory.clone()

    out = model(batch)
    l, ab = split_lab(batch["view1"])
    z_l = F.normalize(enc_l(l).double(), dim=1)
    z_ab = F.normalize(enc_ab(ab).double(), dim=1)
    (_, bank_l_anchor, neg_l, valid_l), (_, bank_ab_anchor, neg_ab, _) = (model.negatives_l.calls[0],
                                                                          model.negatives_ab.calls[0])
    assert valid_l.all()
    assert bank_l_anchor is model.memory_ab.memory and bank_ab_anchor is model.memory_l.memory
    for neg in (neg_l, neg_ab):
        assert neg.shape == (6, 8) and neg.min() >= 0 and neg.max() < 20
        assert not (neg == index.view(-1, 1)).any()  # an image is never its own negative
    want_l = infonce_direct(z_l, mem_ab.double()[index], mem_ab.double()[neg_l], 0.2)
    want_ab = infonce_direct(z_ab, mem_l.double()[index], mem_l.double()[neg_ab], 0.2)
    assert out["loss_l"].item() == pytest.approx(want_l, rel=1e-4, abs=1e-5)
    assert out["loss_ab"].item() == pytest.approx(want_ab, rel=1e-4, abs=1e-5)
    assert out["loss"].item() == pytest.approx(want_l + want_ab, rel=1e-4, abs=1e-5)
    assert out["mi_loss"].item() == pytest.approx((want_l + want_ab) / 2, rel=1e-4, abs=1e-5)
    assert model.mi_bound(out["mi_loss"]) == pytest.approx(math.log(9) - (want_l + want_ab) / 2, rel=1e-4)

    assert torch.equal(model.memory_l.memory, mem_l) and torch.equal(model.memory_ab.memory, mem_ab)
    out["loss"].backward()
    assert model.encoder_l.conv1.weight.grad.abs().sum() > 0 and model.encoder_ab.conv1.weight.grad.abs().sum() > 0
    model.on_step_end(0)
    rest = torch.ones(20, dtype=torch.bool)
    rest[index] = False
    for bank, before, z in ((model.memory_l, mem_l, z_l), (model.memory_ab, mem_ab, z_ab)):
        want = F.normalize(0.5 * before.double()[index] + 0.5 * z, dim=1)
        torch.testing.assert_close(bank.memory[index].double(), want, rtol=1e-4, atol=1e-5)
        assert torch.equal(bank.memory[rest], before[rest])
    assert model._pending is None and model._iteration == 1


@pytest.mark.parametrize("kind, anneal", [("ball", False), ("ann", False), ("ann", True)])
def test_ball_and_ann_negatives_come_from_the_other_views_bank(kind, anneal):
    from pretrain.methods.negatives import AnnSampler, BallSampler

    cfg = tiny_cfg("CMC.NEGATIVES", kind, "BALL.NEIGHBOURS", "6", "CLUSTER.K", "4", "CLUSTER.RUNS", "2",
                   "BALL.ANNEAL", str(anneal), "CLUSTER.ANNEAL", str(anneal), "BANK.BACKEND", "torch")
    CMC.check_config(cfg)
    torch.manual_seed(0)
    model = build_method(cfg, num_train_images=20).train()
    assert isinstance(model.negatives_l, AnnSampler if kind == "ann" else BallSampler)
    model.negatives_l, model.negatives_ab = Recording(model.negatives_l), Recording(model.negatives_ab)
    model.on_train_start({"iters_per_epoch": 2, "max_iter": 8, "start_iter": 4, "world_size": 1,
                          "num_train_images": 20})
    model.on_epoch_start(2)
    assert model.negatives_l.epochs[0][1] is model.memory_ab.memory  # the L anchor's sets: in M_ab
    assert model.negatives_ab.epochs[0][1] is model.memory_l.memory
    index = torch.tensor([1, 7, 19, 4])
    mem_l, mem_ab = model.memory_l.memory.clone(), model.memory_ab.memory.clone()
    out = model({"view1": images(4, seed=2), "index": index})
    (q_l, bank_l, neg_l, valid_l), (q_ab, bank_ab, neg_ab, valid_ab) = (model.negatives_l.calls[0],
                                                                      model.negatives_ab.calls[0])
    assert bank_l is model.memory_ab.memory and bank_ab is model.memory_l.memory
    for q, bank, neg, valid in ((q_l, mem_ab, neg_l, valid_l), (q_ab, mem_l, neg_ab, valid_ab)):
        assert not (neg[valid] == index.view(-1, 1).expand_as(neg)[valid]).any()
        if not anneal:  # B_i: the 6 entries nearest the anchor in that bank, i excluded
            sims = q.double() @ bank.double().t()
            sims[torch.arange(4), index] = -float("inf")
            nearest = sims.topk(6, dim=1).indices
            for row in range(4):
                assert set(neg[row].tolist()) == set(nearest[row].tolist())
    if kind == "ann" and not anneal:
        assert not valid_l.all() or not valid_ab.all()  # cluster-mates of i left B_i
    z_l = q_l.double()
    want = infonce_direct(z_l, mem_ab.double()[index], mem_ab.double()[neg_l], 0.07, valid_l)
    assert out["loss_l"].item() == pytest.approx(want, rel=1e-4, abs=1e-5)
    assert model.num_negatives == max(1, round((valid_l.sum(1).float().mean().item()
                                                + valid_ab.sum(1).float().mean().item()) / 2))
    state = model.extra_state()
    if kind == "ann":
        assert state["negatives_l"]["clusters"]["assignments"].shape == (2, 20)
        fresh = build_method(cfg, num_train_images=20)
        fresh.load_extra_state(state)
        assert torch.equal(fresh.negatives_l.clusters.assignments, state["negatives_l"]["clusters"]["assignments"])


def test_features_concatenate_the_two_views():
    model = build_method(tiny_cfg(), num_train_images=20).eval()
    x = images(4, seed=3)
    l, ab = split_lab(x)
    from pretrain.backbones import trunk_forward

    with torch.no_grad():
        want = torch.cat([F.normalize(trunk_forward(model.encoder_l, l), dim=1),
                          F.normalize(trunk_forward(model.encoder_ab, ab), dim=1)], dim=1) / math.sqrt(2)
        got = model.features(x, kind="backbone")
        emb = model.features(x, kind="embedding")
    assert got.shape == (4, 1024) and emb.shape == (4, 32)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(4))
    torch.testing.assert_close(emb[:, :16].norm(dim=1), torch.full((4,), 2 ** -0.5))


def test_cmc_views_have_no_grayscale():
    from torchvision import transforms as T

    from pretrain.data.views import build_views

    cfg = tiny_cfg()
    views = build_views(cfg, backend="pil")
    names = [type(t) for t in views.augment.transforms]
    assert T.RandomResizedCrop in names and T.ColorJitter in names and T.RandomHorizontalFlip in names
    assert T.RandomGrayscale not in names and views.num_views == 1
    from PIL import Image

    rng = np.random.default_rng(0)
    pil = Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8))
    a, b = views(pil, seed=5), views(pil, seed=5)
    assert list(a) == ["view1"] and a["view1"].dtype == torch.uint8 and a["view1"].shape == (3, 32, 32)
    assert torch.equal(a["view1"], b["view1"])


@pytest.mark.parametrize("opts, message", [
    (["INPUT.NUM_VIEWS", "2"], "set INPUT.NUM_VIEWS 1"),
    (["INPUT.VIEWS", "moco_v2"], "use INPUT.VIEWS cmc"),
    (["CMC.NEGATIVES", "hard"], "unknown CMC.NEGATIVES 'hard'"),
    (["BANK.LOSS", "nce"], "set BANK.LOSS infonce"),
    (["CMC.WIDTH", "0"], "CMC.WIDTH 0.0 must be positive"),
    (["BANK.T", "0"], "BANK.T 0.0 must be positive"),
    (["CMC.NEGATIVES", "ball", "BALL.ANNEAL_SCHEDULE", "step"], "unknown BALL.ANNEAL_SCHEDULE 'step'"),
    (["CMC.NEGATIVES", "ann", "CLUSTER.K", "0"], "CLUSTER.K 0 must be at least 1"),
])
def test_config_errors(opts, message):
    with pytest.raises(ValueError, match=message.replace(".", r"\.").replace("(", r"\(")):
        CMC.check_config(tiny_cfg(*opts))
    CMC.check_config(tiny_cfg())


def test_configs_cite_their_recipes():
    want = {"cmc_R_18": ("uniform", 224, False), "cmc_ann_plus_R_18": ("ann", 224, True),
            "cmc_R_18_cifar": ("uniform", 32, False), "cmc_ann_plus_R_18_cifar": ("ann", 32, True)}
    for name, (neg, size, anneal) in want.items():
        path = os.path.join(CONFIGS, f"{name}.yaml")
        text = open(path).read()
        assert text.startswith("#") and "Wu et al." in text and "B.3" in text and "Table 2" in text
        cfg = load_config(path)
        CMC.check_config(cfg)
        assert (cfg.MODEL.METHOD, cfg.MODEL.ARCH, cfg.CMC.NEGATIVES, cfg.INPUT.SIZE, cfg.BALL.ANNEAL) == \
            ("cmc", "resnet18", neg, size, anneal)
        assert (cfg.BANK.T, cfg.BANK.MOMENTUM, cfg.SOLVER.MOMENTUM, cfg.SOLVER.WEIGHT_DECAY) == (0.07, 0.5, 0.9, 1e-4)
        assert cfg.SOLVER.BASE_LR * cfg.SOLVER.BATCH_SIZE / cfg.SOLVER.REFERENCE_BATCH_SIZE == pytest.approx(0.03)
        assert (cfg.SOLVER.LR_SCHEDULER, cfg.SOLVER.PLATEAU_PATIENCE, cfg.SOLVER.PLATEAU_DROPS, cfg.SOLVER.GAMMA,
                cfg.KNN.PERIOD) == ("plateau", 10, 2, 0.1, 1)
        assert cfg.INPUT.VIEWS == "cmc" and cfg.MODEL.DIM == 128
        assert cfg.CLUSTER.K == (300 if size == 32 else 30000)
    base = open(os.path.join(CONFIGS, "Base-CMC-R_18.yaml")).read()
    assert "Contrastive Multiview Coding" in base and "grayscale" in base


# --------------------------------------------------------------------------------------------- end to end
TINY = ["MODEL.ARCH", "resnet18", "INPUT.SIZE", "32", "SOLVER.BATCH_SIZE", "8", "BANK.NUM_NEGATIVES", "8",
        "MODEL.DIM", "16", "MODEL.PRECISION", "fp32", "SOLVER.EPOCHS", "2", "LOG_PERIOD", "1", "KNN.BATCH_SIZE", "20",
        "DATA.NUM_WORKERS", "0", "SEED", "5", "SOLVER.CHECKPOINT_PERIOD", "0", "TENSORBOARD", "False"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("cmc")
    write_synthetic(base, kinds=("imagenet",), num_images=2, seed=0)  # 20 train, 20 val images, 10 classes
    root = os.path.join(base, "imagenet")
    full, split = str(base / "full"), str(base / "split")
    common = ["--config-file", CMC_CFG, "DATA.ROOT", root, *TINY]
    assert train.main([*common, "OUTPUT_DIR", full]) == 0
    assert train.main([*common, "OUTPUT_DIR", split, "SOLVER.STOP_ITER", "3"]) == 0  # mid-epoch
    assert train.main([*common, "OUTPUT_DIR", split, "--resume"]) == 0
    return full, split


def _metrics(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_tiny_run_resumes_exactly_and_logs(runs):
    full, split = runs
    a, b = _metrics(full), _metrics(split)
    steps = [m for m in a if "loss" in m]
    assert [m["iter"] for m in steps] == [1, 2, 3, 4]
    resumed = [(m["iter"], m["loss"], m["lr"]) for m in b if "loss" in m]
    assert [(m["iter"], m["loss"], m["lr"]) for m in steps] == resumed
    for m in steps:
        assert math.isfinite(m["loss"]) and m["mi_ceiling"] == pytest.approx(math.log(9))
        assert m["mi_bound"] == pytest.approx(math.log(9) - (m["loss_l"] + m["loss_ab"]) / 2, rel=1e-5, abs=1e-6)
        assert m["loss"] == pytest.approx(m["loss_l"] + m["loss_ab"], rel=1e-5)
        assert "acc_l" in m and "acc_ab" in m
    knn = [(m["iter"], m["knn_top1"]) for m in a if "knn_top1" in m]
    assert [i for i, _ in knn] == [2, 4] and all(0 <= v <= 100 for _, v in knn)  # kNN on CMC features
    assert knn == [(m["iter"], m["knn_top1"]) for m in b if "knn_top1" in m]
    ca = torch.load(os.path.join(full, "checkpoint_final.pth"), weights_only=True)
    cb = torch.load(os.path.join(split, "checkpoint_final.pth"), weights_only=True)
    assert ca["method"] == "cmc" and ca["iter"] == 4 and ca["scheduler"]["name"] == "plateau"
    sd = ca["state_dict"]
    assert sd["memory_l.memory"].shape == sd["memory_ab.memory"].shape == (20, 16)
    assert sd["encoder_l.conv1.weight"].shape[1] == 1 and sd["encoder_ab.conv1.weight"].shape[1] == 2
    assert sd.keys() == cb["state_dict"].keys()
    for k in sd:
        assert torch.equal(sd[k], cb["state_dict"][k]), k


def test_tiny_cmc_ann_plus_run_resumes_exactly(tmp_path):
    """CMC-ANN+ through the loop: annealed sets, k-means of both banks every epoch, sampler state resumed."""
    write_synthetic(tmp_path, kinds=("imagenet",), num_images=2, seed=0)
    root = os.path.join(tmp_path, "imagenet")
    common = ["--config-file", os.path.join(CONFIGS, "cmc_ann_plus_R_18.yaml"), "DATA.ROOT", root, *TINY,
              "BALL.NEIGHBOURS", "6", "CLUSTER.K", "4", "CLUSTER.RUNS", "2", "BALL.ANNEAL_EPOCHS", "(0.0, 2.0)",
              "KNN.PERIOD", "1", "BANK.BACKEND", "torch"]
    full, split = str(tmp_path / "full"), str(tmp_path / "split")
    assert train.main([*common, "OUTPUT_DIR", full]) == 0
    assert train.main([*common, "OUTPUT_DIR", split, "SOLVER.STOP_ITER", "3"]) == 0
    assert train.main([*common, "OUTPUT_DIR", split, "--resume"]) == 0
    a = [(m["iter"], m["loss"], m["mi_ceiling"]) for m in _metrics(full) if "loss" in m]
    assert [i for i, _, _ in a] == [1, 2, 3, 4] and all(math.isfinite(v) for _, v, _ in a)
    assert a == [(m["iter"], m["loss"], m["mi_ceiling"]) for m in _metrics(split) if "loss" in m]
    ckpt = torch.load(os.path.join(full, "checkpoint_final.pth"), weights_only=True)
    assert ckpt["method_state"]["negatives_ab"]["clusters"]["assignments"].shape == (2, 20)


def test_converter_refuses_a_cmc_checkpoint_in_one_line(runs, tmp_path):
    from transfer.conversion.convert import ConversionError, convert

    full, _ = runs
    path = os.path.join(full, "checkpoint_final.pth")
    out = tmp_path / "cmc.pkl"
    with pytest.raises(ConversionError, match="CMC checkpoint.*two encoders on L and ab inputs are not an RGB"):
        convert(path, str(out))
    proc = subprocess.run([sys.executable, os.path.join(REPO, "tools", "convert_backbone.py"), path, str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr.strip()
    assert err.count("\n") == 0 and "CMC checkpoint" in err and "not an RGB backbone" in err
    assert "Traceback" not in proc.stderr
    assert not os.listdir(tmp_path)  # nothing written
    # keyed on the method too: a CMC checkpoint whose encoders were renamed is still refused
    ckpt = torch.load(path, weights_only=True)
    renamed = {"method": "cmc", "state_dict": {k.replace("encoder_l.", "a.").replace("encoder_ab.", "b."): v
                                               for k, v in ckpt["state_dict"].items()}}
    from pretrain.checkpoints.backbone import extract_backbone

    with pytest.raises(ConversionError, match="CMC checkpoint"):
        extract_backbone(renamed)


def test_frozen_features_of_a_cmc_checkpoint(runs):
    from pretrain.evaluation.frozen import load_frozen_encoder

    full, _ = runs
    enc = load_frozen_encoder(os.path.join(full, "checkpoint_final.pth"))
    x = images(3, seed=4)
    feats = enc(x)
    assert enc.feature_dim == 1024 and feats.shape == (3, 1024)
    torch.testing.assert_close(feats.norm(dim=1), torch.ones(3))
