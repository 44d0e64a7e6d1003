"""Negative sets of the memory-bank methods (Wu et al. 2020, "On Mutual Information in Contrastive Learning
for Visual Representations", Sec. 2 and 5): which bank entries each sample is contrasted with.

Every sampler answers, for a batch of L2-normalised embeddings ``query`` (B x D) of the images ``indices``
(B dataset indices) and the memory bank ``memory`` (N x D)::

    neg_idx, valid = sampler.sample(query, indices, memory, iteration)   # both B x S

``neg_idx[b]`` are bank rows; ``valid[b]`` says which of them count (variable-size sets are masked: the
method puts -inf in the logits of invalid columns). Row ``b``'s own entry ``indices[b]`` is never a valid
negative.

Kinds (:func:`build_negative_sampler`):

- ``"uniform"`` (IR, CMC): ``K = BANK.NUM_NEGATIVES`` entries drawn uniformly with replacement from the bank
  without ``i`` (InstDis draws i.i.d. from the whole bank; leaving ``i`` out keeps the positive unique).
- ``"ball"`` (BALL, LA, CMC-BALL): the background set ``B_i`` = the ``|B|`` bank entries with the largest
  inner product with the current embedding, ``i`` excluded; ``|B| = BALL.NEIGHBOURS`` or, if
  ``BALL.FRACTION`` > 0, ``FRACTION x N``. When ``|B| <= K`` all of ``B_i`` are the negatives (Wu et al.
  B.3: the 4096 nearest); when ``|B| > K``, ``K`` negatives are drawn uniformly (with replacement) from
  ``B_i`` -- so with ``|B| = N - 1`` it is exactly IR.
- ``"ann"`` (ANN, CMC-ANN): ``B_i`` minus the close-neighbour set ``C_i``: the entries that share ``i``'s
  cluster in any of ``CLUSTER.RUNS`` k-means runs (``CLUSTER.K`` clusters, seeds differing per run and per
  epoch) of the bank, recomputed in :meth:`~AnnSampler.on_epoch_start`. With ``|B| <= K`` the cluster-mates
  are masked out of ``B_i`` (fewer valid columns); with ``|B| > K`` the ``K`` draws come uniformly from
  ``B_i \\ C_i`` itself.

Annealing (BALL+ / ANN+, ``BALL.ANNEAL``): ``|B|`` moves from ``ANNEAL_START x N`` (1.0: the whole bank, IR)
to the end size above along ``BALL.ANNEAL_SCHEDULE`` between the epochs ``BALL.ANNEAL_EPOCHS`` = (start, end;
end 0 = the end of training), evaluated at every iteration. With the progress ``p`` in [0, 1] and the weight
``w(p)`` (linear: ``p``; cosine: ``(1 - cos(pi p)) / 2``; exp: ``p``)::

    |B| = start + (end - start) w          (linear, cosine)
    |B| = start^(1 - w) end^w              (exp: geometric, a constant factor per iteration)

``CLUSTER.ANNEAL`` (ANN+) grows ``C_i`` from empty to full with the same weight: only the first
``round(w x RUNS)`` k-means runs define ``C_i`` (a union over runs, so ``C_i`` only grows), so ANN+ starts
as IR and ends as ANN.

Counts larger than the bank (``K``, ``|B|`` > N - 1, k-means ``k`` > N) are clamped with one logged
warning, so that a run on a few dozen images works.

Multi-process: every process holds the same bank (:class:`~pretrain.methods.memory_bank.MemoryBank` gathers its
updates). k-means runs on rank 0 only and the assignments are broadcast, so that all processes see the
same clusters whatever FAISS's threading does. The mean number of valid negatives of a step (what
:meth:`~NegativeSampler.num_negatives` returns for the MI ceiling) is averaged over all processes' rows, as
the logged ``num_negatives`` is, so every process reports the same ceiling. Random draws use torch's
default generator of the bank's device (seeded per process and checkpointed by the train loop), so a
resumed run draws what an uninterrupted one would.

Nearest neighbours and k-means come from :mod:`pretrain.methods.neighbours` with ``BANK.BACKEND``. With
``"auto"``, the per-step search runs in torch when the bank is on a GPU (an exact ``matmul + topk`` there,
rather than copying the bank to a FAISS index every step); k-means uses FAISS when installed.
"""
import logging
import math

