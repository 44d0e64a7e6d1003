"""Processes: how many, which one am I, how to talk to the others.

Three ways to run, one code path (:func:`launch`):

- one process (default): no process group;
- ``--num-gpus N`` on one machine: :func:`launch` spawns N local workers (``torch.multiprocessing``), one
  per GPU, or N CPU processes with gloo when there is no GPU; on M machines, the same command on each
  (its machine rank and the rendezvous URL given) spawns its N workers of the M x N;
- several machines / a scheduler: the environment names every process. :func:`env_dist_info` reads
  torchrun's ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``, or, under SLURM
  (``srun``, submitit), ``SLURM_PROCID``, ``SLURM_NTASKS``, ``SLURM_LOCALID``, the first host of
  ``SLURM_JOB_NODELIST`` and a port derived from ``SLURM_JOB_ID``. Each such process runs one worker.

Backends: NCCL with CUDA, gloo on CPU (``DIST.BACKEND`` overrides). Collectives used by methods live
here too: :func:`all_gather_cat` and MoCo's shuffle BN (:func:`batch_shuffle` / :func:`batch_unshuffle`).
"""
import datetime
import os
import re
import socket

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "env_dist_info", "free_port", "launch", "leave_process_group", "init_process_group", "get_world_size",
           "get_rank", "is_main_process", "barrier", "all_gather_cat", "all_gather_object", "all_reduce_sum",
           "broadcast_object", "broadcast_tensors",
           "batch_shuffle", "batch_unshuffle", "first_slurm_host"]


class DistInfo:
    """Where this process sits: global rank and size, rank on its machine, rendezvous address.

    The processes meet at ``tcp://master_addr:master_port`` unless ``url`` names another rendezvous
    (any ``init_method`` of ``torch.distributed``, e.g. ``file:///shared/rendezvous``).
    """

    def __init__(self, rank=0, world_size=1, local_rank=0, local_size=1, master_addr="127.0.0.1",
                 master_port=None, source="single", url=None):
        self.rank, self.world_size = int(rank), int(world_size)
        self.local_rank, self.local_size = int(local_rank), int(local_size)
        self.master_addr, self.master_port = master_addr, master_port
        self.source = source
        self.url = url

    @property
    def init_method(self):
        """The rendezvous URL for ``torch.distributed.init_process_group``."""
        return self.url or f"tcp://{self.master_addr}:{self.master_port}"

    def __repr__(self):
        return (f"DistInfo(rank={self.rank}/{self.world_size}, local={self.local_rank}/{self.local_size}, "
                f"master={self.init_method}, from={self.source})")


def first_slurm_host(nodelist):
    """First host of a SLURM node list: ``"gpu[012-015,020],cpu1"`` -> ``"gpu012"``."""
    m = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if not m:
        raise ValueError(f"cannot parse SLURM node list {nodelist!r}")
    prefix, ranges = m.group(1), m.group(2)
    if not ranges:
        return prefix
    first = ranges.split(",")[0].split("-")[0]
    return prefix + first


