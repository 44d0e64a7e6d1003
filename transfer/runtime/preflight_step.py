"""The preflight's training step: a transfer model trained on a fixed synthetic batch, timed.

:func:`synthetic_batch` makes what Detectron2's mapper gives a Mask R-CNN: images (uint8, 3 x H x W), ground-truth boxes, classes and polygon masks, a COCO-like 7 objects per image.
:func:`time_step` builds the model of a config (:func:`transfer.training.config.build_config`, one process),
Detectron2's optimizer for it, and runs ``warmup + iters`` SGD steps on the batch, with AMP (float16
autocast and a gradient scaler, as Detectron2's ``AMPTrainer``) when asked, each step synchronised on CUDA.
It returns seconds per iteration (median of the timed steps), images per second and the peak GPU memory; a
non-finite loss fails the check. The data loader is not in the time: the figure is the model's step, what
enough loader workers leave of an iteration.
"""
import math
import os
import statistics
import time

import torch

__all__ = ["synthetic_batch", "StepResult", "time_step", "default_config"]


def synthetic_batch(images, height, width, objects=7, num_classes=80, seed=0):
    """``images`` training inputs of ``height`` x ``width`` with ``objects`` boxes, classes and polygons."""
    from detectron2.structures import Boxes, Instances, PolygonMasks

    g = torch.Generator().manual_seed(seed)
    batch = []
    for _ in range(images):
        side = torch.empty(objects, 2).uniform_(0.05, 0.4, generator=g) * torch.tensor([width, height])
        x0 = torch.rand(objects, generator=g) * (width - side[:, 0])
        y0 = torch.rand(objects, generator=g) * (height - side[:, 1])
        boxes = torch.stack([x0, y0, x0 + side[:, 0], y0 + side[:, 1]], 1)
        polygons = []
        for x_0, y_0, x_1, y_1 in boxes.tolist():  # an octagon inside each box
            cx, cy, rx, ry = (x_0 + x_1) / 2, (y_0 + y_1) / 2, (x_1 - x_0) / 2, (y_1 - y_0) / 2
            ring = []
            for k in range(8):
                a = 2 * math.pi * k / 8
                ring += [cx + rx * math.cos(a), cy + ry * math.sin(a)]
            polygons.append([ring])
        inst = Instances((height, width))
        inst.gt_boxes = Boxes(boxes)
        inst.gt_classes = torch.randint(0, num_classes, (objects,), generator=g)
        inst.gt_masks = PolygonMasks(polygons)
        image = torch.randint(0, 256, (3, height, width), generator=g, dtype=torch.uint8)  # as the mapper gives
        batch.append({"image": image, "instances": inst, "height": height, "width": width})
    return batch


class StepResult:
    """Seconds per iteration (median), images per second, peak GPU memory (GB, None on CPU), the losses."""

    def __init__(self, seconds, images, peak_gb, losses):
        self.s_per_iter = statistics.median(seconds)
        self.img_per_s = images / self.s_per_iter
        self.peak_gb = peak_gb
        self.losses = losses

    def __repr__(self):
        return f"StepResult({self.s_per_iter:.4f} s/iter, {self.img_per_s:.2f} img/s)"


def time_step(config_file, opts=(), device="cuda", amp=True, images=2, height=800, width=1333, warmup=3, iters=10,
              lr=0.001):
    """Train the model of ``config_file`` (with ``opts``) on one synthetic batch; a :class:`StepResult`.

    Raises FloatingPointError for a non-finite loss."""
    from detectron2.modeling import build_model
    from detectron2.solver import build_optimizer
    from detectron2.utils.events import EventStorage

    from transfer.training.config import build_config

    cuda = torch.device(device).type == "cuda"
    cfg = build_config(config_file, [*opts, "MODEL.WEIGHTS", "", "SOLVER.BASE_LR", str(lr), "SOLVER.AMP.ENABLED",
                                     str(bool(amp and cuda))], world_size=1, has_cuda=cuda)
    cfg.defrost()
    cfg.MODEL.DEVICE = str(device)
    cfg.freeze()
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    optimizer = build_optimizer(cfg, model)
    scaler = torch.amp.GradScaler("cuda") if amp and cuda else None
    batch = synthetic_batch(images, height, width, num_classes=cfg.MODEL.ROI_HEADS.NUM_CLASSES)
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    seconds, losses = [], {}
    with EventStorage(0) as storage:
        for step in range(warmup + iters):
            storage.iter = step
            start = time.perf_counter()
            with torch.autocast("cuda", dtype=torch.float16, enabled=scaler is not None):
                loss_dict = model(batch)
            total = sum(loss_dict.values())
            if not torch.isfinite(total):
                raise FloatingPointError(f"non-finite loss at step {step}: "
                                         + ", ".join(f"{k} {float(v.detach()):.3g}" for k, v in loss_dict.items()))
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(total).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                total.backward()
                optimizer.step()
            if cuda:
                torch.cuda.synchronize(device)
            if step >= warmup:
                seconds.append(time.perf_counter() - start)
            losses = {k: float(v.detach()) for k, v in loss_dict.items()}
    peak = torch.cuda.max_memory_allocated(device) / 1e9 if cuda else None
    return StepResult(seconds, images, peak, losses)


def default_config():
    """The published setting of the step: Mask R-CNN R50-FPN 1x."""
    from pretrain.common.paths import CONFIGS_DIR

    return os.path.join(CONFIGS_DIR, "transfer", "coco_mask_rcnn_R_50_FPN_1x.yaml")