import torch

from pretrain.common import distributed as du
from pretrain.methods.neighbours import kmeans, resolve_backend, search

__all__ = ["NegativeSampler", "BallSampler", "AnnSampler", "ClusterSets", "build_negative_sampler",
           "clamp_with_warning", "close_neighbour_mask", "mean_valid", "anneal_weight", "annealed_size", "KINDS",
           "SCHEDULES"]

logger = logging.getLogger(__name__)

KINDS = ("uniform", "ball", "ann")
SCHEDULES = ("linear", "cosine", "exp")
_CHUNK_ELEMENTS = 1 << 25   # similarity entries computed at once by the "draw from a wide ball" path


def clamp_with_warning(value, limit, what):
    """``min(value, limit)``, with a logged warning naming ``what`` when ``value`` had to shrink."""
    value, limit = int(value), int(limit)
    if value > limit:
        logger.warning(f"{what} {value} is larger than the memory bank allows ({limit}); using {limit}")
        return limit
    return value


def anneal_weight(progress, schedule):
    """How far (0..1) an annealed quantity has moved from its start to its end at ``progress`` (0..1)."""
    p = min(1.0, max(0.0, float(progress)))
    if schedule == "cosine":
        return 0.5 * (1.0 - math.cos(math.pi * p))
    if schedule in ("linear", "exp"):
        return p
    raise ValueError(f"unknown BALL.ANNEAL_SCHEDULE {schedule!r}; use {', '.join(SCHEDULES)}")


def annealed_size(start, end, progress, schedule):
    """The background-set size at ``progress`` of the schedule: ``start`` at 0, ``end`` at 1 (see module doc)."""
    w = anneal_weight(progress, schedule)
    if schedule == "exp":
        size = math.exp((1.0 - w) * math.log(start) + w * math.log(end))
    else:
        size = start + (end - start) * w
    lo, hi = min(start, end), max(start, end)
    return int(min(hi, max(lo, round(size))))


@torch.no_grad()
def mean_valid(valid):
    """Mean number of valid negatives per row of ``valid`` (B x S), over the rows of every process: the step's
    logged ``num_negatives`` is averaged over processes, and the MI ceiling ``log(K + 1)`` must use the same
    K in every process. With several processes every one of them must call (the train loop's forward does)."""
    stats = torch.stack([valid.sum(dtype=torch.float64),
                         torch.full((), float(valid.shape[0]), dtype=torch.float64, device=valid.device)])
    du.all_reduce_sum(stats)
    rows = float(stats[1])
    return float(stats[0]) / rows if rows > 0 else 0.0


def close_neighbour_mask(assignments, indices, candidates):
    """``mask[b, s]``: ``candidates[b, s]`` shares a cluster with ``indices[b]`` in at least one row (run) of
    ``assignments`` (R x N cluster ids). ``candidates`` B x S, or None for every bank entry (B x N)."""
    b = indices.shape[0]
    n = assignments.shape[1] if assignments.dim() == 2 else 0
    shape = (b, n) if candidates is None else tuple(candidates.shape)
    mask = torch.zeros(shape, dtype=torch.bool, device=indices.device)
    for run in assignments:
        own = run[indices].unsqueeze(1)
        mask |= (run.unsqueeze(0) if candidates is None else run[candidates]) == own
    return mask


