"""Throughput of pretraining: the full MoCo training step and the data pipeline, ours and lightly's.

- :func:`bench_step`: images/s of one training step exactly as the train loop runs it
  (:func:`pretrain.training.trainer.train_step`: uint8 -> normalised input, query forward and backward, key
  forward, optimizer step, fused momentum update, enqueue) for MoCo v2 (MLP head, t 0.2) at a given
  arch / input size / batch / queue length, in fp32 NCHW, fp32 channels_last and our default numerics
  (``MODEL.PRECISION auto`` + ``MODEL.CHANNELS_LAST auto``: the choice :mod:`pretrain.training.numerics`
  timed and cached for this machine and shape); and, when the ``lightly`` package is installed, the same step
  written with lightly's MoCo building blocks as its documentation does (``MoCoProjectionHead``,
  ``NTXentLoss(memory_bank_size=...)``, ``update_momentum``; fp32, NCHW, float inputs).
- :func:`bench_data`: images/s of one loader worker (a single process: decode + views of a sample) for
  our ``moco_v2`` and ``infomin`` (+ JigSaw) view pipelines on both backends (``INPUT.VIEW_BACKEND`` fast
  and pil) and lightly's ``MoCoV2Transform`` (the same "aug+" recipe: crop scale 0.2-1, jitter
  0.4/0.4/0.4/0.1 with p 0.8, grayscale 0.2, blur sigma 0.1-2 with p 0.5, flip), decoded as torchvision's
  ImageFolder decodes (PIL, full size).
- :func:`bench_loop`: whole training processes, loader workers included: the project's trainer and
  lightly's documented MoCo loop (torchvision ImageFolder + ``MoCoV2Transform`` + DataLoader + the step).

Configurations are timed in interleaved rounds and the best round is kept, so that a noisy shared machine
disturbs every configuration alike.
"""
import copy
import os
import time

import torch
from torch import nn

from pretrain.common.paths import CONFIGS_DIR

__all__ = ["lightly_available", "bench_step", "bench_data", "format_table"]


def lightly_available():
    try:
        import lightly  # noqa: F401

        return getattr(lightly, "__version__", "?")
    except Exception:  # noqa: BLE001 - any import failure means "not usable here"
        return None


def _moco_cfg(arch, size, batch, queue, precision, channels_last, views="moco_v2"):
    from pretrain.config import load_config

    name = "infomin_R_50" if views == "infomin" else "moco_v2_R_50"
    return load_config(os.path.join(CONFIGS_DIR,
                                    "pretrain", f"{name}.yaml"),
                       ["MODEL.ARCH", arch, "INPUT.SIZE", size, "SOLVER.BATCH_SIZE", batch, "MOCO.K", queue,
                        "MODEL.PRECISION", precision, "MODEL.CHANNELS_LAST", channels_last])


class _OursStep:
    def __init__(self, arch, size, batch, queue, precision, channels_last, device):
        from pretrain.methods import build_method
        from pretrain.training.solver import autocast_dtype, build_optimizer, resolve_precision
        from pretrain.training.trainer import train_step

        from pretrain.training.numerics import choose

        cfg = _moco_cfg(arch, size, batch, queue, precision, channels_last)
        precision, channels_last, self.how = choose(arch, cfg.MODEL.HEAD, cfg.MODEL.DIM, size, batch, device,
                                                    precision, channels_last)
        torch.manual_seed(0)
        self.method = build_method(cfg).to(device)
        self.method.channels_last = channels_last
        if channels_last:
            self.method.to(memory_format=torch.channels_last)
        self.method.train()
        self.channels_last = channels_last
        self.precision = resolve_precision(precision, device, size)
        self.dtype = autocast_dtype(self.precision)
        self.optimizer = build_optimizer(cfg, self.method.trainable_parameters())
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.precision == "fp16")
        self.device = device
        g = torch.Generator().manual_seed(1)
        self.batch = {k: torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=g).to(device)
                      for k in ("view1", "view2")}
        self._step = train_step
        self.it = 0

    def __call__(self):
        self._step(self.method, self.method, self.optimizer, self.scaler, self.batch, self.it, self.dtype,
                   self.device.type)
        self.it += 1


