"""pretrain/evaluation/mi/ and tools/estimate_mi.py against known truth.

- jointly Gaussian variables: I(X; Y) = -d/2 log(1 - rho^2) in closed form;
- a perfect encoder of CDP labels (one-hot features of colour, digit and position) under same-class
  sampling: the true MI is H(C) (Lee et al., Theorem III.1) and the best InfoNCE value at a finite K_Est
  is the closed form of :func:`perfect_encoder_bound`, itself checked here by simulation;
- the loss forms against a direct transcription of Lee et al.'s Eq. (2)-(4).
"""
import itertools
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from pretrain.common.paths import REPO_ROOT
from pretrain.evaluation.mi import command
from pretrain.evaluation.mi.bound import NATS_PER_BIT, MIError, ceiling_nats, infonce_bound, perfect_encoder_bound
from pretrain.evaluation.mi.estimate import estimate_mi
from pretrain.evaluation.mi.pairing import class_ids, entropy_bits, parse_pairing
from pretrain.evaluation.mi.pairs import ClassPairs, TensorPairs, ViewPairs
from transfer.data.synthetic import write_synthetic

REPO = REPO_ROOT
LOG2 = NATS_PER_BIT
SMALL_CRITIC = dict(hidden_dim=64, out_dim=64, lr=3e-3)  # converges in ~100 steps on these features


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _gaussian(n, d, rho, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = rho * x + math.sqrt(1 - rho ** 2) * torch.randn(n, d, generator=g)
    return x, y


def _cdp_labels(per_combination):
    """Every colour x digit x position combination ``per_combination`` times (N x 3 labels)."""
    combos = torch.tensor(list(itertools.product(range(4), range(4), range(4))))
    return combos.repeat(per_combination, 1)


def _perfect_features(labels):
    """A perfect encoder: concatenated one-hot codes of the three attributes."""
    return torch.cat([torch.nn.functional.one_hot(labels[:, j], 4) for j in range(labels.shape[1])], 1).float()


# ------------------------------------------------------------------------------------------- the bound

def _lee_ntxent_loss(za, zb, t):
    """Lee et al. Eq. (2)-(3), term by term."""
    k = za.shape[0]
    sim = lambda u, v: float(u @ v) / t  # noqa: E731

    def l(x, y, i):
        num = math.exp(sim(x[i], y[i]))
        den = sum(math.exp(sim(x[i], x[j])) for j in range(k) if j != i) + sum(math.exp(sim(x[i], y[j]))
                                                                               for j in range(k))
        return -math.log(num / den)

    return sum(l(za, zb, i) + l(zb, za, i) for i in range(k)) / (2 * k)


def test_bound_forms_and_ceilings():
    assert ceiling_nats(256) == pytest.approx(math.log(256))
    assert ceiling_nats(256, "ntxent") == pytest.approx(math.log(511))
    g = torch.Generator().manual_seed(0)
    za = torch.nn.functional.normalize(torch.randn(6, 5, generator=g), dim=1)
    zb = torch.nn.functional.normalize(torch.randn(6, 5, generator=g), dim=1)
    ntxent = float(infonce_bound(za, zb, 0.5, "ntxent"))
    assert ntxent == pytest.approx(math.log(11) - _lee_ntxent_loss(za, zb, 0.5), abs=1e-5)
    # one direction by hand, both directions averaged
    logits = (za @ zb.t() / 0.5).double()
    ce_ab = float(-(logits.diag() - logits.logsumexp(1)).mean())
    ce_ba = float(-(logits.diag() - logits.logsumexp(0)).mean())
    assert float(infonce_bound(za, zb, 0.5)) == pytest.approx(math.log(6) - (ce_ab + ce_ba) / 2, abs=1e-5)
    # perfectly matched, well separated embeddings reach the ceiling; identical ones give 0
    eye = torch.eye(8)
    assert float(infonce_bound(eye, eye, 0.01)) == pytest.approx(math.log(8), abs=1e-4)
    assert float(infonce_bound(eye, eye, 0.01, "ntxent")) == pytest.approx(math.log(15), abs=1e-4)
    same = torch.ones(8, 3) / math.sqrt(3)
    assert float(infonce_bound(same, same, 0.1)) == pytest.approx(0.0, abs=1e-5)
    with pytest.raises(MIError, match="form"):
        ceiling_nats(8, "nce")


def test_perfect_encoder_bound_matches_simulation():
    """The closed form equals a direct simulation of the optimal critic's bound on i.i.d. batches."""
    rng = np.random.default_rng(0)
    probs = np.array([0.5, 0.3, 0.15, 0.05])
    k = 32
    values = []
    for _ in range(4000):
        c = rng.choice(4, size=k, p=probs)
        same = (c[:, None] == c[None, :]).sum(1)  # 1 (the positive) + same-class negatives, per anchor
        values.append(np.mean(np.log(k / same)))
    assert perfect_encoder_bound(probs, k) == pytest.approx(np.mean(values), abs=0.01)
    # tends to H(C) for large batches, never above the ceiling
    h = -(probs * np.log(probs)).sum()
    assert perfect_encoder_bound(probs, 1 << 16) == pytest.approx(h, abs=1e-3)
    for k in (2, 8, 64):
        assert perfect_encoder_bound(probs, k) < min(h, math.log(k))
        assert perfect_encoder_bound(probs, k, "ntxent") < math.log(2 * k - 1)


# --------------------------------------------------------------------------------------- Gaussian truth

def test_gaussian_estimate_is_below_and_close_to_the_truth():
    d, rho = 4, 0.8
    truth = -d / 2 * math.log(1 - rho ** 2)  # 2.04 nats, far below log 256 = 5.55
    x, y = _gaussian(8000, d, rho, seed=0)
    r = estimate_mi(x, y, k_est=256, iters=150, seeds=[0, 1], eval_batches=10, **SMALL_CRITIC)
    assert r["ceiling_nats"] == pytest.approx(math.log(256)) and not r["near_ceiling"]
    assert r["mi_nats"] <= truth + 0.05
    assert r["mi_nats"] >= 0.85 * truth
    assert r["mi_bits"] == pytest.approx(r["mi_nats"] / LOG2)
    assert len(r["per_seed"]) == 2 and r["mi_nats_std"] < 0.1
    # independent variables: nothing to find
    x, y = _gaussian(4000, d, 0.0, seed=1)
    r = estimate_mi(x, y, k_est=128, iters=60, seeds=[0], eval_batches=10, **SMALL_CRITIC)
    assert -0.1 < r["mi_nats"] < 0.05


def test_gaussian_estimate_is_capped_by_the_batch():
    d, rho = 16, 0.9
    truth = -d / 2 * math.log(1 - rho ** 2)  # 13.3 nats, far above log 64
    x, y = _gaussian(6000, d, rho, seed=2)
    r = estimate_mi(x, y, k_est=64, iters=100, seeds=[0], eval_batches=10, **SMALL_CRITIC)
    assert r["mi_nats"] <= r["ceiling_nats"] < truth
    assert r["mi_nats"] >= 0.95 * r["ceiling_nats"] and r["near_ceiling"]
    assert any("ceiling" in w for w in r["warnings"])


# ------------------------------------------------------------------------- CDP with a perfect encoder

@pytest.mark.parametrize("columns,bits,k_est", [([0], 2, 256), ([0, 1], 4, 256), ([0, 1, 2], 6, 512)])
def test_perfect_encoder_reaches_class_entropy(columns, bits, k_est):
    labels = _cdp_labels(24)
    ids, m = class_ids(labels, columns)
    assert m == 4 ** len(columns) and entropy_bits(ids) == pytest.approx(bits)
    assert math.log(k_est) > bits * LOG2  # the ceiling is not what stops it
    r = estimate_mi(ClassPairs(_perfect_features(labels), ids), k_est=k_est, iters=100, seeds=[0],
                    eval_batches=10, **SMALL_CRITIC)
    perfect = perfect_encoder_bound(torch.bincount(ids) / len(ids), k_est)
    assert r["mi_bits"] <= bits + 0.03                       # below H(C): a lower bound
    assert r["mi_bits"] >= bits - 0.15                       # and reaches it (Theorem III.1)
    assert r["mi_nats"] == pytest.approx(perfect, abs=0.06 * LOG2)  # as high as any critic can go
    assert not r["near_ceiling"]


def test_perfect_encoder_is_capped_at_log_k_est():
    labels = _cdp_labels(12)
    ids, _ = class_ids(labels, [0, 1, 2])  # H(C) = 6 bits = 4.16 nats
    features = _perfect_features(labels)
    r = estimate_mi(ClassPairs(features, ids), k_est=16, iters=100, seeds=[0], eval_batches=40, **SMALL_CRITIC)
    assert r["ceiling_nats"] == pytest.approx(math.log(16))
    assert r["ceiling_nats"] < 6 * LOG2
    assert 0.9 * r["ceiling_nats"] <= r["mi_nats"] <= r["ceiling_nats"]
    assert r["mi_nats"] == pytest.approx(perfect_encoder_bound([1 / 64] * 64, 16), abs=0.08)
    r = estimate_mi(ClassPairs(features, ids), k_est=8, iters=100, seeds=[0], eval_batches=40, **SMALL_CRITIC)
    assert r["near_ceiling"] and r["mi_nats"] <= r["ceiling_nats"]


def test_memorising_critic_cannot_inflate_the_estimate():
    """Features that carry no class information, few images: the critic memorises its training pairs, yet the
    estimate on the test images (neither trained on nor used to choose the critic) stays at zero."""
    g = torch.Generator().manual_seed(0)
    classes = torch.arange(4).repeat_interleave(16)
    features = torch.randn(len(classes), 32, generator=g)
    r = estimate_mi(ClassPairs(features, classes), k_est=32, iters=200, seeds=[0, 1], eval_batches=20,
                    **SMALL_CRITIC)
    assert -1.0 < r["mi_nats"] < 0.05  # InfoNCE of a useless critic is at or below 0
    for seed in r["per_seed"]:
        assert seed["train_items"] + seed["val_items"] + seed["test_items"] == 64
        assert 1 <= seed["best_iter"] <= 200


def test_negative_estimate_is_flagged_as_vacuous():
    """A held-out InfoNCE bound below zero (a critic that found nothing that generalises: 2 views per image in
    the tiny reverse-U sweep gave -0.5 bits) says only MI >= 0; the report must say so, not just print it."""
    g = torch.Generator().manual_seed(0)
    views = torch.randn(48, 2, 32, generator=g)  # two independent "views" per item: MI 0, one pair per item
    r = estimate_mi(ViewPairs(views), k_est=16, iters=200, seeds=[0, 1], eval_batches=20, **SMALL_CRITIC)
    assert r["mi_nats"] < 0
    assert any("negative" in w and "MI >= 0" in w for w in r["warnings"])
    x, y = _gaussian(4000, 4, 0.8, seed=0)  # a clear dependence: no such warning
    r = estimate_mi(x, y, k_est=64, iters=60, seeds=[0], eval_batches=5, **SMALL_CRITIC)
    assert r["mi_nats"] > 0.5 and not any("negative" in w for w in r["warnings"])


def test_estimates_repeat_per_seed_and_spread_over_seeds():
    labels = _cdp_labels(8)
    ids, _ = class_ids(labels, [1])
    noise = torch.randn(len(labels), 12, generator=torch.Generator().manual_seed(0))
    features = _perfect_features(labels) + 0.3 * noise
    kwargs = dict(k_est=32, iters=40, eval_batches=5, hidden_dim=32)
    a = estimate_mi(ClassPairs(features, ids), seeds=[3, 4], **kwargs)
    b = estimate_mi(ClassPairs(features, ids), seeds=[3, 4], **kwargs)
    assert a["per_seed"] == b["per_seed"]
    assert a["seeds"] == [3, 4] and a["per_seed"][0]["mi_nats"] != a["per_seed"][1]["mi_nats"]
    assert a["mi_nats_std"] == pytest.approx(np.std([r["mi_nats"] for r in a["per_seed"]], ddof=1))


# ------------------------------------------------------------------------------------------- pairings

def test_class_pairs_are_same_class_never_the_same_image_and_splits_are_stratified():
    classes = torch.tensor([0] * 5 + [1] * 8 + [7] * 4)
    features = torch.arange(len(classes), dtype=torch.float32)[:, None]  # feature = item id
    source = ClassPairs(features, classes)
    g = torch.Generator().manual_seed(0)
    seen = {}
    for _ in range(200):
        a, b = source.sample(16, g)
        ia, ib = a[:, 0].long(), b[:, 0].long()
        assert torch.equal(classes[ia], classes[ib]) and bool((ia != ib).all())
        for x, y in zip(ia.tolist(), ib.tolist()):
            seen.setdefault(x, set()).add(y)
    assert seen[0] == {1, 2, 3, 4}  # every other member of the class shows up as a partner
    train, held = source.split(0.25, torch.Generator().manual_seed(1))
    ids_train, ids_held = set(train.features[:, 0].long().tolist()), set(held.features[:, 0].long().tolist())
    assert not ids_train & ids_held and len(ids_train | ids_held) == len(classes)
    for c in (0, 1, 7):
        assert (train.classes == c).sum() >= 2 and (held.classes == c).sum() >= 2
    with pytest.raises(MIError, match="two images"):
        ClassPairs(torch.zeros(3, 2), torch.tensor([0, 0, 1]))


def test_view_and_tensor_pairs():
    views = torch.arange(5 * 3, dtype=torch.float32).view(5, 3, 1)  # image i, view v -> 3 i + v
    a, b = ViewPairs(views).sample(64, torch.Generator().manual_seed(0))
    assert torch.equal(a // 3, b // 3) and bool((a != b).all())
    x, y = torch.arange(10.0)[:, None], -torch.arange(10.0)[:, None]
    a, b = TensorPairs(x, y).sample(20, torch.Generator().manual_seed(0))
    assert torch.equal(a, -b)
    with pytest.raises(MIError):
        estimate_mi(x)  # no second side


def test_parse_pairing():
    attrs = ["color", "digit", "position"]
    assert parse_pairing("simclr").kind == "simclr"
    assert parse_pairing("class:all", attrs).attributes == attrs
    assert parse_pairing("class", attrs).attributes == attrs
    assert parse_pairing("class:digit+color", attrs).attributes == ["color", "digit"]  # data order
    assert parse_pairing("class:color,position", attrs).spec == "class:color+position"
    with pytest.raises(MIError, match="no attribute 'shape'"):
        parse_pairing("class:shape", attrs)
    with pytest.raises(MIError, match="unknown pairing"):
        parse_pairing("byol", attrs)


# ------------------------------------------------------------------------------------------------ CLI

@pytest.fixture(scope="module")
def cdp_and_weights(tmp_path_factory):
    import torchvision

    root = tmp_path_factory.mktemp("mi")
    write_synthetic(root, kinds=["cdp"], num_images=128, seed=0, cdp_image_size=32)
    weights = root / "r18_random.pth"
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), weights)
    return root, weights


