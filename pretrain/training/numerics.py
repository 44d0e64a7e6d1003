"""Precision and memory layout of the training step, chosen by timing them on this machine.

``MODEL.PRECISION auto`` and ``MODEL.CHANNELS_LAST auto`` (the defaults) do not trust a CPU flag: what is
fastest differs between CPUs (bf16 wins where the CPU computes it natively, fp32 channels_last can lose to
plain NCHW), so the first run of a shape on a machine times a few training steps of each candidate and keeps
the fastest. The result is cached per machine and shape; later runs read it and time nothing.

Candidates:

- precision: on a CPU fp32, plus bf16 when oneDNN has AVX-512 kernels for it (``AVX512`` or better in
  ``torch.backends.cpu.get_cpu_capability()``; on AVX2 it runs reference kernels, many times slower) and the
  inputs are at least :data:`~pretrain.training.solver.CPU_BF16_MIN_INPUT` px. On a GPU precision is not timed:
  bf16 on Ampere and newer, fp16 with loss scaling before (the rule of
  :func:`~pretrain.training.solver.resolve_precision`). An explicit ``fp32`` / ``bf16`` / ``fp16`` is used as is.
- layout: NCHW and channels_last, unless ``MODEL.CHANNELS_LAST`` is True or False.

What is timed: the method's encoder architecture (``MODEL.ARCH``, ``MODEL.HEAD``) at the view size and the
per-process batch (at most :data:`MAX_BATCH` images): uint8 input normalised on the device, forward, backward,
fused SGD step, and for momentum-encoder methods a second forward without gradients (the key encoder).
Each candidate runs :data:`WARMUP` step(s), then :data:`ROUNDS` interleaved rounds; its best round counts.
The reference is plain fp32 NCHW: another candidate is taken only when it is more than :data:`MARGIN`
faster than every candidate preferred to it (fp32 before bf16, NCHW before channels_last), so noise never
trades exactness or the plain layout for nothing. Losses of bf16 stay within the tolerance that
``tests/pretrain/training/test_numerics.py`` checks against fp32 (the loss, logits, queue and weights stay fp32).

Cache: one small json file per (machine, shape) in ``$SSL_D2_TRANSFER_CACHE/numerics`` (``none`` turns the
cache off), else ``$XDG_CACHE_HOME/ssl-d2-transfer/numerics``, else ``~/.cache/ssl-d2-transfer/numerics``.
The machine is the CPU model and capability, the number of threads, the GPU model, and torch's version; the
shape is the architecture, head, input size, batch and candidates. The first writer of an entry wins, so
processes that time the same shape at once all end up with one choice. A resumed run keeps the choice its
checkpoint recorded. With several processes, rank 0 decides and the others follow.
"""
import contextlib
import copy
import hashlib
import json
import os
import platform
import tempfile
import time

import torch

__all__ = ["VERSION", "MAX_BATCH", "WARMUP", "ROUNDS", "MARGIN", "cache_dir", "candidates", "machine",
           "time_candidates", "pick", "choose"]

VERSION = 1
MAX_BATCH = 32
WARMUP = 1
ROUNDS = 3
MARGIN = 0.03
_PREFERENCE = ("fp32", "bf16", "fp16")  # then NCHW before channels_last


def cache_dir():
    """The numerics cache folder, or None when ``$SSL_D2_TRANSFER_CACHE`` is ``none``."""
    configured = os.environ.get("SSL_D2_TRANSFER_CACHE")
    if configured:
        return None if configured.lower() == "none" else os.path.join(os.path.expanduser(configured), "numerics")
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "ssl-d2-transfer", "numerics")


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device):
    """What the timings depend on, besides the shape."""
    info = {"torch": torch.__version__, "device": device.type, "cpu": _cpu_model(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads()}
    if device.type == "cuda":
        info.update(gpu=torch.cuda.get_device_name(device), capability=list(torch.cuda.get_device_capability(device)),
                    cudnn=torch.backends.cudnn.version())
    return info


def _cpu_bf16_kernels():
    return torch.backends.cpu.get_cpu_capability() not in ("DEFAULT", "NO AVX", "AVX2", "ZVECTOR", "VSX")


def candidates(precision, channels_last, device, min_input):
    """``[(precision, channels_last), ...]`` allowed by the config, in order of preference."""
    from pretrain.training.solver import CPU_BF16_MIN_INPUT, resolve_precision

    if precision != "auto":
        precisions = [precision]
    elif device.type == "cuda":
        precisions = [resolve_precision("auto", device, min_input)]
    else:
        precisions = ["fp32"] + (["bf16"] if min_input >= CPU_BF16_MIN_INPUT and _cpu_bf16_kernels() else [])
    layouts = [False, True] if channels_last == "auto" else [bool(channels_last)]
    return [(p, cl) for p in precisions for cl in layouts]


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _ProxyStep:
    """One training step of a fresh encoder in one numeric setting (see the module docstring)."""

    def __init__(self, encoder, precision, channels_last, batch, size, device, key_forward, generator):
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.encoder = copy.deepcopy(encoder).to(device).to(memory_format=fmt).train()
        self.key = copy.deepcopy(encoder).to(device).to(memory_format=fmt).train() if key_forward else None
        if self.key is not None:
            self.key.requires_grad_(False)
        self.optimizer = torch.optim.SGD(self.encoder.parameters(), lr=1e-4, momentum=0.9, weight_decay=1e-4,
                                         **_fused_kwargs())
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
        self.fmt, self.device = fmt, device
        self.x = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=generator).to(device)

    def _input(self):
        x = (self.x.float() - 114.0) / 58.0
        return x.contiguous(memory_format=self.fmt)

    def __call__(self):
        dev = self.device.type
        with torch.autocast(dev, dtype=self.dtype or torch.float32, enabled=self.dtype is not None):
            q = self.encoder(self._input())
            if self.key is not None:
                with torch.no_grad():
                    k = self.key(self._input())
                q = q + k.detach()
        loss = q.float().square().mean()
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()