class _LightlyStep:
    """MoCo v2 with lightly's building blocks, as lightly's MoCo example writes it (fp32, NCHW)."""

    def __init__(self, arch, size, batch, queue, device, precision="fp32", channels_last=False):
        import torchvision
        from lightly.loss import NTXentLoss
        from lightly.models.modules import MoCoProjectionHead
        from lightly.models.utils import deactivate_requires_grad, update_momentum

        torch.manual_seed(0)
        resnet = torchvision.models.__dict__[arch]()
        dim = resnet.fc.in_features
        model = nn.Module()
        model.backbone = nn.Sequential(*list(resnet.children())[:-1])
        model.projection_head = MoCoProjectionHead(dim, dim, 128)
        model.backbone_momentum = copy.deepcopy(model.backbone)
        model.projection_head_momentum = copy.deepcopy(model.projection_head)
        deactivate_requires_grad(model.backbone_momentum)
        deactivate_requires_grad(model.projection_head_momentum)
        model.to(device)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        model.to(memory_format=self.memory_format)
        self.model = model
        self.criterion = NTXentLoss(temperature=0.2, memory_bank_size=(queue, 128))
        self.optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.03,
                                         momentum=0.9, weight_decay=1e-4)
        self.update_momentum = update_momentum
        self.dtype = torch.bfloat16 if precision == "bf16" else None
        self.device = device
        g = torch.Generator().manual_seed(1)
        fmt = self.memory_format
        self.x_query = torch.randn(batch, 3, size, size, generator=g).to(device).contiguous(memory_format=fmt)
        self.x_key = torch.randn(batch, 3, size, size, generator=g).to(device).contiguous(memory_format=fmt)

    def __call__(self, x_query=None, x_key=None):
        m = self.model
        x_query = self.x_query if x_query is None else x_query.to(self.device)
        x_key = self.x_key if x_key is None else x_key.to(self.device)
        self.update_momentum(m.backbone, m.backbone_momentum, m=0.999)
        self.update_momentum(m.projection_head, m.projection_head_momentum, m=0.999)
        with torch.autocast(self.device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None):
            query = m.projection_head(m.backbone(x_query).flatten(start_dim=1))
            key = m.projection_head_momentum(m.backbone_momentum(x_key).flatten(start_dim=1)).detach()
        loss = self.criterion(query.float(), key.float())
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad()
        return loss


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_rounds(fns, iters, warmup, rounds, device):
    """Best seconds per call of each fn, over ``rounds`` interleaved rounds of ``iters`` calls."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    _sync(device)
    best = {name: float("inf") for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            _sync(device)
            start = time.perf_counter()
            for _ in range(iters):
                fn()
            _sync(device)
            best[name] = min(best[name], (time.perf_counter() - start) / iters)
    return best


def bench_step(arch="resnet18", size=64, batch=32, queue=4096, device="cpu", iters=3, warmup=1, rounds=3,
               lightly=True, lightly_bf16=False):
    """Rows ``(name, precision, memory format, images/s, x vs lightly fp32)`` of the full training step."""
    device = torch.device(device)
    fns, meta = {}, {}
    ours = {"ours fp32": ("fp32", False), "ours fp32 channels_last": ("fp32", True),
            "ours default (timed choice)": ("auto", "auto")}
    for name, (precision, cl) in ours.items():
        step = _OursStep(arch, size, batch, queue, precision, cl, device)
        fns[name] = step
        meta[name] = (step.precision, "channels_last" if step.channels_last else "NCHW")
    if lightly and lightly_available():
        fns["lightly (documented, fp32)"] = _LightlyStep(arch, size, batch, queue, device)
        meta["lightly (documented, fp32)"] = ("fp32", "NCHW")
        if lightly_bf16:
            fns["lightly + bf16 + channels_last"] = _LightlyStep(arch, size, batch, queue, device, "bf16", True)
            meta["lightly + bf16 + channels_last"] = ("bf16", "channels_last")
    best = _time_rounds(fns, iters, warmup, rounds, device)
    ref = best.get("lightly (documented, fp32)")
    rows = []
    for name in fns:
        ips = batch / best[name]
        ratio = f"{ref / best[name]:.2f}x" if ref else "-"
        rows.append((name, meta[name][0], meta[name][1], f"{ips:.1f}", ratio))
    return rows


def bench_data(root, size=224, num_images=64, rounds=2, lightly=True, draft=True):
    """Rows ``(pipeline, output, images/s per worker, x vs lightly)``: one process decoding and augmenting samples of the
    ImageFolder ``root`` (a ``train``-style folder of class folders)."""
    from pretrain.data.images import ImageFolder, load_image, scan_folder
    from pretrain.data.views import build_views

    _, samples = scan_folder(root)
    n = min(num_images, len(samples))
    pipelines = {}
    for views in ("moco_v2", "infomin"):
        cfg = _moco_cfg("resnet50", size, 256, 65536, "auto", True, views=views)
        for backend in ("fast", "pil"):
            ds = ImageFolder(root, build_views(cfg, backend=backend), seed=0, draft=draft)
            label = f"ours {'moco_v2' if views == 'moco_v2' else 'infomin + JigSaw'} ({backend})"
            pipelines[label] = (lambda ds=ds: [ds[(i, 0)] for i in range(n)], "uint8, 2 views" +
                                (" + 9 tiles" if views == "infomin" else ""))
    if lightly and lightly_available():
        from lightly.transforms import MoCoV2Transform

        transform = MoCoV2Transform(input_size=size)
        paths = [p for p, _ in samples[:n]]
        pipelines["lightly MoCoV2Transform"] = (lambda: [transform(load_image(p)) for p in paths],
                                                "float32 normalised, 2 views")
    best = {name: float("inf") for name in pipelines}
    for fn, _ in pipelines.values():  # warm the page cache and lazy imports
        fn()
    for _ in range(rounds):
        for name, (fn, _) in pipelines.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    ref = best.get("lightly MoCoV2Transform")
    return [(name, out, f"{n / best[name]:.1f}", f"{ref / best[name]:.2f}x" if ref else "-")
            for name, (_, out) in pipelines.items()]


def _lightly_loop(root, arch, size, batch, queue, workers, warmup, iters, device="cpu"):
    """lightly's documented MoCo loop (torchvision ImageFolder + ``MoCoV2Transform`` + DataLoader, the step of
    :class:`_LightlyStep`): images/s over ``iters`` batches after ``warmup`` batches."""
    import torchvision
    from lightly.transforms import MoCoV2Transform
    from torch.utils.data import DataLoader

    step = _LightlyStep(arch, size, batch, queue, torch.device(device))
    dataset = torchvision.datasets.ImageFolder(root, transform=MoCoV2Transform(input_size=size))
    loader = DataLoader(dataset, batch_size=batch, shuffle=True, drop_last=True, num_workers=workers,
                        persistent_workers=workers > 0)
    done, start = 0, None
    while True:
        for (x_query, x_key), _ in loader:
            step(x_query, x_key)
            done += 1
            if done == warmup:
                _sync(step.device)
                start = time.perf_counter()
            elif done == warmup + iters:
                _sync(step.device)
                return iters * batch / (time.perf_counter() - start)


def _ours_loop(root, arch, size, batch, queue, workers, warmup, iters, device="cpu", overrides=()):
    """The project's own training loop (``tools/pretrain_backbone.py``'s Trainer, MoCo v2 recipe): images/s
    over ``iters`` iterations after ``warmup``, as its metrics log reports them (checkpoints excluded)."""
    import json
    import shutil
    import tempfile

    from pretrain.common.distributed import DistInfo
    from pretrain.training.train import run
    out = tempfile.mkdtemp(prefix="bench_loop_")
    cfg = _moco_cfg(arch, size, batch, queue, "auto", "auto")
    cfg.merge_from_list(["DEVICE", device, "DATA.ROOT", os.path.dirname(root), "DATA.TRAIN_DIR", os.path.basename(root),
                         "DATA.NUM_WORKERS", workers, "SOLVER.MAX_ITER", warmup + iters, "LOG_PERIOD", warmup,
                         "KNN.PERIOD", 0, "TENSORBOARD", False, "OUTPUT_DIR", out, "SEED", 0] + list(overrides))
    try:
        run(cfg, dist_info=DistInfo())
        with open(os.path.join(out, "metrics.jsonl")) as f:
            records = [json.loads(line) for line in f if line.strip()]
    finally:
        shutil.rmtree(out, ignore_errors=True)
    logged = sorted((r for r in records if "images_per_sec" in r), key=lambda r: r["iter"])
    windows = [(r["iter"] - p["iter"], r["time"]) for p, r in zip(logged, logged[1:]) if p["iter"] >= warmup]
    return sum(n for n, _ in windows) * batch / sum(n * t for n, t in windows)


def bench_loop(root, arch="resnet18", size=64, batch=32, queue=4096, workers=1, warmup=10, iters=30, rounds=1,
               lightly=True, device="cpu", overrides=()):
    """Rows ``(loop, images/s, x vs lightly)``: whole training processes (data loader with ``workers``
    workers, decode, views, step), each in a fresh Python process, alternating, best of ``rounds``."""
    import json
    import subprocess
    import sys

    kinds = ["ours"] + (["lightly"] if lightly and lightly_available() else [])
    best = {k: 0.0 for k in kinds}
    code = ("import sys, json; from pretrain import bench; "
            "print('IPS', bench._{}_loop(*json.loads(sys.argv[1])))")
    for _ in range(rounds):
        for kind in kinds:
            args = [root, arch, size, batch, queue, workers, warmup, iters, device]
            args += [list(overrides)] if kind == "ours" else []
            res = subprocess.run([sys.executable, "-c", code.format(kind), json.dumps(args)], capture_output=True,
                                 text=True, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
            lines = [line for line in res.stdout.splitlines() if line.startswith("IPS ")]
            if res.returncode or not lines:
                raise RuntimeError(f"{kind} loop failed: {res.stderr.strip().splitlines()[-1:]}")
            best[kind] = max(best[kind], float(lines[-1].split()[1]))
    ref = best.get("lightly")
    return [(k, f"{v:.1f}", f"{v / ref:.2f}x" if ref else "-") for k, v in best.items()]


def format_table(headers, rows):
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [line.format(*headers), line.format(*("-" * w for w in widths))]
    out += [line.format(*map(str, r)) for r in rows]
    return "\n".join(out)
