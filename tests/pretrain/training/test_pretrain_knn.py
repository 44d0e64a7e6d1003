"""pretrain.training.knn: the InstDis weighted kNN rule against a brute-force computation, and the monitor on a
trivially separable set."""
import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from pretrain.config import load_config
from pretrain.data.images import ImageFolder
from pretrain.evaluation.features import topk_accuracy
from pretrain.training.knn import knn_monitor, knn_predict
from pretrain.data.views import build_views


def brute_force(query, memory, labels, num_classes, k, t):
    """For each query: the k most similar memory rows, vote exp(s/t) per class (plain Python)."""
    preds = []
    for q in query.tolist():
        sims = [(sum(a * b for a, b in zip(q, m)), i) for i, m in enumerate(memory.tolist())]
        sims.sort(key=lambda x: -x[0])
        votes = [0.0] * num_classes
        for s, i in sims[:k]:
            votes[int(labels[i])] += math.exp(s / t)
        preds.append(votes)
    return torch.tensor(preds, dtype=torch.float64)


def test_knn_predict_matches_brute_force():
    torch.manual_seed(0)
    memory = F.normalize(torch.randn(60, 5), dim=1)
    labels = torch.randint(0, 4, (60,))
    query = F.normalize(torch.randn(7, 5), dim=1)
    for k in (1, 5, 200):
        got = knn_predict(query, memory, labels, 4, k=k, t=0.07, chunk=3)
        want = brute_force(query, memory, labels, 4, min(k, 60), 0.07)
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-6)
        assert torch.equal(got.argmax(1), want.argmax(1))


def test_knn_accuracy_on_separable_clusters():
    g = torch.Generator().manual_seed(0)
    centres = F.normalize(torch.randn(10, 32, generator=g), dim=1)
    train_labels = torch.arange(10).repeat_interleave(30)
    val_labels = torch.arange(10).repeat_interleave(5)
    train = F.normalize(centres[train_labels] + 0.05 * torch.randn(300, 32, generator=g), dim=1)
    val = F.normalize(centres[val_labels] + 0.05 * torch.randn(50, 32, generator=g), dim=1)
    acc = topk_accuracy(knn_predict(val, train, train_labels, 10, k=200, t=0.07), val_labels)
    assert acc["top1"] == 100.0 and acc["top5"] == 100.0
    chance = topk_accuracy(knn_predict(val, train, train_labels[torch.randperm(300, generator=g)], 10), val_labels)
    assert chance["top1"] < 50


class ColourEncoder(nn.Module):
    """A stand-in 'method' whose feature is the mean colour: perfect on solid-colour classes."""

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))

    def features(self, images, kind="embedding"):
        return F.normalize(images.float().mean(dim=(2, 3)) - 127.5, dim=1)


def test_knn_monitor_on_image_folders(tmp_path):
    colours = [(230, 20, 20), (20, 230, 20), (20, 20, 230), (230, 230, 20)]
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("val", 3)):
        for c, rgb in enumerate(colours):
            os.makedirs(tmp_path / split / f"class{c}")
            for i in range(n):
                noise = rng.integers(-15, 15, (40, 40, 3))
                pixels = np.clip(np.array(rgb) + noise, 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(tmp_path / split / f"class{c}" / f"{i}.jpg")
    cfg = load_config(None, ["INPUT.SIZE", "32"])
    views = build_views(cfg, "eval")
    train = ImageFolder(str(tmp_path / "train"), views)
    val = ImageFolder(str(tmp_path / "val"), views)
    res = knn_monitor(ColourEncoder(), train, val, k=200, t=0.07, batch_size=5, device=torch.device("cpu"))
    assert res["top1"] == pytest.approx(100.0) and res["train_images"] == 24 and res["val_images"] == 12
    sub = knn_monitor(ColourEncoder(), train, val, k=3, max_train=8, device=torch.device("cpu"), seed=1)
    assert sub["train_images"] == 8
