"""Optimiser, learning-rate schedule and numerics of the training step."""
import bisect
import math

import torch

__all__ = ["CPU_BF16_MIN_INPUT", "LRSchedule", "build_optimizer", "resolve_precision", "cpu_has_native_bf16",
           "autocast_dtype"]


class LRSchedule:
    """Learning rate per iteration: ``SOLVER.LR_SCHEDULER`` "step" or "cosine", optional linear warm-up.

    The base rate is ``BASE_LR * BATCH_SIZE / REFERENCE_BATCH_SIZE``. Points given in epochs (``STEPS``,
    ``WARMUP_EPOCHS``) are fractions of ``SOLVER.EPOCHS`` applied to ``max_iter``, so that a run shortened
    with ``SOLVER.MAX_ITER`` keeps the shape of its schedule.
    """

    def __init__(self, cfg, max_iter):
        s = cfg.SOLVER
        self.name = s.LR_SCHEDULER
        self.base_lr = s.BASE_LR * s.BATCH_SIZE / s.REFERENCE_BATCH_SIZE
        self.max_iter = int(max_iter)
        epochs = float(s.EPOCHS)
        self.milestones = [int(round(e / epochs * max_iter)) for e in s.STEPS]
        self.gamma = s.GAMMA
        self.final_factor = s.COSINE_FINAL_FACTOR
        self.warmup_iters = int(round(s.WARMUP_EPOCHS / epochs * max_iter))
        self.warmup_factor = s.WARMUP_FACTOR
        self.last_iter = -1

    def _main(self, it):
        if self.name == "step":
            return self.base_lr * self.gamma ** bisect.bisect_right(self.milestones, it)
        span = max(1, self.max_iter - self.warmup_iters)
        progress = min(1.0, max(0.0, (it - self.warmup_iters) / span))
        final = self.base_lr * self.final_factor
        return final + (self.base_lr - final) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def __call__(self, it):
        """Learning rate of iteration ``it`` (0-based)."""
        self.last_iter = it
        lr = self._main(it)
        if it < self.warmup_iters:
            alpha = it / self.warmup_iters
            lr = self._main(self.warmup_iters) * (self.warmup_factor * (1 - alpha) + alpha)
        return lr

    def state_dict(self):
        return {"name": self.name, "base_lr": self.base_lr, "max_iter": self.max_iter,
                "milestones": list(self.milestones), "warmup_iters": self.warmup_iters,
                "last_iter": self.last_iter}

    def load_state_dict(self, state):
        """Restores the position; returns the differences from the saved schedule (empty if the same)."""
        self.last_iter = int(state.get("last_iter", -1))
        mine = self.state_dict()
        return [f"{k}: {state[k]} -> {mine[k]}" for k in ("name", "base_lr", "max_iter", "milestones", "warmup_iters")
                if k in state and state[k] != mine[k]]


def build_optimizer(cfg, params):
    """SGD with momentum and weight decay on all trainable parameters (MoCo, InfoMin)."""
    s = cfg.SOLVER
    return torch.optim.SGD(params, lr=s.BASE_LR * s.BATCH_SIZE / s.REFERENCE_BATCH_SIZE, momentum=s.MOMENTUM,
                           weight_decay=s.WEIGHT_DECAY)


def cpu_has_native_bf16():
    """Whether this CPU computes bf16 natively (avx512_bf16 or AMX); otherwise bf16 is emulated and slow."""
    for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        fn = getattr(torch.cpu, name, None)
        try:
            if fn is not None and fn():
                return True
        except Exception:  # noqa: BLE001 - an old or odd build: treat as unsupported
            pass
    return False


# oneDNN's bf16 convolution backward (weights) reads memory it should not when a 3x3 stride-2 conv gets a
# 1x1 input: the gradients of layer4.0.conv1 (and layer3.0.conv1 below 9 px) are nondeterministic and now
# and then NaN (torch 2.14 / oneDNN 3.12 on avx512_bf16). A ResNet input of s px reaches layer4 at
# ceil(s / 16) px, so inputs of at most this size (e.g. JigSaw tiles of tiny runs) keep fp32 on CPU.
CPU_BF16_MIN_INPUT = 17


def resolve_precision(name, device, min_input=None):
    """``MODEL.PRECISION`` -> "fp32" | "bf16" | "fp16" for ``device``: "auto" is the fastest correct choice
    (bf16 on GPUs with bf16 and CPUs with native bf16, fp16 on older GPUs, else fp32). ``min_input``: the
    smallest image side the network sees (views, JigSaw tiles); see :data:`CPU_BF16_MIN_INPUT`."""
    if name != "auto":
        return name
    if device.type == "cuda":
        major, _ = torch.cuda.get_device_capability(device)
        return "bf16" if major >= 8 else "fp16"
    if min_input is not None and min_input < CPU_BF16_MIN_INPUT:
        return "fp32"
    return "bf16" if cpu_has_native_bf16() else "fp32"


def autocast_dtype(precision):
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
