"""Throughput of pretraining: the full MoCo training step and the data pipeline, ours and lightly's.

- :func:`bench_step`: images/s of one training step exactly as the train loop runs it
  (:func:`pretrain.training.trainer.train_step`: uint8 -> normalised input, query forward and backward, key
  forward, optimizer step, fused momentum update, enqueue) for MoCo v2 (MLP head, t 0.2) at a given
  arch / input size / batch / queue length, in fp32 NCHW, fp32 channels_last and our default numerics
  (``MODEL.PRECISION auto`` + channels_last); and, when the ``lightly`` package is installed, the same step
  written with lightly's MoCo building blocks as its documentation does (``MoCoProjectionHead``,
  ``NTXentLoss(memory_bank_size=...)``, ``update_momentum``; fp32, NCHW, float inputs).
- :func:`bench_data`: images/s of one loader worker (a single process: decode + views of a sample) for
  our ``moco_v2`` and ``infomin`` (+ JigSaw) view pipelines and lightly's ``MoCoV2Transform``.

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

        cfg = _moco_cfg(arch, size, batch, queue, precision, channels_last)
        torch.manual_seed(0)
        self.method = build_method(cfg).to(device)
        if channels_last:
            self.method.to(memory_format=torch.channels_last)
        self.method.train()
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

    def __call__(self):
        m = self.model
        self.update_momentum(m.backbone, m.backbone_momentum, m=0.999)
        self.update_momentum(m.projection_head, m.projection_head_momentum, m=0.999)
        with torch.autocast(self.device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None):
            query = m.projection_head(m.backbone(self.x_query).flatten(start_dim=1))
            key = m.projection_head_momentum(m.backbone_momentum(self.x_key).flatten(start_dim=1)).detach()
        loss = self.criterion(query.float(), key.float())
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad()


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
            "ours default": ("auto", True)}
    for name, (precision, cl) in ours.items():
        step = _OursStep(arch, size, batch, queue, precision, cl, device)
        fns[name] = step
        meta[name] = (step.precision, "channels_last" if cl else "NCHW")
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
    """Rows ``(pipeline, output, images/s per worker)``: one process decoding and augmenting samples of the
    ImageFolder ``root`` (a ``train``-style folder of class folders)."""
    from pretrain.data.images import ImageFolder, load_image, scan_folder
    from pretrain.data.views import build_views

    _, samples = scan_folder(root)
    n = min(num_images, len(samples))
    pipelines = {}
    for views in ("moco_v2", "infomin"):
        cfg = _moco_cfg("resnet50", size, 256, 65536, "auto", True, views=views)
        ds = ImageFolder(root, build_views(cfg), seed=0, draft=draft)
        label = "ours moco_v2" if views == "moco_v2" else "ours infomin + JigSaw"
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
    return [(name, out, f"{n / best[name]:.1f}") for name, (_, out) in pipelines.items()]


def format_table(headers, rows):
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [line.format(*headers), line.format(*("-" * w for w in widths))]
    out += [line.format(*map(str, r)) for r in rows]
    return "\n".join(out)
