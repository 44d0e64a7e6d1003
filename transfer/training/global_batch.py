"""A training step that depends on the global batch only, not on how it is split over processes.

With the loader of :mod:`transfer.data.loader` every process receives its consecutive share of the
same global batch, each image augmented the same way whatever process maps it. Three things in a
Detectron2 R-CNN would still make a run on ``W`` processes differ from a run on one process with the
same global batch; :func:`make_global_batch_model`, applied by the trainer to the model it builds,
removes them:

- **Padding.** Each process pads its images to the largest of its own batch, a single process to the
  largest of the global batch: the feature maps, their BN statistics and the anchors differ. In
  training, the padded tensor is enlarged (zeros, as Detectron2 pads) to the largest size over all
  processes (one all-reduce of two integers per iteration): exactly the tensor a single process
  builds. ``TRANSFER.PAD_TO_GLOBAL_BATCH False`` keeps Detectron2's per-process padding (less work per
  GPU when sizes vary, at the price of this invariance).
- **Sampling.** The RPN's anchor sampling and the ROI heads' proposal sampling draw from the process's
  global RNG, image after image, so image 2 of a process is sampled with what image 1 left. Each
  image's sampling now runs under an RNG seeded from that image's seed (``SAMPLE_SEED_KEY`` of its
  dict, from the loader) and the sampling stage; the process-global RNG states are left untouched.
- **SyncBN on the CPU.** torch's ``SyncBatchNorm`` (used with CUDA) normalises with the mean and
  variance of all elements on all processes and updates the running variance unbiased, as BN over the
  whole batch does. Detectron2's ``NaiveSyncBatchNorm`` (the only SyncBN that runs with gloo; the CPU
  config uses it) weighs each process by its batch size N rather than N x H x W, updates the running
  variance biased and does not count batches; on the CPU it is replaced by :class:`GlobalBatchNorm`,
  which computes the statistics of the global batch exactly (two all-reduces forward, one backward).

Losses still differ where Detectron2 normalises by a count that depends on the split: the box head
divides by the ROIs sampled on the process (equal when every image fills its
``ROI_HEADS.BATCH_SIZE_PER_IMAGE``), the mask head averages over the process's foreground ROIs, the
keypoint head over its visible keypoints (``NORMALIZE_LOSS_BY_VISIBLE_KEYPOINTS``). See
:mod:`transfer.training.invariance` for the check and the measured differences.
"""
import contextlib
import logging
import types

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from detectron2.layers import NaiveSyncBatchNorm
from detectron2.structures import ImageList
from detectron2.utils import comm
from torch import nn

from transfer.data.loader import SAMPLE_SEED_KEY

__all__ = ["GlobalBatchNorm", "PerImageRNG", "pad_to_global_batch", "replace_naive_sync_bn",
           "make_global_batch_model", "SAMPLING_STAGES"]

logger = logging.getLogger(__name__)

# what each seeded sampling draws, and the number mixed into the image's seed for it
SAMPLING_STAGES = {"rpn": 1, "roi_heads": 2}


_DIMS = [0, 2, 3]


def _all_reduce(tensor):
    dist.all_reduce(tensor)
    return tensor


