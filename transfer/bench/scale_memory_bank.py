"""The memory-bank methods' two bank-wide operations at ImageNet-like bank sizes (128k, 1.28M entries).

:mod:`pretrain.methods.neighbours` with its default backends (``auto``: torch for the search, FAISS for
k-means when installed), on seeded unit rows of 128 dimensions, each size in a fresh process (time and
peak memory):

- ``search``: one training step's background sets: 256 queries (the recipes' batch) against the whole
  bank, the 4096 nearest (``BALL.NEIGHBOURS``). An epoch has ``N / 256`` such steps.
- ``k-means``: Lloyd's iterations over the whole bank with ``clusters`` centroids. Its cost is linear in the
  clusters and the iterations, so the last column extrapolates to the recipe's clustering per epoch (Wu et
  al. B.3 on ImageNet: 30,000 clusters, 20 iterations, 10 runs; ``CLUSTER.K``, ``NITER``, ``RUNS``);
  measuring it directly takes hours on a CPU.
"""
from transfer.bench.isolated import run_isolated

__all__ = ["bench_memory_bank", "HEADERS", "RECIPE"]

HEADERS = ("op", "bank N", "work", "backend", "seconds", "added MB", "per epoch (recipe)")
RECIPE = {"batch": 256, "neighbours": 4096, "clusters": 30000, "iterations": 20, "runs": 10}
_IMPORTS = ("torch", "pretrain.methods.neighbours")


def _rows(n, dim, seed):
    import torch

    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, dim, generator=g), dim=1)


def _search(n, dim, queries, k, threads):
    import time

    import torch

    from pretrain.methods import neighbours

    if threads:
        torch.set_num_threads(threads)
    bank, query = _rows(n, dim, 2), _rows(queries, dim, 1)
    neighbours.search(query[:8], bank, min(k, n))  # warm-up
    start = time.perf_counter()
    neighbours.search(query, bank, min(k, n))
    return time.perf_counter() - start, "torch"


def _kmeans(n, dim, clusters, iters, threads):
    import time

    import torch

    from pretrain.methods import neighbours

    if threads:
        torch.set_num_threads(threads)
    bank = _rows(n, dim, 3)
    backend = neighbours.resolve_backend("auto")
    start = time.perf_counter()
    neighbours.kmeans(bank, min(clusters, n), seed=0, niter=iters, backend=backend)
    return time.perf_counter() - start, backend


def bench_memory_bank(sizes, dim=128, clusters=1000, iters=5, threads=0, log=None):
    """Rows of :data:`HEADERS` for each bank size in ``sizes``."""
    rows = []
    for n in sizes:
        if log:
            log(f"memory bank: {n} entries: search, k-means ...")
        m = run_isolated(_search, n, dim, RECIPE["batch"], RECIPE["neighbours"], threads, imports=_IMPORTS)
        if m.error:
            rows.append(("search", n, "-", "-", "failed", "-", m.error[:80]))
        else:
            seconds, backend = m.result
            epoch_h = seconds * n / RECIPE["batch"] / 3600
            rows.append(("search", n, f"{RECIPE['batch']} queries, top {min(RECIPE['neighbours'], n)}", backend,
                         f"{seconds:.3f}", f"{m.added_mb:.0f}", f"{epoch_h:.2f} h ({n // RECIPE['batch']} steps)"))
        m = run_isolated(_kmeans, n, dim, clusters, iters, threads, imports=_IMPORTS)
        if m.error:
            rows.append(("k-means", n, "-", "-", "failed", "-", m.error[:80]))
            continue
        seconds, backend = m.result
        k = min(clusters, n)
        recipe_h = seconds / iters * (RECIPE["clusters"] / k) * RECIPE["iterations"] * RECIPE["runs"] / 3600
        rows.append(("k-means", n, f"{k} clusters, {iters} iterations", backend, f"{seconds:.3f}",
                     f"{m.added_mb:.0f}", f"{recipe_h:.2f} h (extrapolated)"))
    return rows
