#!/usr/bin/env python
"""Seconds per call of pretrain.methods.neighbours' search and k-means, FAISS vs torch, and how well the two agree.

    python tools/bench_neighbours.py [--sizes 10000 100000 1280000] [--device cpu|cuda] [--repeats 3] [--quick]
                                     [--queries 256] [--dim 128] [--k 4096] [--clusters 300 3000] [--iters 20]
                                     [--threads N]

Data: seeded Gaussian rows, L2-normalised (a memory bank of unit embeddings); queries likewise.

- ``search``: ``--queries`` x ``--dim`` queries against each bank of N (``--sizes``) rows, the ``--k`` largest
  inner products. Agreement: the fraction of queries whose top-k index *sets* are identical in both backends,
  and how many of all Q x k neighbours differ (float rounding can swap neighbours at the k-th similarity).
- ``kmeans``: Lloyd's k-means, ``--iters`` iterations, for each ``--clusters`` k on the banks with
  N <= 100000 (larger banks: minutes per call on a CPU). Agreement: the final inertia of each backend, the
  sum of squared distances of all N points to their assigned centroids, computed here from the returned
  assignments and centroids (FAISS trains on a subsample when N > 256 k; the inertia is on all points).
  FAISS stops early once an iteration leaves the objective unchanged (a fixed point of Lloyd's
  iteration); the torch backend always runs all iterations, so where FAISS converges early (few points
  per cluster) its time covers fewer iterations.

Timing: one warm-up call (k-means: the same shapes with one iteration), then the median of ``--repeats``
calls; on CUDA each call is synchronised. ``--quick``: N = 10000 only, one repeat (~30 s on two
CPU cores).
"""
import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pretrain.methods import neighbours  # noqa: E402
from pretrain.bench import format_table  # noqa: E402

DEFAULT_SIZES = (10_000, 100_000, 1_280_000)
QUICK_SIZES = (10_000,)
KMEANS_MAX_N = 100_000
HEADERS = ("op", "N", "k", "backend", "s/call", "agreement")


def unit_rows(n, dim, seed, device):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g)
    return torch.nn.functional.normalize(x, dim=1).to(device)


def timed(fn, repeats, device, warmup=None):
    """``(median seconds, last result)`` of ``repeats`` calls of ``fn`` after one call of ``warmup`` (or fn)."""
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    (warmup or fn)()
    sync()
    times, out = [], None
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        out = fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def inertia(x, assign, centroids, chunk=65536):
    total = 0.0
    for s in range(0, x.shape[0], chunk):
        d = x[s:s + chunk].float() - centroids[assign[s:s + chunk]].float()
        total += float((d * d).sum())
    return total


def backend_label(backend, device):
    if backend == "faiss":
        return "faiss-gpu" if neighbours._faiss_gpu(device) else "faiss-cpu"
    return f"torch-{device.type}"


def bench_search(sizes, backends, device, queries=256, dim=128, k=4096, repeats=3):
    q = unit_rows(queries, dim, seed=1, device=device)
    rows = []
    for n in sizes:
        base = unit_rows(n, dim, seed=2, device=device)
        kk = min(k, n)
        results = {}
        for backend in backends:
            sec, (_, idx) = timed(lambda: neighbours.search(q, base, kk, backend=backend), repeats, device)
            results[backend] = (sec, idx.cpu())
        ref = results[backends[0]][1].sort(dim=1).values
        for backend in backends:
            sec, idx = results[backend]
            if backend == backends[0]:
                note = "reference"
            else:
                other = idx.sort(dim=1).values
                same = int((other == ref).all(dim=1).sum())
                missing = sum(kk - len(set(a.tolist()) & set(b.tolist())) for a, b in zip(ref, other))
                note = (f"identical sets {same}/{len(ref)} = {same / len(ref):.3f}, "
                        f"neighbours differing {missing}/{kk * len(ref)}")
            rows.append(("search", n, kk, backend_label(backend, device), f"{sec:.4f}", note))
    return rows


def bench_kmeans(sizes, clusters, backends, device, dim=128, niter=20, repeats=3):
    rows = []
    for n in sizes:
        x = unit_rows(n, dim, seed=3, device=device)
        for k in clusters:
            if k > n:
                continue
            results = {}
            for backend in backends:
                sec, (assign, cent) = timed(lambda: neighbours.kmeans(x, k, seed=0, niter=niter, backend=backend),
                                            repeats, device,
                                            warmup=lambda: neighbours.kmeans(x, k, seed=0, niter=1, backend=backend))
                results[backend] = (sec, inertia(x, assign, cent))
            ref = results[backends[0]][1]
            for backend in backends:
                sec, value = results[backend]
                note = f"inertia {value:.2f}"
                if backend != backends[0]:
                    note += f" ({100 * (value - ref) / ref:+.2f}% vs {backends[0]})"
                rows.append(("kmeans", n, k, backend_label(backend, device), f"{sec:.4f}", note))
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(prog="bench_neighbours", description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=None, help="bank sizes N (default: 10k 100k 1.28M)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per cell, median reported (default 3)")
    parser.add_argument("--quick", action="store_true", help="small banks and one repeat (~30 s on 2 CPU cores)")
    parser.add_argument("--queries", type=int, default=256)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--k", type=int, default=4096, help="neighbours per query")
    parser.add_argument("--clusters", type=int, nargs="+", default=[300, 3000], help="k-means k")
    parser.add_argument("--iters", type=int, default=20, help="k-means iterations")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads of torch and FAISS (default: theirs)")
    args = parser.parse_args(argv)

    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    device = torch.device(args.device)
    sizes = args.sizes or (QUICK_SIZES if args.quick else DEFAULT_SIZES)
    repeats = args.repeats or (1 if args.quick else 3)
    backends = ["torch"] + (["faiss"] if neighbours.have_faiss() else [])
    if args.threads > 0:
        torch.set_num_threads(args.threads)
        if neighbours.have_faiss():
            import faiss

            faiss.omp_set_num_threads(args.threads)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}")
    if neighbours.have_faiss():
        import faiss

        print(f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads, GPU index: "
              f"{neighbours._faiss_gpu(device)}")
    else:
        print("faiss: not installed (pip install faiss-cpu); torch rows only")
    print(f"queries {args.queries} x {args.dim}-d, k {args.k}; k-means {args.iters} iterations; "
          f"median of {repeats} after a warm-up\n")

    rows = bench_search(sizes, backends, device, args.queries, args.dim, args.k, repeats)
    km_sizes = [n for n in sizes if n <= KMEANS_MAX_N]
    rows += bench_kmeans(km_sizes, args.clusters, backends, device, args.dim, args.iters, repeats)
    print(format_table(HEADERS, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
