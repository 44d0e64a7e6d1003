"""Instance discrimination with a memory bank (IR: Wu et al. 2018, "Unsupervised Feature Learning via
Non-Parametric Instance Discrimination"), in the InfoNCE form of Wu et al. 2020 (Sec. 3, B.3), and the base
class of the other memory-bank methods (BALL, ANN, BALL+, ANN+: ``ball.py`` / ``ann.py``; LA: ``la.py``).

- ``encoder``: a torchvision ResNet with the projection head in ``fc`` (``MODEL.HEAD``, ``MODEL.DIM`` = 128),
  the one network that is trained (and converted: layout "pretrain", ``encoder.*``).
- ``bank``: :class:`~pretrain.methods.memory_bank.MemoryBank`, one L2-normalised entry per training image, moved
  after every step towards the step's embeddings with rate ``BANK.MOMENTUM`` (t = 0.5):
  ``m_i <- normalize(t m_i + (1 - t) f_i)`` (gathered over processes). A buffer: checkpointed and resumed.
- ``sampler``: :mod:`pretrain.methods.negatives` picks each sample's negatives (IR: ``K = BANK.NUM_NEGATIVES``
  uniformly from the bank without ``i``). Its state (cluster assignments) is the method's ``extra_state``.
- One view (``view1``; ``INPUT.NUM_VIEWS`` 1 is enough): the positive of ``f = normalize(g(x_i))`` is the
  bank entry ``M[i]`` (Wu et al. 2020's "weighted view set" of past epochs).

Losses (temperature ``t = BANK.T``; ``s_j = f . M_j``):

- ``BANK.LOSS infonce`` (Wu et al. 2020's recommendation, and the only form of BALL/ANN/LA):
  ``-log exp(s_i/t) / (exp(s_i/t) + sum_{j in negatives} exp(s_j/t))``, invalid negatives masked out.
  Logged bound: ``mi_ceiling - mi_loss`` with ``mi_ceiling = log(K + 1)`` ("bank" form).
- ``BANK.LOSS nce`` (IR only; InstDis's original NCE): ``P(j) = exp(s_j/t) / Z`` with a constant ``Z``
  (``BANK.NCE_Z``; 0: ``Z = N x mean exp(s/t)`` over the first batch, all processes, kept in the buffer
  ``nce_z``), noise ``P_n = 1/N``, ``h(x) = x / (x + K P_n)``:
  ``loss = -(log h(P(i)) + sum_j log(1 - h(P(j))))`` per sample, averaged. ``mi_loss`` is the InfoNCE-form
  loss on the same similarities (detached), so the bound stays comparable.

The bank is read (positives, negatives, nearest neighbours) in ``forward`` and written in
:meth:`on_step_end`, after the optimizer step, with the embeddings of that step.
"""
import logging

import torch
import torch.nn.functional as F

from pretrain.backbones import build_encoder
from pretrain.common.distributed import all_reduce_sum, get_world_size
from pretrain.methods.memory_bank import MemoryBank
from pretrain.methods.base import Method
from pretrain.methods.negatives import SCHEDULES, build_negative_sampler
from pretrain.methods.neighbours import BACKENDS, resolve_backend

__all__ = ["BankMethod", "IR", "bank_infonce", "masked_logits"]

logger = logging.getLogger(__name__)

BANK_LOSSES = ("infonce", "nce")


def masked_logits(f, memory, indices, neg_idx, valid, temperature):
    """``[s_i, s_n1, ..., s_nS] / t`` per row (positive in column 0), invalid negatives at -inf; and the
    B x (S + 1) validity mask (column 0 always valid). ``f``: B x D normalised, with gradients."""
    pos = (f * memory[indices]).sum(dim=1, keepdim=True)
    neg = torch.bmm(memory[neg_idx], f.unsqueeze(2)).squeeze(2)  # B x S
    logits = torch.cat([pos, neg], dim=1) / temperature
    mask = torch.cat([torch.ones_like(valid[:, :1]), valid], dim=1)
    return logits.masked_fill(~mask, float("-inf")), mask


def bank_infonce(logits):
    """``-log softmax(logits)[:, 0]``, averaged (invalid columns already at -inf)."""
    return -F.log_softmax(logits, dim=1)[:, 0].mean()