def env_dist_info(environ=None):
    """A :class:`DistInfo` from torchrun/SLURM/submitit variables, or None when they name one process."""
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" in env and "RANK" in env:
        world = int(env["WORLD_SIZE"])
        if world <= 1:
            return None
        return DistInfo(env["RANK"], world, env.get("LOCAL_RANK", 0), env.get("LOCAL_WORLD_SIZE", 1),
                        env.get("MASTER_ADDR", "127.0.0.1"), int(env.get("MASTER_PORT", 29500)), "env")
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        world = int(env["SLURM_NTASKS"])
        if world <= 1:
            return None
        addr = env.get("MASTER_ADDR") or first_slurm_host(
            env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST") or "127.0.0.1")
        port = int(env.get("MASTER_PORT") or 20000 + int(env.get("SLURM_JOB_ID", "0")) % 20000)
        per_node = env.get("SLURM_NTASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE") or "1"  # "8" or "8(x2)"
        local_size = int(re.match(r"\d+", per_node).group()) if re.match(r"\d+", per_node) else 1
        return DistInfo(env["SLURM_PROCID"], world, env.get("SLURM_LOCALID", 0), local_size, addr, port, "slurm")
    return None


def free_port():
    """A TCP port that is free on this machine now (for a rendezvous of local processes)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _backend(name, use_cuda):
    if name == "auto":
        return "nccl" if use_cuda else "gloo"
    return name


def init_process_group(info, backend="auto", use_cuda=False, timeout_minutes=30):
    """Join the group described by ``info`` (no-op for one process); pins the local GPU."""
    if use_cuda:
        torch.cuda.set_device(info.local_rank % max(1, torch.cuda.device_count()))
    if info.world_size <= 1 or (dist.is_available() and dist.is_initialized()):
        return
    dist.init_process_group(
        backend=_backend(backend, use_cuda), init_method=info.init_method,
        rank=info.rank, world_size=info.world_size, timeout=datetime.timedelta(minutes=timeout_minutes))


def _spawned(local_rank, fn, machine, args):
    num_local, num_machines, machine_rank, url = machine
    info = DistInfo(machine_rank * num_local + local_rank, num_machines * num_local, local_rank, num_local,
                    source="spawn", url=url)
    fn(info, *args)
    leave_process_group()


def leave_process_group():
    """Wait for every process, then close this one's connections. A process that exits while another still
    holds a connection to it can make that one abort at its own exit (gloo: "terminate called without an
    active exception"), after its work is done."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def launch(fn, args=(), num_local=1, info=None, num_machines=1, machine_rank=0, url=None):
    """Run ``fn(info, *args)`` in every process of the job.

    ``info`` given (from :func:`env_dist_info`): this process is one worker of an external launch; runs
    ``fn`` here. Otherwise this machine spawns ``num_local`` workers, ranks ``machine_rank * num_local``
    onwards of ``num_machines * num_local``, and waits for them; they meet at ``url`` (required for more
    than one machine; default: a free port on this machine). A job of one process runs ``fn`` here.
    """
    if info is not None:
        return fn(info, *args)
    if num_local * num_machines <= 1:
        return fn(DistInfo(), *args)
    if url is None:
        if num_machines > 1:
            raise ValueError("processes on several machines need a rendezvous URL (tcp://HOST:PORT of rank 0)")
        url = f"tcp://127.0.0.1:{free_port()}"
    import logging

    import torch.multiprocessing as mp

    # a failing worker prints its own error; torch's "terminating process ..." notice adds nothing
    logging.getLogger("torch.multiprocessing.spawn").setLevel(logging.ERROR)
    mp.start_processes(_spawned, args=(fn, (num_local, num_machines, machine_rank, url), args), nprocs=num_local,
                       join=True, start_method="spawn")
    return None


def get_world_size():
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def get_rank():
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main_process():
    return get_rank() == 0


def barrier():
    if get_world_size() > 1:
        dist.barrier()


@torch.no_grad()
def all_gather_cat(x):
    """Concatenate ``x`` (same shape on every process) over processes along dim 0, in rank order."""
    world = get_world_size()
    if world == 1:
        return x
    x = x.contiguous()
    out = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(out, x)
    return torch.cat(out, dim=0)


def all_gather_object(obj):
    world = get_world_size()
    if world == 1:
        return [obj]
    out = [None] * world
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, src=0):
    """``obj`` of process ``src`` on every process."""
    if get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


@torch.no_grad()
def broadcast_tensors(tensors, src=0):
    """Overwrite ``tensors`` (e.g. a module's parameters and buffers) with those of process ``src``."""
    if get_world_size() == 1:
        return
    for t in tensors:
        if t.is_contiguous():
            dist.broadcast(t, src=src)
        else:
            tmp = t.contiguous()
            dist.broadcast(tmp, src=src)
            t.copy_(tmp)


def all_reduce_sum(x):
    if get_world_size() > 1:
        dist.all_reduce(x)
    return x


@torch.no_grad()
def batch_shuffle(x):
    """MoCo's shuffle BN, first half: gather the batches of all processes, permute them with a
    permutation drawn on rank 0, and give each process its slice. Returns (local shuffled batch,
    ``idx_unshuffle`` for :func:`batch_unshuffle`)."""
    local = x.shape[0]
    gathered = all_gather_cat(x)
    world = get_world_size()
    idx_shuffle = torch.randperm(gathered.shape[0], device=x.device)
    if world > 1:
        dist.broadcast(idx_shuffle, src=0)
    idx_unshuffle = torch.argsort(idx_shuffle)
    mine = idx_shuffle.view(world, local)[get_rank()]
    return gathered[mine], idx_unshuffle


@torch.no_grad()
def batch_unshuffle(y, idx_unshuffle):
    """Second half: gather the outputs and take back, in order, the rows of this process's own samples."""
    local = y.shape[0]
    gathered = all_gather_cat(y)
    mine = idx_unshuffle.view(get_world_size(), local)[get_rank()]
    return gathered[mine]