class ClusterSets:
    """Close-neighbour sets ``C_i``: ``CLUSTER.RUNS`` k-means clusterings (``CLUSTER.K`` clusters) of the bank.

    :meth:`recompute` runs once per epoch (a second call for the same epoch, e.g. after a resume that
    restored the assignments with :meth:`load_extra_state`, does nothing), on rank 0, and broadcasts.
    """

    def __init__(self, cfg, bank_size):
        c = cfg.CLUSTER
        self.runs = int(c.RUNS)
        self.k = clamp_with_warning(c.K, bank_size, "CLUSTER.K")
        self.niter = int(c.NITER)
        self.backend = cfg.BANK.BACKEND
        self.seed = max(0, int(cfg.SEED))
        self.bank_size = int(bank_size)
        self.assignments = None   # RUNS x N long (cluster id of every bank entry in every run)
        self.epoch = -1           # the epoch the assignments were computed for

    @torch.no_grad()
    def recompute(self, memory, epoch):
        """k-means of ``memory`` for ``epoch``; returns False when the assignments were already there."""
        epoch = int(epoch)
        if self.assignments is not None and self.epoch == epoch:
            self.assignments = self.assignments.to(memory.device)
            return False
        assign = torch.empty(self.runs, memory.shape[0], dtype=torch.long, device=memory.device)
        if du.get_rank() == 0:
            for r in range(self.runs):
                seed = (self.seed * 1000003 + epoch * self.runs + r) % (2 ** 31 - 1)
                assign[r] = kmeans(memory, self.k, seed=seed, niter=self.niter, backend=self.backend)[0]
        du.broadcast_tensors([assign])
        self.assignments, self.epoch = assign, epoch
        return True

    def mask(self, indices, candidates=None, runs=None):
        """:func:`close_neighbour_mask` over the first ``runs`` runs (all by default)."""
        if self.assignments is None:
            raise RuntimeError("close-neighbour sets are not computed yet: call on_epoch_start first")
        a = self.assignments[: self.runs if runs is None else runs].to(indices.device)
        return close_neighbour_mask(a, indices, candidates)

    def extra_state(self):
        if self.assignments is None:
            return {}
        return {"assignments": self.assignments.detach().cpu().clone(), "epoch": int(self.epoch)}

    def load_extra_state(self, state):
        if state and state.get("assignments") is not None:
            a = state["assignments"]
            if tuple(a.shape) != (self.runs, self.bank_size):
                raise ValueError(f"saved cluster assignments of shape {tuple(a.shape)}; this run needs "
                                 f"{(self.runs, self.bank_size)} (CLUSTER.RUNS x images)")
            self.assignments, self.epoch = a.long().clone(), int(state["epoch"])


class NegativeSampler:
    """IR's sampler: ``K`` negatives uniformly from the bank without ``i``; the base of the others."""

    kind = "uniform"

    def __init__(self, cfg, bank_size):
        self.bank_size = int(bank_size)
        if self.bank_size < 2:
            raise ValueError(f"a memory bank of {self.bank_size} entries has no negatives; use more images")
        self.K = clamp_with_warning(cfg.BANK.NUM_NEGATIVES, self.bank_size - 1, "BANK.NUM_NEGATIVES")
        backend = cfg.BANK.BACKEND
        resolve_backend(backend)  # fail early on an unknown name / missing FAISS
        self.backend = backend
        self.iters_per_epoch = None
        self.max_iter = None
        self._last_valid = float(self.K)

    # ------------------------------------------------------------------ the method's interface
    def on_train_start(self, context):
        self.iters_per_epoch = int(context["iters_per_epoch"])
        self.max_iter = int(context["max_iter"])

    def on_epoch_start(self, epoch, memory):
        pass

    @torch.no_grad()
    def sample(self, query, indices, memory, iteration):
        neg = self._uniform(indices, memory.shape[0], self.K, memory.device)
        valid = torch.ones_like(neg, dtype=torch.bool)
        self._last_valid = float(self.K)
        return neg, valid

    def num_negatives(self):
        """Negatives per sample currently used (the mean number of valid ones for variable-size sets)."""
        return max(1, int(round(self._last_valid)))

    def extra_state(self):
        return {}

    def load_extra_state(self, state):
        pass

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _uniform(indices, n, k, device):
        """B x k draws, uniform with replacement over ``range(n)`` without each row's own index."""
        indices = indices.to(device).long()
        r = torch.randint(0, n - 1, (indices.shape[0], k), device=device)
        return r + (r >= indices.unsqueeze(1)).long()

    def _search_backend(self, memory):
        if self.backend == "auto" and memory.is_cuda:
            return "torch"
        return self.backend


