"""pretrain.evaluation.knn (tools/knn_eval.py): weighted kNN on frozen features, against a brute-force vote
computed here, results.json in the transfer schema, user errors as one line."""
import json
import math

import pytest
import torch
import torchvision
from PIL import Image

from pretrain.evaluation.features import ViewedImages, extract_features, view_loader
from pretrain.evaluation.frozen import load_frozen_encoder
from pretrain.evaluation.knn import main
from pretrain.evaluation.linear.config import build_views_of
from pretrain.evaluation.knn import load_config
from pretrain.data.labeled import LabeledImages

COLORS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (20, 40, 230), "yellow": (230, 220, 30),
          "gray": (128, 128, 128), "black": (5, 5, 5)}
FAST = ["INPUT.SIZE", "32", "DATA.NUM_WORKERS", "0", "LINEAR.FEATURE_BATCH_SIZE", "16"]

pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Noisy solid colours in class folders (6 classes: 4 train and 3 val images each), and a random-weight
    torchvision ResNet-18 state dict."""
    root = tmp_path_factory.mktemp("knn")
    g = torch.Generator().manual_seed(0)
    for split, n in (("train", 4), ("val", 3)):
        for name, rgb in COLORS.items():
            for i in range(n):
                noise = torch.randint(-60, 61, (20, 20, 3), generator=g)
                pixels = (torch.tensor(rgb).view(1, 1, 3) + noise).clamp(0, 255).to(torch.uint8).numpy()
                path = root / "colors" / split / name / f"{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(pixels).save(path)
    torch.manual_seed(0)
    weights = root / "rand_r18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)
    return root / "colors", str(weights)


def _features(weights, folder, cfg):
    images = LabeledImages(str(folder))
    encoder = load_frozen_encoder(weights)
    loader = view_loader(ViewedImages(images, build_views_of(cfg, "eval"), seed=cfg.SEED,
                                      targets=images.labels[:, 0]), 16)
    feats, labels = extract_features(encoder, loader, "cpu")
    return feats.double(), labels.tolist()


def brute_force_knn(train, train_labels, val, val_labels, k, t, num_classes):
    """Top-1/top-5 (percent) of the weighted vote, one query at a time, no shared code with the command."""
    train = train / train.norm(dim=1, keepdim=True)
    val = val / val.norm(dim=1, keepdim=True)
    top1 = top5 = 0
    for q, label in zip(val, val_labels):
        sims = sorted(((float(q @ x), y) for x, y in zip(train, train_labels)), reverse=True)[:k]
        votes = [0.0] * num_classes
        for s, y in sims:
            votes[y] += math.exp(s / t)
        ranked = sorted(range(num_classes), key=lambda c: -votes[c])
        top1 += ranked[0] == label
        top5 += label in ranked[:5]
    return 100.0 * top1 / len(val_labels), 100.0 * top5 / len(val_labels)


@pytest.mark.parametrize("k, t", [(5, 0.07), (24, 1.0)])
def test_knn_matches_a_brute_force_vote(data, tmp_path, capsys, k, t):
    folder, weights = data
    out = tmp_path / "out"
    assert main(["--weights", weights, "--out", str(out), "DATA.ROOT", str(folder), *FAST, "KNN.K", str(k),
                 "KNN.T", str(t), "BACKBONE_NAME", "rand@ep3", "SEED", "2"]) == 0
    record = json.loads((out / "results.json").read_text())
    cfg = load_config(None, ["DATA.ROOT", str(folder), *FAST, "SEED", "2"])
    train, train_labels = _features(weights, folder / "train", cfg)
    val, val_labels = _features(weights, folder / "val", cfg)
    top1, top5 = brute_force_knn(train, train_labels, val, val_labels, k, t, len(COLORS))
    assert record["metrics"] == {"knn": {"top1": pytest.approx(top1), "top5": pytest.approx(top5)}}
    assert (record["task"], record["backbone"], record["mode"], record["seed"], record["iterations"]) == \
        ("knn_colors", "rand@ep3", "frozen", 2, 0)
    assert record["weights"] == weights and record["arch"] == "R-18" and record["details"]["k"] == k
    assert (out / "config.yaml").is_file()
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["top1"] == pytest.approx(top1)
    # done is done: a second call leaves results.json alone
    assert main(["--weights", weights, "--out", str(out), "DATA.ROOT", str(folder), *FAST]) == 0
    assert "exists; nothing to do" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--weights", "nope.pth"], "nope.pth: no such file"),
    (["KNN.K", "0"], "KNN.K 0 must be >= 1"),
    (["KNN.NEIGHBOURS", "3"], "KNN.NEIGHBOURS"),
])
def test_user_errors_are_one_line(data, tmp_path, capsys, args, message):
    folder, weights = data
    argv = ["--weights", weights, "--out", str(tmp_path / "out"), "DATA.ROOT", str(folder), *FAST, *args]
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and err.startswith("knn_eval: error: ") and message in err and "\n" not in err
    assert not (tmp_path / "out").exists()