def _cli(*args):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, os.path.join(REPO, "tools", "estimate_mi.py"), *map(str, args)],
                          cwd=REPO, capture_output=True, text=True, env=env)


def _main(*args):
    """The command's main() in this process (as a sweep job runs it): its exit status; output through capsys."""
    try:
        return command.main([str(a) for a in args])
    except SystemExit as e:  # usage errors and one-line errors
        return e.code


SMALL = ("--k-est", "32", "--iters", "20", "--seeds", "2", "--image-size", "32", "--workers", "0",
         "--eval-batches", "4", "--device", "cpu")


def test_cli_class_pairing_writes_mi_json(cdp_and_weights, tmp_path):
    root, weights = cdp_and_weights
    out = _cli("--weights", weights, "--data", root / "cdp" / "train", "--pairing", "class:color",
               "--out", tmp_path / "o", *SMALL)
    assert out.returncode == 0, out.stderr
    line = out.stdout.splitlines()[0]
    assert "nats" in line and "bits" in line and "ceiling 3.466 nats" in line and "H(C) 2.000 bits" in line
    with open(tmp_path / "o" / "mi.json") as f:
        report = json.load(f)
    for key in ("mi_nats", "mi_bits", "mi_nats_std", "ceiling_nats", "k_est", "pairing", "seeds", "per_seed",
                "class_entropy_bits", "feature_dim", "weights", "backbone", "data", "iters", "timing",
                "perfect_encoder_bits", "warnings"):
        assert key in report, key
    assert report["pairing"] == "class:color" and report["k_est"] == 32 and report["seeds"] == [0, 1]
    assert report["ceiling_nats"] == pytest.approx(math.log(32)) and report["feature_dim"] == 512
    assert report["class_entropy_bits"] == pytest.approx(2.0) and report["num_classes"] == 4
    assert report["backbone"] == "r18_random" and len(report["per_seed"]) == 2
    assert report["mi_nats"] == pytest.approx(np.mean([r["mi_nats"] for r in report["per_seed"]]))
    assert report["mi_nats"] <= report["ceiling_nats"]