def _fused_kwargs():
    from pretrain.training.solver import fused_kwargs

    return fused_kwargs()


def time_candidates(arch, head, dim, size, batch, device, cands, key_forward=True, rounds=ROUNDS, warmup=WARMUP):
    """Best seconds per step of each candidate (see the module docstring); the caller's RNG is untouched."""
    from pretrain.backbones import build_encoder

    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(0)
        encoder = build_encoder(arch, head, dim)
        g = torch.Generator().manual_seed(0)
        steps = {c: _ProxyStep(encoder, c[0], c[1], min(batch, MAX_BATCH), size, device, key_forward, g)
                 for c in cands}
        for step in steps.values():
            for _ in range(warmup):
                step()
        best = {c: float("inf") for c in cands}
        for _ in range(rounds):
            for c, step in steps.items():
                _sync(device)
                start = time.perf_counter()
                step()
                _sync(device)
                best[c] = min(best[c], time.perf_counter() - start)
    return best


def pick(seconds, margin=MARGIN):
    """The candidate to use: the most preferred one within ``margin`` of the fastest, where a candidate
    must beat every one preferred to it by more than ``margin`` to be taken (module docstring)."""
    order = sorted(seconds, key=lambda c: (_PREFERENCE.index(c[0]), c[1]))
    choice = order[0]
    for c in order[1:]:
        if seconds[c] < seconds[choice] * (1.0 - margin):
            choice = c
    return choice


def _entry_path(key):
    folder = cache_dir()
    return None if folder is None else os.path.join(folder, key[:40] + ".json")


def _read(path, key):
    try:
        with open(path) as f:
            entry = json.load(f)
        if entry.get("key") == key:
            p, cl = entry["choice"]
            if p in _PREFERENCE and isinstance(cl, bool):
                return (p, cl), entry
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        pass
    return None, None


def _write_once(path, entry):
    """Write ``entry`` unless the file exists (first writer wins); True if this call wrote it. The file
    appears whole: written under a temporary name, then hard-linked to ``path``, which fails if it exists."""
    tmp = None
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".numerics.", suffix=".tmp", dir=os.path.dirname(path))
        with os.fdopen(fd, "w") as f:
            json.dump(entry, f)
        os.chmod(tmp, 0o644)
        os.link(tmp, path)
        return True
    except OSError:
        return False  # written by another process first, or a read-only cache (timed again next time)
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def choose(arch, head, dim, size, batch, device, precision="auto", channels_last="auto", min_input=None,
           key_forward=True, log=None):
    """``(precision, channels_last, how)`` for a run of this shape on this machine; ``how`` says whether the
    choice was given, read from the cache or timed now (with the seconds per step)."""
    min_input = size if min_input is None else min_input
    cands = candidates(precision, channels_last, device, min_input)
    if len(cands) == 1:
        return cands[0][0], cands[0][1], "configured"
    shape = {"arch": arch, "head": head, "dim": int(dim), "size": int(size), "batch": min(int(batch), MAX_BATCH),
             "candidates": [list(c) for c in cands], "key_forward": bool(key_forward)}
    key = hashlib.sha256(json.dumps({"version": VERSION, "machine": machine(device), "shape": shape},
                                    sort_keys=True).encode()).hexdigest()
    path = _entry_path(key)
    damaged = False
    if path is not None:
        choice, entry = _read(path, key)
        if choice is not None:
            return choice[0], choice[1], f"cached in {path}"
        damaged = os.path.exists(path)
    if log is not None:
        log(f"timing {len(cands)} precision/layout settings of {arch} at {size} px, batch {shape['batch']} "
            "(once per machine and shape)")
    seconds = time_candidates(arch, head, dim, size, batch, device, cands, key_forward)
    choice = pick(seconds)
    timings = ", ".join(f"{p}{' channels_last' if cl else ' NCHW'} {s * 1000:.0f} ms" for (p, cl), s in seconds.items())
    if path is not None:
        entry = {"key": key, "choice": list(choice), "machine": machine(device), "shape": shape,
                 "seconds": [[p, cl, s] for (p, cl), s in seconds.items()], "written": time.time()}
        if damaged:  # unreadable or not this key's: replaced
            with contextlib.suppress(OSError):
                os.unlink(path)
        if not _write_once(path, entry):
            stored, _ = _read(path, key)
            if stored is not None and stored != choice:
                return stored[0], stored[1], f"cached in {path} by a concurrent run (timed here: {timings})"
    return choice[0], choice[1], f"timed now: {timings}"
