"""Nearest neighbours and k-means over a memory bank: FAISS when it is installed, plain torch otherwise.

Wu et al. (2020) and Local Aggregation search the memory bank for the closest entries of every
embedding (background sets) and cluster it with k-means (close-neighbour sets), both with FAISS. Both
operations here are exact and give the same answer with either backend (up to ties):

- :func:`search`: the ``k`` largest inner products (cosine similarities of L2-normalised rows) of every
  query against a base, as ``(similarities, indices)`` sorted in decreasing similarity. torch computes it
  blockwise (``query @ base.T`` and ``topk``, on the tensors' device); FAISS uses an exact flat
  inner-product index (on the GPU when ``faiss-gpu`` is installed and the base is on a CUDA device).
- :func:`kmeans`: Lloyd's k-means (at most ``niter`` iterations, squared Euclidean distance, initial
  centroids a seeded random subset of the points, an emptied cluster re-seeded from a random point of the
  largest one, stopping early once no assignment changes); returns ``(assignments, centroids)``. FAISS's
  ``Kmeans`` (same seed and iteration cap; it also stops once its objective no longer changes) where
  installed; the torch version is the fallback for machines without FAISS.

``backend``: ``"auto"``, ``"faiss"`` or ``"torch"``. ``"auto"`` takes FAISS for k-means when it is
importable and torch for :func:`search`: an exact search of 256 queries for their 4096 nearest rows is
faster in torch than in FAISS's flat index on CPU (2.7 s vs 8.5 s for a bank of 1.28M x 128 on 2 cores;
``tools/bench_neighbours.py``) and on a GPU it avoids copying the bank into an index at every step.
"""
import functools
import logging

import numpy as np
import torch

__all__ = ["have_faiss", "resolve_backend", "search", "kmeans", "BACKENDS"]

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "faiss", "torch")


@functools.lru_cache(maxsize=None)
def have_faiss():
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(backend="auto"):
    if backend not in BACKENDS:
        raise ValueError(f"unknown nearest-neighbour backend {backend!r}; use {', '.join(BACKENDS)}")
    if backend == "auto":
        return "faiss" if have_faiss() else "torch"
    if backend == "faiss" and not have_faiss():
        raise ValueError("backend faiss: FAISS is not installed (pip install faiss-cpu, or faiss-gpu)")
    return backend


def _faiss_gpu(device):
    import faiss

    return device.type == "cuda" and hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def _numpy(x):
    return np.ascontiguousarray(x.detach().float().cpu().numpy())


@torch.no_grad()
def search(query, base, k, backend="auto", chunk=4096):
    """``(sims, idx)``, each Q x k: the ``k`` rows of ``base`` (N x D) with the largest inner product with
    each row of ``query`` (Q x D), best first; ``k`` must be <= N."""
    n = base.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k = {k} neighbours from a base of {n} rows")
    backend = "torch" if backend == "auto" else resolve_backend(backend)
    if backend == "torch":
        sims, idx = [], []
        for start in range(0, query.shape[0], chunk):
            s, i = (query[start:start + chunk].float() @ base.float().t()).topk(k, dim=1)
            sims.append(s)
            idx.append(i)
        if not sims:
            return query.new_zeros(0, k), torch.zeros(0, k, dtype=torch.long, device=query.device)
        return torch.cat(sims), torch.cat(idx)
    import faiss

    index = faiss.IndexFlatIP(base.shape[1])
    if _faiss_gpu(base.device):
        index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), base.device.index or 0, index)
    index.add(_numpy(base))
    s, i = index.search(_numpy(query), k)
    return (torch.from_numpy(s).to(query.device), torch.from_numpy(i).long().to(query.device))


@torch.no_grad()
def kmeans(x, k, seed=0, niter=20, backend="auto"):
    """``(assignments (N,), centroids (k x D))`` of Lloyd's k-means of the rows of ``x``; ``k`` <= N."""
    n, d = x.shape
    if not 1 <= k <= n:
        raise ValueError(f"k-means with k = {k} on {n} points")
    backend = resolve_backend(backend)
    if backend == "faiss":
        import faiss

        km = faiss.Kmeans(d, k, niter=niter, seed=int(seed), verbose=False, gpu=_faiss_gpu(x.device),
                          min_points_per_centroid=1, max_points_per_centroid=max(256, -(-n // k)))
        data = _numpy(x)
        km.train(data)
        _, assign = km.index.search(data, 1)
        return (torch.from_numpy(assign[:, 0]).long().to(x.device),
                torch.from_numpy(km.centroids).to(x.device))
    g = torch.Generator().manual_seed(int(seed))
    xf = x.float()
    centroids = xf[torch.randperm(n, generator=g)[:k].to(x.device)].clone()
    sq = (xf * xf).sum(1, keepdim=True)
    assign = None
    for _ in range(max(1, niter)):
        dist = sq - 2 * xf @ centroids.t() + (centroids * centroids).sum(1)[None]
        previous, assign = assign, dist.argmin(dim=1)
        if previous is not None and torch.equal(previous, assign):
            break  # converged: the centroids below would not move
        counts = torch.bincount(assign, minlength=k)
        sums = torch.zeros_like(centroids).index_add_(0, assign, xf)
        nonempty = counts > 0
        centroids[nonempty] = sums[nonempty] / counts[nonempty, None].to(xf.dtype)
        for empty in torch.nonzero(~nonempty).flatten().tolist():  # re-seed from the largest cluster
            largest = int(torch.bincount(assign, minlength=k).argmax())
            members = torch.nonzero(assign == largest).flatten()
            pick = members[torch.randint(len(members), (1,), generator=g).item()]
            centroids[empty] = xf[pick] + 1e-6 * torch.randn(d, generator=g).to(xf.device)
            assign[pick] = empty
    dist = sq - 2 * xf @ centroids.t() + (centroids * centroids).sum(1)[None]
    return dist.argmin(dim=1), centroids
