"""Weighted kNN monitor (Wu et al. 2018, InstDis): classify validation images by their neighbours in the
training set, in the encoder's L2-normalised feature space.

For a query feature f, take the k training features with the largest cosine similarity s_i; each votes
for its class with weight ``exp(s_i / t)``; the prediction is the class with the largest total vote
(k = 200, t = 0.07 as InstDis). :func:`knn_predict` is the rule on feature matrices; :func:`knn_monitor`
extracts the features of ``DATA.ROOT/train`` (memory) and ``DATA.ROOT/val`` (queries) with the ``eval``
views (:func:`pretrain.evaluation.features.extract_features`) and returns top-1/top-5 accuracy in percent.
With several processes each extracts a shard and the shards are gathered (:func:`gather_features`).
"""
import logging
import time

import torch

from pretrain.common.distributed import all_gather_cat, get_rank, get_world_size
from pretrain.evaluation.features import extract_features, topk_accuracy

__all__ = ["knn_predict", "gather_features", "knn_monitor"]

logger = logging.getLogger(__name__)


@torch.no_grad()
def knn_predict(query, memory, memory_labels, num_classes, k=200, t=0.07, chunk=1024):
    """Class scores (Q x num_classes) of L2-normalised ``query`` (Q x D) against ``memory`` (N x D)."""
    k = min(k, memory.shape[0])
    scores = []
    for start in range(0, query.shape[0], chunk):
        sim = query[start:start + chunk] @ memory.t()
        top_sim, top_idx = sim.topk(k, dim=1)
        weights = (top_sim / t).exp()
        votes = torch.zeros(sim.shape[0], num_classes, device=query.device, dtype=weights.dtype)
        votes.scatter_add_(1, memory_labels[top_idx], weights)
        scores.append(votes)
    return torch.cat(scores) if scores else torch.zeros(0, num_classes)


@torch.no_grad()
def gather_features(method, dataset, indices, batch_size, num_workers, device, kind="embedding"):
    """(features, labels) of ``dataset[indices]`` on ``device``: this process extracts every world_size-th
    index; the shards are gathered so every process returns all of them, in ``indices`` order."""
    from pretrain.data.images import build_loader

    world, rank = get_world_size(), get_rank()
    n = len(indices)
    per_rank = -(-n // world)
    padded = list(indices) + list(indices[:per_rank * world - n])  # equal shards for all_gather
    mine = padded[rank::world]
    loader = build_loader(dataset, mine, batch_size, num_workers, pin_memory=device.type == "cuda",
                          drop_last=False, persistent=False)
    feats, labels = extract_features(lambda images: method.features(images, kind),
                                     ((batch["view1"], batch["label"]) for batch in loader), device, to_cpu=False)
    labels = labels.to(device)
    if world > 1:
        feats, labels = all_gather_cat(feats), all_gather_cat(labels)
        # rank r held padded[r::world]; restore padded order, then drop the padding
        order = torch.arange(per_rank * world, device=device).view(per_rank, world).t().reshape(-1)
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(order.numel(), device=device)
        feats, labels = feats[inverse][:n], labels[inverse][:n]
    return feats, labels


@torch.no_grad()
def knn_monitor(method, train_set, val_set, *, k=200, t=0.07, batch_size=256, num_workers=0, device=None,
                kind="embedding", max_train=0, seed=0):
    """kNN top-1/top-5 (percent) of ``val_set`` against ``train_set`` with ``method.features``."""
    device = device or next(method.parameters()).device
    start = time.perf_counter()
    was_training = method.training
    method.eval()
    try:
        train_idx = list(range(len(train_set)))
        if 0 < max_train < len(train_idx):
            g = torch.Generator().manual_seed(seed)
            train_idx = sorted(torch.randperm(len(train_idx), generator=g)[:max_train].tolist())
        memory, memory_labels = gather_features(method, train_set, train_idx, batch_size, num_workers, device, kind)
        query, query_labels = gather_features(method, val_set, list(range(len(val_set))), batch_size,
                                               num_workers, device, kind)
    finally:
        method.train(was_training)
    num_classes = max(len(train_set.classes), int(memory_labels.max()) + 1 if memory_labels.numel() else 1)
    scores = knn_predict(query, memory, memory_labels, num_classes, k=k, t=t)
    out = topk_accuracy(scores, query_labels)
    out["seconds"] = time.perf_counter() - start
    out["train_images"], out["val_images"] = len(train_idx), len(val_set)
    return out