class _GlobalBatchNormFunction(torch.autograd.Function):
    """Normalisation by the statistics of the global batch; sums in float64 (as PyTorch's CPU BN
    accumulates), gradients of the statistics summed over the processes as in ``SyncBatchNorm``.
    ``weight`` and ``bias`` get this process's own gradients (DDP averages them)."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        channels = x.shape[1]
        x64 = x.double()
        count = torch.full([1], float(x.numel() // max(channels, 1)), dtype=torch.float64, device=x.device)
        totals = _all_reduce(torch.cat([x64.sum(dim=_DIMS), count]))
        n = totals[-1].clamp(min=1)
        mean = totals[:channels] / n
        centred = x64 - mean.reshape(1, -1, 1, 1)
        var = _all_reduce((centred * centred).sum(dim=_DIMS)) / n
        invstd = torch.rsqrt(var + eps)
        xhat = centred * invstd.reshape(1, -1, 1, 1)
        out = xhat
        if weight is not None:
            out = out * weight.double().reshape(1, -1, 1, 1) + bias.double().reshape(1, -1, 1, 1)
        ctx.save_for_backward(xhat, invstd, weight)
        ctx.n = n
        count = totals[-1].clone()
        ctx.mark_non_differentiable(mean, var, count)
        return out.to(x.dtype), mean, var, count

    @staticmethod
    def backward(ctx, grad_out, _grad_mean, _grad_var, _grad_count):
        xhat, invstd, weight = ctx.saved_tensors
        dy = grad_out.double()
        sum_dy = dy.sum(dim=_DIMS)
        sum_dy_xhat = (dy * xhat).sum(dim=_DIMS)
        scale = weight.double() if weight is not None else torch.ones_like(invstd)
        # every process's share of the gradient of the shared statistics
        sums = _all_reduce(torch.cat([sum_dy, sum_dy_xhat]) * scale.repeat(2))
        channels = xhat.shape[1]
        mean_dy, mean_dy_xhat = (sums[:channels] / ctx.n).reshape(1, -1, 1, 1), (sums[channels:] / ctx.n).reshape(1, -1, 1, 1)
        grad_x = (invstd.reshape(1, -1, 1, 1)
                  * (dy * scale.reshape(1, -1, 1, 1) - mean_dy - xhat * mean_dy_xhat)).to(grad_out.dtype)
        if weight is None:
            return grad_x, None, None, None
        return grad_x, sum_dy_xhat.to(weight.dtype), sum_dy.to(weight.dtype), None


class GlobalBatchNorm(NaiveSyncBatchNorm):
    """BatchNorm over the global batch: in training on several processes, the mean and (biased) variance
    of all ``N x H x W`` elements of every process normalise the input, and the running statistics
    are updated as ``BatchNorm2d`` over the concatenated batch does (unbiased variance, batch count).
    Statistics and gradient sums are accumulated in float64.

    One process, or evaluation: ``BatchNorm2d``. Works with any backend (gloo on the CPU); a process
    with an empty batch (no ROIs) takes part with zeros.
    """

    def forward(self, input):
        if comm.get_world_size() == 1 or not self.training:
            return nn.BatchNorm2d.forward(self, input)
        x = input.float() if input.dtype == torch.float16 else input
        out, mean, var, n = _GlobalBatchNormFunction.apply(
            x, self.weight if self.affine else None, self.bias if self.affine else None, self.eps)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                momentum = momentum * float(n > 1)  # nothing to learn from fewer than 2 elements
                unbiased = var * n / (n - 1).clamp(min=1)
                self.running_mean += (momentum * (mean - self.running_mean)).to(self.running_mean.dtype)
                self.running_var += (momentum * (unbiased - self.running_var)).to(self.running_var.dtype)
        return out.to(input.dtype)


def replace_naive_sync_bn(module):
    """Replace every ``NaiveSyncBatchNorm`` under ``module`` by a :class:`GlobalBatchNorm` with the same
    parameters, buffers, mode and ``requires_grad``; returns how many were replaced."""
    replaced = 0
    for name, child in module.named_children():
        if isinstance(child, NaiveSyncBatchNorm) and not isinstance(child, GlobalBatchNorm):
            new = GlobalBatchNorm(child.num_features, eps=child.eps, momentum=child.momentum, affine=child.affine,
                                  track_running_stats=child.track_running_stats)
            new.load_state_dict(child.state_dict())
            tensors = list(child.parameters()) + list(child.buffers())
            if tensors:
                new.to(tensors[0].device)
            for p_new, p_old in zip(new.parameters(), child.parameters()):
                p_new.requires_grad_(p_old.requires_grad)
            new.train(child.training)
            setattr(module, name, new)
            replaced += 1
        else:
            replaced += replace_naive_sync_bn(child)
    return replaced


class PerImageRNG:
    """The seeds of the images of the current training batch, and an RNG seeded for each image's sampling.

    :meth:`start` is given the batch's dicts; each call of :meth:`image` for a stage (``"rpn"``,
    ``"roi_heads"``) is the next image's, in batch order, as Detectron2's heads loop over images. Without
    seeds (dicts from another loader), :meth:`image` leaves the process's RNG as it is.
    """

    def __init__(self):
        self.seeds = None
        self.calls = {}

    def start(self, batched_inputs):
        seeds = [d.get(SAMPLE_SEED_KEY) for d in batched_inputs]
        self.seeds = None if any(s is None for s in seeds) else [int(s) for s in seeds]
        self.calls = {}

    @contextlib.contextmanager
    def image(self, stage, device):
        """The body draws from the CPU RNG and ``device``'s RNG seeded for the next image of ``stage``;
        both RNGs are as before afterwards."""
        if self.seeds is None:
            yield
            return
        number = self.calls.get(stage, 0)
        if number >= len(self.seeds):
            raise RuntimeError(f"{stage} sampled more images than the batch has ({len(self.seeds)})")
        self.calls[stage] = number + 1
        seed = int(np.random.SeedSequence([self.seeds[number], SAMPLING_STAGES[stage]]).generate_state(1)[0])
        cuda = device.type == "cuda"
        index = (device.index if device.index is not None else torch.cuda.current_device()) if cuda else None
        with torch.random.fork_rng(devices=[index] if cuda else []):
            torch.default_generator.manual_seed(seed)
            if cuda:
                with torch.cuda.device(index):
                    torch.cuda.manual_seed(seed)
            yield


# Bound to the model, the RPN and the ROI heads as methods of those instances (types.MethodType, so that a
# deep copy of the model is bound to the copy); each calls its class's own method.

def _preprocess_image(self, batched_inputs):
    images = type(self).preprocess_image(self, batched_inputs)
    if not self.training:
        return images
    self.per_image_rng.start(batched_inputs)
    return pad_to_global_batch(images) if self.pad_to_global_batch else images


def _subsample_labels(self, label):
    with self.per_image_rng.image("rpn", label.device):
        return type(self)._subsample_labels(self, label)


def _sample_proposals(self, matched_idxs, matched_labels, gt_classes):
    with self.per_image_rng.image("roi_heads", matched_idxs.device):
        return type(self)._sample_proposals(self, matched_idxs, matched_labels, gt_classes)


def global_image_size(images):
    """The largest (height, width) of ``images`` (an ImageList) over all processes."""
    size = torch.tensor(images.tensor.shape[-2:], device=images.tensor.device, dtype=torch.int64)
    if comm.get_world_size() > 1:
        dist.all_reduce(size, op=dist.ReduceOp.MAX)
    return int(size[0]), int(size[1])


def pad_to_global_batch(images):
    """``images`` with its tensor zero-padded to the largest padded size over all processes."""
    height, width = global_image_size(images)
    tensor = images.tensor
    extra_h, extra_w = height - tensor.shape[-2], width - tensor.shape[-1]
    if extra_h == 0 and extra_w == 0:
        return images
    return ImageList(F.pad(tensor, (0, extra_w, 0, extra_h), value=0.0), images.image_sizes)


def make_global_batch_model(model, cfg):
    """Make ``model``'s training step independent of the split of the global batch (see the module).

    Changes this model instance only (its ``preprocess_image``, the RPN's and ROI heads' sampling
    methods, its naive SyncBN layers on the CPU); no Detectron2 class or module is modified. Models
    that are not R-CNNs keep Detectron2's behaviour, with a warning.
    """
    if cfg.MODEL.DEVICE == "cpu":
        replace_naive_sync_bn(model)
    if not hasattr(model, "preprocess_image"):
        logger.warning(f"{type(model).__name__} has no preprocess_image: its padding and sampling depend on "
                       "the number of processes")
        return model
    rng = PerImageRNG()
    model.per_image_rng = rng
    model.pad_to_global_batch = bool(cfg.TRANSFER.PAD_TO_GLOBAL_BATCH)
    model.preprocess_image = types.MethodType(_preprocess_image, model)
    rpn = getattr(model, "proposal_generator", None)
    if rpn is not None and hasattr(rpn, "_subsample_labels"):
        rpn.per_image_rng = rng
        rpn._subsample_labels = types.MethodType(_subsample_labels, rpn)
    roi_heads = getattr(model, "roi_heads", None)
    if roi_heads is not None and hasattr(roi_heads, "_sample_proposals"):
        roi_heads.per_image_rng = rng
        roi_heads._sample_proposals = types.MethodType(_sample_proposals, roi_heads)
    return model