class BallSampler(NegativeSampler):
    """BALL: the background set ``B_i`` (nearest bank entries, ``i`` excluded), annealed for BALL+."""

    kind = "ball"

    def __init__(self, cfg, bank_size, anneal=None):
        super().__init__(cfg, bank_size)
        b, n = cfg.BALL, self.bank_size
        if b.FRACTION > 0:
            self.end_size = clamp_with_warning(max(1, round(b.FRACTION * n)), n - 1, "BALL.FRACTION x images")
        else:
            self.end_size = clamp_with_warning(b.NEIGHBOURS, n - 1, "BALL.NEIGHBOURS")
        self.anneal = bool(b.ANNEAL) if anneal is None else bool(anneal)
        self.start_size = max(self.end_size, min(n - 1, int(round(b.ANNEAL_START * n))))
        self.schedule = b.ANNEAL_SCHEDULE
        anneal_weight(0.0, self.schedule)  # validates the name
        self.anneal_epochs = (float(b.ANNEAL_EPOCHS[0]), float(b.ANNEAL_EPOCHS[1]))
        self._last_size = self.start_size if self.anneal else self.end_size

    def progress(self, iteration):
        """Position (0..1) in the annealing window ``BALL.ANNEAL_EPOCHS`` at ``iteration``."""
        if self.iters_per_epoch is None:
            raise RuntimeError("annealing needs on_train_start(context) first (iterations per epoch)")
        epoch = iteration / self.iters_per_epoch
        e0, e1 = self.anneal_epochs
        if e1 <= 0:
            e1 = self.max_iter / self.iters_per_epoch
        if e1 <= e0:
            return 1.0 if epoch >= e0 else 0.0
        return min(1.0, max(0.0, (epoch - e0) / (e1 - e0)))

    def weight(self, iteration):
        """The annealing weight w (0: start, 1: end) at ``iteration``; 1 without annealing."""
        return anneal_weight(self.progress(iteration), self.schedule) if self.anneal else 1.0

    def background_size(self, iteration):
        """``|B_i|`` at ``iteration``."""
        if not self.anneal:
            return self.end_size
        return annealed_size(self.start_size, self.end_size, self.progress(iteration), self.schedule)

    def close_runs(self, iteration):
        """How many k-means runs define ``C_i`` at ``iteration`` (no close set here: 0)."""
        return 0

    def _close(self, indices, candidates, iteration):
        """Close-neighbour mask of ``candidates`` (B x S, or None: the whole bank); None without C."""
        return None

    @torch.no_grad()
    def background(self, query, indices, memory, size):
        """``B_i`` as B x size bank indices, nearest first: top ``size + 1`` by inner product, ``i`` removed."""
        n, b = memory.shape[0], query.shape[0]
        indices = indices.to(query.device).long()
        k = min(size + 1, n)
        _, idx = search(query, memory, k, backend=self._search_backend(memory))
        idx = idx.to(query.device)
        keep = idx != indices.unsqueeze(1)
        keep[keep.all(dim=1), -1] = False  # i was not among the k: drop the farthest instead
        return idx[keep].view(b, k - 1)

    @torch.no_grad()
    def _draw(self, query, indices, memory, size, iteration):
        """``K`` draws per row, uniform with replacement, from ``B_i`` (minus ``C_i``) when ``|B| > K``."""
        n, b, k = memory.shape[0], query.shape[0], self.K
        device = memory.device
        indices = indices.to(device).long()
        out = torch.empty(b, k, dtype=torch.long, device=device)
        valid = torch.ones(b, k, dtype=torch.bool, device=device)
        rows = max(1, _CHUNK_ELEMENTS // n)
        for s in range(0, b, rows):
            ids = indices[s:s + rows]
            c = ids.shape[0]
            arange = torch.arange(c, device=device)
            if size >= n - 1:  # the whole bank
                allowed = torch.ones(c, n, dtype=torch.bool, device=device)
            else:
                sims = query[s:s + rows].float().to(device) @ memory.float().t()
                sims[arange, ids] = float("-inf")
                tau = sims.kthvalue(n - size + 1, dim=1).values  # the size-th largest similarity
                allowed = sims >= tau.unsqueeze(1)
            allowed[arange, ids] = False
            close = self._close(ids, None, iteration)
            if close is not None:
                allowed &= ~close
            empty = ~allowed.any(dim=1)
            if empty.any():
                allowed[empty, 0] = True
                valid[s:s + c][empty] = False
            out[s:s + c] = torch.multinomial(allowed.float(), k, replacement=True)
        return out, valid

    @torch.no_grad()
    def sample(self, query, indices, memory, iteration):
        size = self.background_size(iteration)
        self._last_size = size
        indices = indices.to(memory.device).long()
        if size > self.K:
            if size >= memory.shape[0] - 1 and self.close_runs(iteration) == 0:
                neg = self._uniform(indices, memory.shape[0], self.K, memory.device)  # B_i = the bank: IR
                valid = torch.ones_like(neg, dtype=torch.bool)
            else:
                neg, valid = self._draw(query, indices, memory, size, iteration)
        else:
            neg = self.background(query, indices, memory, size)
            valid = torch.ones_like(neg, dtype=torch.bool)
            close = self._close(indices, neg, iteration)
            if close is not None:
                valid &= ~close
        self._last_valid = mean_valid(valid)
        return neg, valid

    def num_negatives(self):
        return max(1, int(round(self._last_valid)))

    @property
    def last_background_size(self):
        return self._last_size


class AnnSampler(BallSampler):
    """ANN: ``B_i \\ C_i``; ``C_i`` from k-means of the bank at every epoch start (annealed for ANN+)."""

    kind = "ann"

    def __init__(self, cfg, bank_size, anneal=None, anneal_close=None):
        super().__init__(cfg, bank_size, anneal=anneal)
        self.clusters = ClusterSets(cfg, bank_size)
        self.anneal_close = bool(cfg.CLUSTER.ANNEAL) if anneal_close is None else bool(anneal_close)

    def on_epoch_start(self, epoch, memory):
        if self.clusters.recompute(memory, epoch):
            logger.info(f"epoch {epoch}: {self.clusters.runs} k-means runs of the memory bank "
                        f"({self.clusters.k} clusters each) for the close-neighbour sets")

    def close_runs(self, iteration):
        if not self.anneal_close:
            return self.clusters.runs
        w = anneal_weight(self.progress(iteration), self.schedule)
        return int(math.floor(w * self.clusters.runs + 0.5))

    def _close(self, indices, candidates, iteration):
        runs = self.close_runs(iteration)
        if runs == 0:
            return None
        return self.clusters.mask(indices, candidates, runs)

    def extra_state(self):
        return {"clusters": self.clusters.extra_state()}

    def load_extra_state(self, state):
        self.clusters.load_extra_state((state or {}).get("clusters", {}))


_SAMPLERS = {"uniform": NegativeSampler, "ball": BallSampler, "ann": AnnSampler}


def build_negative_sampler(kind, cfg, bank_size, anneal=None, anneal_close=None):
    """The sampler ``kind`` ("uniform", "ball", "ann") for a bank of ``bank_size`` entries.

    ``anneal`` / ``anneal_close``: force the BALL+ / ANN+ annealing on or off (None: ``BALL.ANNEAL`` /
    ``CLUSTER.ANNEAL`` of ``cfg``)."""
    if kind not in _SAMPLERS:
        raise ValueError(f"unknown negative sampler {kind!r}; use {', '.join(KINDS)}")
    if kind == "uniform":
        return NegativeSampler(cfg, bank_size)
    if kind == "ball":
        return BallSampler(cfg, bank_size, anneal=anneal)
    return AnnSampler(cfg, bank_size, anneal=anneal, anneal_close=anneal_close)
