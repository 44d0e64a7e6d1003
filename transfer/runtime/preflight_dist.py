"""The preflight's checks across processes: NCCL over the local GPUs, SyncBN against BN.

Each check spawns its processes through :func:`pretrain.common.distributed.launch` (as a run does); rank 0
writes what it found to a json file that the caller reads back.

- :func:`check_all_reduce`: every process (one per GPU with NCCL, or gloo processes on a CPU) all-reduces
  a tensor holding its rank + 1; the sum must be ``n (n + 1) / 2`` on every process. Then, on GPUs, a
  256 MB all-reduce timed a few times gives the bus bandwidth (NCCL's convention: ``2 (n - 1) / n`` x bytes
  / seconds).
- :func:`check_syncbn`: a global batch (seeded, the same on every process) is normalised by a plain
  ``BatchNorm2d`` on the whole batch and by the synchronised layer on each process's share; outputs, input
  gradients and the weight and bias gradients (summed over processes) must agree (largest difference
  relative to the reference's largest value), and for torch's
  ``SyncBatchNorm`` the running statistics too. On GPUs the layer is torch's ``SyncBatchNorm`` (NCCL); on a
  CPU, Detectron2's ``NaiveSyncBatchNorm`` (gloo), which is what CPU runs use instead.
"""
import json
import os
import tempfile
import time

import torch

__all__ = ["check_all_reduce", "check_syncbn"]

_BANDWIDTH_BYTES = 256 * 2**20


def _spawn(worker, num_processes, cuda, extra=()):
    from pretrain.common import distributed as du

    with tempfile.TemporaryDirectory(prefix="preflight_") as tmp:
        path = os.path.join(tmp, "result.json")
        du.launch(worker, args=(path, cuda, *extra), num_local=num_processes)
        if not os.path.isfile(path):
            raise RuntimeError("the processes ended without a result")
        with open(path) as f:
            return json.load(f)


def _join(info, cuda):
    """Join the group of the spawned processes; a single process makes a group of one (the collectives
    still run through the backend)."""
    import datetime

    import torch.distributed as dist

    from pretrain.common import distributed as du

    backend = "nccl" if cuda else "gloo"
    if info.world_size > 1:
        du.init_process_group(info, backend, use_cuda=cuda, timeout_minutes=3)
    else:
        if cuda:
            torch.cuda.set_device(0)
        dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{du.free_port()}", rank=0, world_size=1,
                                timeout=datetime.timedelta(minutes=3))
    return torch.device("cuda", info.local_rank) if cuda else torch.device("cpu")


def _all_reduce_worker(info, path, cuda):
    import torch.distributed as dist

    device = _join(info, cuda)
    n = info.world_size
    x = torch.full((1024,), float(info.rank + 1), device=device)
    dist.all_reduce(x)
    expected = n * (n + 1) / 2
    ok = bool(torch.all(x == expected))
    oks = [None] * n
    dist.all_gather_object(oks, ok)
    bandwidth = None
    if cuda:
        big = torch.ones(_BANDWIDTH_BYTES // 4, device=device)
        dist.all_reduce(big)
        torch.cuda.synchronize(device)
        times = []
        for _ in range(5):
            dist.barrier()
            start = time.perf_counter()
            dist.all_reduce(big)
            torch.cuda.synchronize(device)
            times.append(time.perf_counter() - start)
        best = min(times)
        bandwidth = 2 * (n - 1) / n * _BANDWIDTH_BYTES / best / 1e9 if n > 1 else None
    if info.rank == 0:
        with open(path, "w") as f:
            json.dump({"ok": all(oks), "processes": n, "expected": expected, "got": float(x[0]),
                       "bus_gb_s": bandwidth}, f)
    dist.barrier()
    dist.destroy_process_group()


def check_all_reduce(num_processes, cuda):
    """``{"ok", "processes", "expected", "got", "bus_gb_s"}`` of an all-reduce over ``num_processes``."""
    return _spawn(_all_reduce_worker, num_processes, cuda)


def _syncbn_worker(info, path, cuda, channels, per_process):
    import torch.distributed as dist
    from torch import nn

    device = _join(info, cuda)
    n = info.world_size
    g = torch.Generator().manual_seed(0)
    x = torch.randn(per_process * n, channels, 12, 12, generator=g) * 3 + 1
    weight_out = torch.randn(x.shape, generator=g)  # the loss: sum(output * weight_out)
    gamma, beta = torch.rand(channels, generator=g) + 0.5, torch.randn(channels, generator=g)

    def prepared(layer):
        with torch.no_grad():
            layer.weight.copy_(gamma)
            layer.bias.copy_(beta)
        return layer.to(device).train()

    ref = prepared(nn.BatchNorm2d(channels))
    xr = x.clone().to(device).requires_grad_(True)
    out_ref = ref(xr)
    (out_ref * weight_out.to(device)).sum().backward()

    if cuda:
        layer, torch_sync = prepared(nn.SyncBatchNorm(channels)), True
    else:
        from detectron2.layers import NaiveSyncBatchNorm

        layer, torch_sync = prepared(NaiveSyncBatchNorm(channels)), False
    share = slice(info.rank * per_process, (info.rank + 1) * per_process)
    xs = x[share].clone().to(device).requires_grad_(True)
    out = layer(xs)
    (out * weight_out[share].to(device)).sum().backward()
    grads = torch.cat([layer.weight.grad, layer.bias.grad])
    dist.all_reduce(grads)
    def rel(a, b):  # largest difference relative to the reference's largest magnitude
        a, b = a.detach().float(), b.detach().float()
        return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))

    diffs = {"output": rel(out, out_ref[share]), "input_grad": rel(xs.grad, xr.grad[share]),
             "weight_bias_grad": rel(grads, torch.cat([ref.weight.grad, ref.bias.grad]))}
    if torch_sync:
        diffs["running_stats"] = max(rel(layer.running_mean, ref.running_mean), rel(layer.running_var, ref.running_var))
    gathered = [None] * n
    dist.all_gather_object(gathered, diffs)
    if info.rank == 0:
        worst = {k: max(d[k] for d in gathered) for k in diffs}
        with open(path, "w") as f:
            json.dump({"processes": n, "layer": type(layer).__name__, "max_rel_diff": worst}, f)
    dist.barrier()
    dist.destroy_process_group()


def check_syncbn(num_processes, cuda, channels=16, per_process=4):
    """``{"processes", "layer", "max_rel_diff": {what: value}}`` of SyncBN against BN (see module docstring)."""
    return _spawn(_syncbn_worker, num_processes, cuda, (channels, per_process))
