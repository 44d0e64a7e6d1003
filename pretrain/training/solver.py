"""Optimiser, learning-rate schedule and numerics of the training step."""
import bisect
import inspect
import math

import torch

__all__ = ["CPU_BF16_MIN_INPUT", "LRSchedule", "build_optimizer", "resolve_precision", "cpu_has_native_bf16",
           "autocast_dtype"]


class LRSchedule:
    """Learning rate per iteration: ``SOLVER.LR_SCHEDULER`` "step", "cosine", "plateau" or "constant",
    optional linear warm-up. The one schedule of the project: pretraining steps it per iteration, linear
    evaluation per epoch (:meth:`per_epoch`).

    The base rate is ``BASE_LR * BATCH_SIZE / REFERENCE_BATCH_SIZE``. Points given in epochs (``STEPS``,
    ``WARMUP_EPOCHS``) are fractions of ``SOLVER.EPOCHS`` applied to ``max_iter``, so that a run shortened
    with ``SOLVER.MAX_ITER`` keeps the shape of its schedule.

    "plateau" (Wu et al. 2020, Appendix B.3: "the learning rate was dropped twice by a factor of 10 once
    learning converged, defined as no improvement in nearest neighbor classification accuracy ... for 10
    epochs"): the loop reports its metric (the kNN top-1 in pretraining, the validation top-1 in linear
    evaluation) after every epoch with :meth:`report_metric`. The rule, with ``P = SOLVER.PLATEAU_PATIENCE``:

    - a report better than the best so far (strictly greater) becomes the best; its epoch is the
      reference epoch;
    - otherwise, once ``epoch - reference >= P`` (P reports in a row without a new best) and fewer than
      ``SOLVER.PLATEAU_DROPS`` drops were made, the rate is multiplied by ``SOLVER.GAMMA`` from the
      iteration after the report on, and the reference epoch becomes the drop's epoch (the lower rate gets
      P epochs of its own before the next drop; the best value is kept, so it must be beaten).

    Drops are stored as the iterations where they take effect, so the rate of an iteration is a function
    of the iteration and the drops made before it, and a resumed run continues exactly (the drops, best
    value and reference epoch are in :meth:`state_dict`). Warm-up applies on top, as for the others.
    """

    def __init__(self, cfg, max_iter):
        s = cfg.SOLVER
        self._configure(s.LR_SCHEDULER, s.BASE_LR * s.BATCH_SIZE / s.REFERENCE_BATCH_SIZE, max_iter,
                        epochs=s.EPOCHS, steps=s.STEPS, gamma=s.GAMMA, final_factor=s.COSINE_FINAL_FACTOR,
                        warmup_epochs=s.WARMUP_EPOCHS, warmup_factor=s.WARMUP_FACTOR,
                        patience=s.PLATEAU_PATIENCE, max_drops=s.PLATEAU_DROPS)

    @classmethod
    def per_epoch(cls, name, base_lr, epochs, *, steps=(), gamma=0.1, patience=10, max_drops=2):
        """A schedule stepped once per epoch (iteration ``e`` is epoch ``e``, 0-based), without warm-up:
        ``steps`` are the epochs from which "step" multiplies the rate by ``gamma``; "plateau" reports the
        1-based epoch just finished, and a drop applies from the next epoch on."""
        schedule = cls.__new__(cls)
        schedule._configure(name, base_lr, epochs, epochs=epochs, steps=steps, gamma=gamma, final_factor=0.0,
                            warmup_epochs=0, warmup_factor=1.0, patience=patience, max_drops=max_drops)
        return schedule

    def _configure(self, name, base_lr, max_iter, *, epochs, steps, gamma, final_factor, warmup_epochs,
                   warmup_factor, patience, max_drops):
        self.name = name
        self.base_lr = base_lr
        self.max_iter = int(max_iter)
        epochs = float(epochs)
        self.gamma = gamma
        self.final_factor = final_factor
        self.warmup_iters = int(round(warmup_epochs / epochs * max_iter))
        self.warmup_factor = warmup_factor
        self.last_iter = -1
        if self.name == "plateau":
            self.milestones = []          # iterations from which each drop applies (grows with the drops)
            self.patience = int(patience)
            self.max_drops = int(max_drops)
        else:
            self.milestones = [int(round(e / epochs * max_iter)) for e in steps]
        self.best = None                  # "plateau": best reported value, its epoch, the reference epoch
        self.best_epoch = None
        self.reference_epoch = None
        self.drop_epochs = []

    def _main(self, it):
        if self.name == "constant":
            return self.base_lr
        if self.name in ("step", "plateau"):
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

    @property
    def drops(self):
        return len(self.drop_epochs) if self.name == "plateau" else 0

    def report_metric(self, epoch, value, iteration=None):
        """"plateau": the validation metric (kNN top-1, higher is better) after ``epoch`` epochs. A drop
        decided here applies from ``iteration`` on (default: the iteration after the last one scheduled).
        Returns True when this report dropped the rate. Other schedules ignore reports (False)."""
        if self.name != "plateau" or value is None:
            return False
        epoch, value = int(epoch), float(value)
        if self.best is None or value > self.best:
            self.best, self.best_epoch, self.reference_epoch = value, epoch, epoch
            return False
        if self.drops >= self.max_drops or epoch - self.reference_epoch < self.patience:
            return False
        at = int(iteration) if iteration is not None else self.last_iter + 1
        self.milestones.append(max(at, self.milestones[-1] if self.milestones else 0))
        self.drop_epochs.append(epoch)
        self.reference_epoch = epoch
        return True

    def state_dict(self):
        return {"name": self.name, "base_lr": self.base_lr, "max_iter": self.max_iter,
                "milestones": list(self.milestones), "warmup_iters": self.warmup_iters,
                "last_iter": self.last_iter, "best": self.best, "best_epoch": self.best_epoch,
                "reference_epoch": self.reference_epoch, "drop_epochs": list(self.drop_epochs)}

    def load_state_dict(self, state):
        """Restores the position (and the drops and best value of "plateau"); returns the differences from
        the saved schedule (empty if the same)."""
        self.last_iter = int(state.get("last_iter", -1))
        compared = ("name", "base_lr", "max_iter", "milestones", "warmup_iters")
        if self.name == "plateau" and state.get("name") == "plateau":
            self.milestones = [int(m) for m in state.get("milestones", [])]
            self.drop_epochs = [int(e) for e in state.get("drop_epochs", [])]
            self.best = state.get("best")
            self.best_epoch = state.get("best_epoch")
            self.reference_epoch = state.get("reference_epoch")
            compared = ("name", "base_lr", "max_iter", "warmup_iters")
        mine = self.state_dict()
        return [f"{k}: {state[k]} -> {mine[k]}" for k in compared if k in state and state[k] != mine[k]]


def fused_kwargs():
    """``{"fused": True}`` where this torch has fused SGD kernels (one pass over each tensor for weight decay,
    momentum and update, instead of a Python loop of three ops per parameter), else ``{}``."""
    return {"fused": True} if "fused" in inspect.signature(torch.optim.SGD).parameters else {}


def build_optimizer(cfg, params):
    """SGD with momentum and weight decay on all trainable parameters (MoCo, InfoMin); fused kernels
    (the same update; 1.6x faster on CPU for a ResNet-18, where torch's default is a per-parameter loop)."""
    s = cfg.SOLVER
    return torch.optim.SGD(params, lr=s.BASE_LR * s.BATCH_SIZE / s.REFERENCE_BATCH_SIZE, momentum=s.MOMENTUM,
                           weight_decay=s.WEIGHT_DECAY, **fused_kwargs())


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