def test_cli_simclr_pairing(cdp_and_weights, tmp_path, capsys):
    root, weights = cdp_and_weights
    code = _main("--weights", weights, "--data", root / "cdp" / "val", "--pairing", "simclr", "--views", "moco_v2",
                 "--views-per-image", "2", "--out", tmp_path, "--backbone-name", "rand18", "--form", "ntxent",
                 *SMALL)
    assert code == 0, capsys.readouterr().err
    assert "MI rand18 simclr" in capsys.readouterr().out
    with open(tmp_path / "mi.json") as f:
        report = json.load(f)
    assert report["views"] == "moco_v2" and report["views_per_image"] == 2 and report["backbone"] == "rand18"
    # 32 val images, 8 of them held out: K_Est 32 is clamped to the 8 test items (ceiling log(2 * 8 - 1))
    assert report["k_est"] == 8 and report["k_est_requested"] == 32
    assert report["form"] == "ntxent" and report["ceiling_nats"] == pytest.approx(math.log(15))
    assert "class_entropy_bits" not in report


def test_cli_k_est_beyond_the_test_items_is_clamped_and_recorded(cdp_and_weights, tmp_path, capsys):
    """--k-est 5000 on 32 images (8 held out for the test): the estimate runs with K_Est 8, says so in one
    warning line, and mi.json records the K_Est used, its ceiling and the one asked for."""
    root, weights = cdp_and_weights
    args = ["--weights", weights, "--data", root / "cdp" / "val", "--pairing", "simclr", "--views-per-image", "2",
            "--out", tmp_path, *SMALL, "--k-est", "5000"]
    assert _main(*args) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    clamped = [line for line in captured.err.splitlines() if "5000" in line]
    assert len(clamped) == 1 and clamped[0].startswith("estimate_mi: warning: K_Est 5000 is more than the 8 held-out "
                                                       "test items") and "clamped to K_Est 8" in clamped[0]
    assert "(K_Est 8, clamped from 5000, 2 seeds)" in captured.out
    with open(tmp_path / "mi.json") as f:
        report = json.load(f)
    assert (report["k_est"], report["k_est_requested"]) == (8, 5000)
    assert report["ceiling_nats"] == pytest.approx(math.log(8)) and report["mi_nats"] <= math.log(8)
    assert all(seed["test_items"] == 8 for seed in report["per_seed"])
    assert any("clamped to K_Est 8" in w for w in report["warnings"])


@pytest.mark.parametrize("change,message", [
    ({"--weights": "missing.pth"}, "no such weights file"),
    ({"--pairing": "class:shape"}, "no attribute 'shape'"),
    ({"--pairing": "class:all"}, "fewer than 2 classes"),   # 2 images per class in a 128-image train split
    ({"--data": "nowhere"}, "nowhere"),
    ({"--k-est": "0"}, "--k-est"),
])
def test_cli_errors_in_one_line(cdp_and_weights, tmp_path, capsys, change, message):
    root, weights = cdp_and_weights
    args = {"--weights": weights, "--data": root / "cdp" / "train", "--pairing": "class:color",
            "--out": tmp_path / "o"}
    args.update(change)
    assert _main(*SMALL, *[x for kv in args.items() for x in kv]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "error:" in lines[0] and message in lines[0], err
    assert not (tmp_path / "o").exists()
