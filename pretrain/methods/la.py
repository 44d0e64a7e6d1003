"""Local Aggregation (LA: Zhuang et al. 2019, "Local Aggregation for Unsupervised Learning of Visual
Embeddings"), as Wu et al. 2020 describe and train it (Sec. 2 Eq. 2, Sec. 5 Lemmas 5.2-5.3, B.3).

The IR machinery of :mod:`pretrain.methods.ir` (encoder, memory bank with rate t, one view) with two sets
per sample ``i``, both recomputed from the bank:

- the background set ``B_i``: the ``BALL.NEIGHBOURS`` (4096) bank entries closest to the current embedding,
  ``i`` excluded (:class:`pretrain.methods.negatives.BallSampler`; ``BANK.NUM_NEGATIVES`` uniform draws from it when
  it is larger);
- the close-neighbour set ``C_i``: the entries sharing ``i``'s cluster in any of ``CLUSTER.RUNS`` k-means
  runs (``CLUSTER.K`` clusters) of the bank, recomputed at every epoch start (rank 0, broadcast;
  :class:`pretrain.methods.negatives.ClusterSets`), checkpointed with the method.

With ``s_j = f . M_j / t`` and ``i`` counted in both sets (``i in C_i``, as Wu et al. state, and in the
denominator as in BALL)::

    loss = -log  sum_{j in {i} u (C_i n B_i)} exp(s_j)  /  sum_{j in {i} u B_i} exp(s_j)

so that with ``C_i = {i}`` it is exactly BALL (Wu et al.'s LA_0, Lemma 5.2). The logged ``mi_loss`` is that
LA_0 / BALL loss on the same similarities (LA's own loss is below it, Lemma 5.3), with ceiling
``log(|B| + 1)``.

Initialisation (B.3: "we initialize ResNet and the memory bank using 10 epochs of IR"): within the same
run, the epochs before ``LA.IR_EPOCHS`` train IR (``BANK.NUM_NEGATIVES`` uniform negatives, InfoNCE form);
from that epoch on, the bank is clustered at every epoch start and the LA loss is used. The phase is
logged when it starts and as the metric ``la_phase`` (0: IR, 1: LA).
"""
import logging

import torch
import torch.nn.functional as F

from pretrain.methods.ir import BankMethod, bank_infonce, masked_logits
from pretrain.methods.negatives import ClusterSets, NegativeSampler

__all__ = ["LocalAggregation", "la_loss"]

logger = logging.getLogger(__name__)


def la_loss(logits, close):
    """``-log sum_{C} exp / sum_{all} exp`` per row, averaged. ``logits``: B x (S+1), positive first, invalid
    columns at -inf; ``close``: B x S mask of the negatives' columns that are close neighbours."""
    numerator = torch.cat([torch.ones_like(close[:, :1]), close], dim=1)
    top = torch.logsumexp(logits.masked_fill(~numerator, float("-inf")), dim=1)
    return -(top - torch.logsumexp(logits, dim=1)).mean()


class LocalAggregation(BankMethod):
    sampler_kind = "ball"
    anneal = False

    def __init__(self, cfg, num_train_images=None):
        super().__init__(cfg, num_train_images)
        n = self.bank.size
        self.ir_sampler = NegativeSampler(cfg, n)
        self.clusters = ClusterSets(cfg, n)
        self.ir_epochs = int(cfg.LA.IR_EPOCHS)
        self._epoch = 0
        self._phase_logged = None

    @classmethod
    def check_config(cls, cfg):
        super().check_config(cfg)
        cls._check_ball(cfg)
        cls._check_cluster(cfg)
        if cfg.LA.IR_EPOCHS < 0:
            raise ValueError(f"LA.IR_EPOCHS {cfg.LA.IR_EPOCHS} must be >= 0")
        if cfg.BALL.ANNEAL:
            raise ValueError("BALL.ANNEAL: LA has no annealed background set; set it False")

    @property
    def in_ir_phase(self):
        return self._epoch < self.ir_epochs

    @property
    def active_sampler(self):
        return self.ir_sampler if self.in_ir_phase else self.sampler

    # ------------------------------------------------------------------ the loop's interface
    def on_train_start(self, context):
        super().on_train_start(context)
        self.ir_sampler.on_train_start(context)

    def on_epoch_start(self, epoch):
        self._epoch = int(epoch)
        phase = "IR" if self.in_ir_phase else "LA"
        if phase != self._phase_logged:
            if phase == "IR":
                logger.info(f"epoch {epoch}: IR phase (instance discrimination) until epoch {self.ir_epochs} "
                            "(LA.IR_EPOCHS), then local aggregation")
            else:
                logger.info(f"epoch {epoch}: local aggregation phase (LA.IR_EPOCHS {self.ir_epochs})")
            self._phase_logged = phase
        if phase == "LA" and self.clusters.recompute(self.bank.memory, epoch):
            logger.info(f"epoch {epoch}: {self.clusters.runs} k-means runs of the memory bank "
                        f"({self.clusters.k} clusters each) for the close-neighbour sets")

    def forward(self, batch):
        if self.in_ir_phase:
            out = super().forward(batch)
            out["la_phase"] = torch.zeros((), device=out["loss"].device)
            return out
        f, indices = self.embed(batch)
        with torch.autocast(f.device.type, enabled=False):
            f = F.normalize(f.float(), dim=1)
            memory = self.bank.memory
            neg_idx, valid = self.sampler.sample(f.detach(), indices, memory, self._iter)
            close = self.clusters.mask(indices, neg_idx) & valid
            logits, mask = masked_logits(f, memory, indices, neg_idx, valid, self.T)
            loss = la_loss(logits, close)
            device = f.device
            out = {"loss": loss, "mi_loss": bank_infonce(logits).detach(), "acc": self._accuracy(logits),
                   "num_negatives": mask[:, 1:].sum(dim=1).float().mean().detach(),
                   "close_size": close.sum(dim=1).float().mean().detach(),
                   "background_size": torch.tensor(float(self.sampler.last_background_size), device=device),
                   "la_phase": torch.ones((), device=device)}
        self._remember(indices, f)
        return out

    def extra_state(self):
        return {"clusters": self.clusters.extra_state()}

    def load_extra_state(self, state):
        self.clusters.load_extra_state((state or {}).get("clusters", {}))