class BankMethod(Method):
    """One encoder, a memory bank and a negative sampler; subclasses choose the sampler and the loss."""

    loss_form = "bank"
    sampler_kind = "uniform"
    supports_nce = False
    anneal = None          # None: BALL.ANNEAL decides; True/False: forced (BALL+ / plain)
    anneal_close = None    # None: CLUSTER.ANNEAL decides

    def __init__(self, cfg, num_train_images=None):
        super().__init__(cfg)
        if not num_train_images:
            raise ValueError(f"MODEL.METHOD {cfg.MODEL.METHOD}: a memory-bank method needs the number of "
                             "training images (one bank entry per image)")
        dim = int(cfg.MODEL.DIM)
        self.T = float(cfg.BANK.T)
        self.loss_kind = cfg.BANK.LOSS
        self.encoder = build_encoder(cfg.MODEL.ARCH, cfg.MODEL.HEAD, dim)
        self.bank = MemoryBank(int(num_train_images), dim, float(cfg.BANK.MOMENTUM))
        self.sampler = self.build_sampler(cfg, int(num_train_images))
        if self.loss_kind == "nce":
            self.register_buffer("nce_z", torch.tensor(float(cfg.BANK.NCE_Z), dtype=torch.float32))
        self._iter = 0
        self._pending = None

    def build_sampler(self, cfg, bank_size):
        return build_negative_sampler(self.sampler_kind, cfg, bank_size, anneal=self.anneal,
                                      anneal_close=self.anneal_close)

    # ------------------------------------------------------------------ config
    @classmethod
    def check_config(cls, cfg):
        b = cfg.BANK
        if cfg.INPUT.NUM_VIEWS < 1:
            raise ValueError(f"INPUT.NUM_VIEWS {cfg.INPUT.NUM_VIEWS}: {cfg.MODEL.METHOD} needs 1 view")
        if cfg.JIGSAW.ENABLED:
            raise ValueError(f"JIGSAW.ENABLED: {cfg.MODEL.METHOD} has no JigSaw branch; set it False")
        if b.LOSS not in BANK_LOSSES:
            raise ValueError(f"unknown BANK.LOSS {b.LOSS!r}; use {' or '.join(BANK_LOSSES)}")
        if b.LOSS == "nce" and not cls.supports_nce:
            raise ValueError(f"BANK.LOSS nce: only IR has InstDis's NCE form; use infonce for {cfg.MODEL.METHOD}")
        if b.NCE_Z < 0:
            raise ValueError(f"BANK.NCE_Z {b.NCE_Z} must be >= 0 (0: estimated on the first batch)")
        cls._check_bank(cfg)

    @staticmethod
    def _check_bank(cfg):
        """The BANK keys every memory-bank method reads (CMC too)."""
        b = cfg.BANK
        if not 0.0 <= b.MOMENTUM < 1.0:
            raise ValueError(f"BANK.MOMENTUM {b.MOMENTUM} must be in [0, 1)")
        if b.T <= 0:
            raise ValueError(f"BANK.T {b.T} must be positive")
        if b.NUM_NEGATIVES < 1:
            raise ValueError(f"BANK.NUM_NEGATIVES {b.NUM_NEGATIVES} must be at least 1")
        if b.BACKEND not in BACKENDS:
            raise ValueError(f"unknown BANK.BACKEND {b.BACKEND!r}; use {', '.join(BACKENDS)}")
        try:
            resolve_backend(b.BACKEND)
        except ValueError as e:
            raise ValueError(f"BANK.BACKEND {b.BACKEND}: {e}") from None

    @staticmethod
    def _check_ball(cfg):
        b = cfg.BALL
        if b.NEIGHBOURS < 1:
            raise ValueError(f"BALL.NEIGHBOURS {b.NEIGHBOURS} must be at least 1")
        if not 0.0 <= b.FRACTION <= 1.0:
            raise ValueError(f"BALL.FRACTION {b.FRACTION} must be in [0, 1] (0: use BALL.NEIGHBOURS)")
        if not 0.0 < b.ANNEAL_START <= 1.0:
            raise ValueError(f"BALL.ANNEAL_START {b.ANNEAL_START} must be in (0, 1]")
        if b.ANNEAL_SCHEDULE not in SCHEDULES:
            raise ValueError(f"unknown BALL.ANNEAL_SCHEDULE {b.ANNEAL_SCHEDULE!r}; use {', '.join(SCHEDULES)}")
        e = tuple(b.ANNEAL_EPOCHS)
        if len(e) != 2 or e[0] < 0 or e[1] < 0 or (e[1] > 0 and e[1] <= e[0]):
            raise ValueError(f"BALL.ANNEAL_EPOCHS {e} must be (start, end) with 0 <= start < end (end 0: the "
                             "end of training)")

    @staticmethod
    def _check_cluster(cfg):
        c = cfg.CLUSTER
        if c.K < 1:
            raise ValueError(f"CLUSTER.K {c.K} must be at least 1")
        if c.RUNS < 1:
            raise ValueError(f"CLUSTER.RUNS {c.RUNS} must be at least 1")
        if c.NITER < 1:
            raise ValueError(f"CLUSTER.NITER {c.NITER} must be at least 1")

    # ------------------------------------------------------------------ pieces
    @property
    def active_sampler(self):
        """The sampler of the current step (LA switches from IR's)."""
        return self.sampler

    @property
    def num_negatives(self):
        return self.active_sampler.num_negatives()

    def embed(self, batch):
        """L2-normalised fp32 embeddings of ``view1`` (B x D, with gradients) and the dataset indices."""
        f = self.encoder(self.images(batch["view1"]))
        indices = batch["index"].to(self.bank.memory.device).long()
        return f, indices

    def _remember(self, indices, f):
        if self.training:
            self._pending = (indices.detach(), f.detach())

    @staticmethod
    def _accuracy(logits):
        """% of rows whose positive (column 0) beats every valid negative."""
        return (logits.argmax(dim=1) == 0).float().mean().detach() * 100

    def nce_loss(self, logits, mask):
        """InstDis's NCE loss (see the module docstring) on ``logits`` = s / t (B x (K+1), positive first)."""
        n = self.bank.size
        with torch.no_grad():
            if float(self.nce_z) <= 0:  # InstDis: Z = N x mean exp(s/t) of the first batch, then fixed
                e = logits.detach().exp().masked_fill(~mask, 0.0)
                stats = torch.stack([e.sum(), mask.sum().to(e.dtype)]).double()
                if get_world_size() > 1:
                    all_reduce_sum(stats)
                self.nce_z.fill_(float(stats[0] / stats[1]) * n)
                logger.info(f"NCE normalising constant Z estimated on the first batch: {float(self.nce_z):.4g}")
        k = mask[:, 1:].sum(dim=1, keepdim=True).clamp(min=1).to(logits.dtype)
        log_kpn = torch.log(k / n)                               # log(K P_n), per row
        log_p = logits - torch.log(self.nce_z)                    # log P(j) = s_j / t - log Z
        pos = -F.softplus(log_kpn[:, 0] - log_p[:, 0])            # log h(P(i)) = log P / (P + K P_n)
        neg = -F.softplus(log_p[:, 1:] - log_kpn)                 # log (1 - h(P(j))) = log K P_n / (P + K P_n)
        neg = neg.masked_fill(~mask[:, 1:], 0.0)
        return -(pos + neg.sum(dim=1)).mean()

    # ------------------------------------------------------------------ the loop's interface
    def forward(self, batch):
        f, indices = self.embed(batch)
        with torch.autocast(f.device.type, enabled=False):
            f = F.normalize(f.float(), dim=1)
            memory = self.bank.memory
            neg_idx, valid = self.active_sampler.sample(f.detach(), indices, memory, self._iter)
            logits, mask = masked_logits(f, memory, indices, neg_idx, valid, self.T)
            infonce = bank_infonce(logits)
            out = {"mi_loss": infonce.detach(), "acc": self._accuracy(logits),
                   "num_negatives": mask[:, 1:].sum(dim=1).float().mean().detach()}
            out["loss"] = self.nce_loss(logits, mask) if self.loss_kind == "nce" else infonce
        out.update({k: torch.tensor(float(v), device=f.device) for k, v in self.extra_logs().items()})
        self._remember(indices, f)
        return out

    def extra_logs(self):
        """Numbers about the negative sets of the last step, for the metrics (subclasses add theirs)."""
        return {}

    def on_train_start(self, context):
        self._iter = int(context.get("start_iter", 0))
        self.sampler.on_train_start(context)

    def on_epoch_start(self, epoch):
        self.sampler.on_epoch_start(epoch, self.bank.memory)

    def on_step_end(self, iteration):
        if self._pending is not None:
            indices, f = self._pending
            self.bank.update(indices, f)
            self._pending = None
        self._iter = int(iteration) + 1

    def extra_state(self):
        return {"sampler": self.sampler.extra_state()}

    def load_extra_state(self, state):
        self.sampler.load_extra_state((state or {}).get("sampler", {}))


class IR(BankMethod):
    """Instance discrimination: ``K`` uniform negatives from the bank; InfoNCE (default) or NCE loss."""

    sampler_kind = "uniform"
    supports_nce = True
