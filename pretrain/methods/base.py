"""The interface between a pretraining method and the train loop.

The loop (``pretrain/training/train.py``) does, per iteration::

    out = model(batch)                  # Method.forward, wrapped in DDP when there are several processes
    out["loss"].backward(); optimizer.step()
    method.on_step_end(iteration)       # after the weights moved: momentum encoders, queues, memory banks

and, around it, ``on_train_start(context)`` once (after a resume too), ``on_epoch_start(epoch)`` before
every epoch (k-means / neighbourhood recomputation of ANN, LA, annealed schedules of BALL+), and
``features(images)`` for the kNN monitor. Nothing else about a method is known to the loop.

``batch`` is the collated output of the view pipeline (uint8 image tensors ``view1``, ``view2``, ...,
``jigsaw``...) plus ``index`` (dataset index, for memory banks) and ``label``, already on the device;
:meth:`Method.images` turns uint8 images into normalised float tensors in the right memory format.

``forward`` returns a dict of scalar tensors: ``loss`` (what is back-propagated), ``mi_loss`` (the
InfoNCE-form loss whose bound is logged, optional) and any other detached scalars to log (accuracies,
branch losses). The loop averages them over processes at log steps and writes them to ``metrics.jsonl``
and TensorBoard with ``mi_bound = mi_ceiling - mi_loss`` and ``mi_ceiling`` (:meth:`Method.mi_ceiling`).

State: everything a resume needs lives in the module's ``state_dict`` (parameters and buffers: encoders,
momentum encoders, queues, memory banks, their pointers) plus :meth:`Method.extra_state` (plain numbers
and tensors: cluster assignments, schedules...). The checkpoint stores ``state_dict`` under its
``"state_dict"`` key, so the online encoder must be an attribute named ``encoder_q`` (two-encoder methods)
or ``encoder`` (single-encoder methods), a torchvision ResNet with the projection head in ``fc``: that is
the layout ``pretrain/checkpoints/layouts.py`` reads (docs/artifacts.md).
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Method", "mi_ceiling", "infonce_logits", "LOSS_FORMS"]

LOSS_FORMS = ("infonce", "bank", "ntxent")


def mi_ceiling(form, *, num_negatives=None, batch_size=None):
    """The largest mutual-information lower bound (nats) a loss of ``form`` can show.

    - ``"infonce"``: one positive against ``num_negatives`` negatives of a MoCo queue of K: ``log(K + 1)``;
    - ``"bank"``: one memory-bank entry (the positive) against ``num_negatives`` entries drawn from the
      bank (IR, BALL, ANN, CMC; for BALL/ANN the negatives come from the restricted set, and the bound
      is Wu et al.'s VINCE bound, looser than InfoNCE's): ``log(K + 1)``;
    - ``"ntxent"``: SimCLR's loss over a batch of N pairs, 2N - 2 negatives per anchor: ``log(2N - 1)``.
    """
    if form in ("infonce", "bank"):
        if num_negatives is None or num_negatives < 1:
            raise ValueError(f"loss form {form!r} needs the number of negatives, got {num_negatives!r}")
        return math.log(num_negatives + 1)
    if form == "ntxent":
        if batch_size is None or batch_size < 2:
            raise ValueError(f"loss form 'ntxent' needs a batch of at least 2 pairs, got {batch_size!r}")
        return math.log(2 * batch_size - 1)
    raise ValueError(f"no MI ceiling for loss form {form!r}; known: {', '.join(LOSS_FORMS)}")


def infonce_logits(q, k, negatives, temperature):
    """``[q.k, q.n_1, ..., q.n_K] / t`` per row (the positive in column 0); q, k: NxD, negatives: KxD."""
    l_pos = (q * k).sum(dim=1, keepdim=True)
    l_neg = q @ negatives.t()
    return torch.cat([l_pos, l_neg], dim=1) / temperature


class Method(nn.Module):
    """Base class of pretraining methods; see the module docstring for the contract."""

    #: loss form for :func:`mi_ceiling`; None: the method logs no MI bound
    loss_form = None
    #: the online encoder is one RGB ResNet that converts to Detectron2 weights (False: CMC's L/ab pair)
    rgb_backbone = True

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        # True only when configured so; the trainer sets it after timing MODEL.CHANNELS_LAST auto
        self.channels_last = cfg.MODEL.CHANNELS_LAST is True
        mean = torch.tensor(cfg.INPUT.PIXEL_MEAN, dtype=torch.float32).view(1, 3, 1, 1) * 255
        std = torch.tensor(cfg.INPUT.PIXEL_STD, dtype=torch.float32).view(1, 3, 1, 1) * 255
        self.register_buffer("pixel_mean", mean, persistent=False)
        self.register_buffer("pixel_std", std, persistent=False)

    @classmethod
    def check_config(cls, cfg):
        """Raise ``ValueError`` (one line naming the key) if ``cfg`` cannot work for this method; called
        before any process starts or any image is read."""

    # ------------------------------------------------------------------ helpers for subclasses
    def images(self, x):
        """uint8 NxCxHxW (or float already in 0..255) -> normalised float32, channels_last if configured."""
        x = x.to(self.pixel_mean.device, non_blocking=True)
        x = (x.float() - self.pixel_mean) / self.pixel_std
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    @property
    def online_encoder(self):
        """The encoder whose weights become the backbone (``encoder_q`` or ``encoder``)."""
        return self._modules["encoder_q"] if "encoder_q" in self._modules else self._modules["encoder"]

    @property
    def num_negatives(self):
        return None

    # ------------------------------------------------------------------ the loop's interface
    def forward(self, batch):  # pragma: no cover - abstract
        raise NotImplementedError

    def on_train_start(self, context):
        """Once before the first iteration of this process (fresh or resumed); ``context`` is a dict with
        ``iters_per_epoch``, ``max_iter``, ``start_iter``, ``world_size``, ``num_train_images``."""

    def on_epoch_start(self, epoch):
        """Before the first iteration of every epoch (also the partial epoch of a resume)."""

    def on_step_end(self, iteration):
        """After ``optimizer.step()`` of ``iteration`` (0-based)."""

    def mi_ceiling(self):
        """Ceiling of the logged MI bound for this method's loss form, or None."""
        if self.loss_form is None:
            return None
        return mi_ceiling(self.loss_form, num_negatives=self.num_negatives,
                          batch_size=self.cfg.SOLVER.BATCH_SIZE)

    def mi_bound(self, loss):
        """InfoNCE lower bound on the views' mutual information (nats) read off ``loss``: ceiling - loss."""
        ceiling = self.mi_ceiling()
        return None if ceiling is None else ceiling - float(loss)

    @torch.no_grad()
    def features(self, images, kind="embedding"):
        """L2-normalised features of uint8 ``images`` for the kNN monitor: the online encoder's head output
        (``"embedding"``) or its pooled backbone features (``"backbone"``)."""
        from pretrain.backbones import trunk_forward

        net = self.online_encoder
        x = self.images(images)
        f = net(x) if kind == "embedding" else trunk_forward(net, x)
        return F.normalize(f.float(), dim=1)

    def extra_state(self):
        """Plain numbers / tensors to checkpoint besides ``state_dict`` (default: none)."""
        return {}

    def load_extra_state(self, state):
        """Restore what :meth:`extra_state` returned."""

    def trainable_parameters(self):
        return [p for p in self.parameters() if p.requires_grad]
