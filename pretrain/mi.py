"""Post-training mutual-information estimation (Lee et al., "A rigorous MI analysis", Sec. III).

The MI read off a contrastive training loss is capped by its batch (``log(2K - 1)`` for NT-Xent,
``log(K + 1)`` for a MoCo queue of K, :func:`pretrain.methods.base.mi_ceiling`) and belongs to an encoder
that was still moving. Here the encoder is **frozen**: its features are computed once, a fresh critic is
trained to maximise the InfoNCE bound with a large estimation batch ``K_Est``, and the bound is then read
on held-out pairs.

The bound (``form="infonce"``, the default)
-------------------------------------------
A batch holds ``K_Est`` positive pairs ``(a_i, b_i)``. The critic embeds both sides (``g(a)``, ``g(b)``:
L2-normalised) and scores ``s_ij = g(a_i) . g(b_j) / t``. Each anchor ``a_i`` has one positive ``b_i`` and
``K_Est - 1`` negatives ``b_j`` (the other pairs' second members), and symmetrically for ``b_i``::

    I(A; B) >= I_hat = log K_Est - 1/2 [CE(s, diag) + CE(s^T, diag)]          ceiling: log K_Est

(both directions are InfoNCE bounds, so is their mean). ``form="ntxent"`` is Lee et al.'s Eq. (2)-(4)
exactly: the 2 K_Est - 2 other members of the batch, of both sides, are the negatives, ceiling
``log(2 K_Est - 1)``; use it to compare with their numbers. Either way the estimate can never exceed the
ceiling: when it comes close (within 5%), the batch, not the encoder, limits it (``near_ceiling``).

Critic
------
Like the projection head of MoCo v2 / SimCLR (what Lee et al. use): a fixed standardisation of the frozen
features (per-dimension mean and std of the training pairs), ``Linear(D, H) - ReLU - Linear(H, 128)``, L2
normalisation, and a learnable temperature ``t`` (initial 0.1, kept in [0.01, 1]). ``H`` defaults to ``D``
clamped to [256, 2048] (MoCo v2: ``H = D = 2048`` for a ResNet-50). Both sides share the head when they
live in the same space (always for images), as SimCLR's head does.

Protocol (per seed)
-------------------
1. The items (images, or rows of paired tensors) are split three ways: test items (``holdout``, default
   25%), then validation items (``holdout`` of the rest), the rest to train on; stratified by class for class
   pairing, so every class needs 6 images. The split depends on the seed.
2. The critic is trained for ``iters`` steps of Adam (lr 1e-3, cosine decay) on batches of ``K_Est`` pairs
   drawn from the training items (i.i.d.: anchors are drawn with replacement, see :func:`_choose`).
   ``checks`` (20) times during training the bound is measured on validation batches; the critic kept is
   the best one there (early stopping). On a few thousand images a critic on 512-2048-d features memorises
   its training images within a few hundred steps and its held-out bound then falls (on CDP with a random
   ResNet-18 and 1,500 training images, from 2.6 to 0.3 bits for ``class:all``).
3. The estimate is the mean bound over ``eval_batches`` batches of ``K_Est`` pairs of test items (with its
   standard error). Neither the training nor the choice of the critic saw them, so the estimate is an
   unbiased reading of the bound of a fixed critic: it cannot be inflated by memorisation or selection.

The report gives the mean over seeds and their standard deviation (the seed changes the split, the
critic's initialisation and the batches).

Pairings
--------
- :class:`ClassPairs` (same-class sampling, Lee et al. Fig. 1c): an anchor image is drawn uniformly and its
  partner is another image (never itself) of the same class. The other members of the batch are negatives
  even when they share the anchor's class: Lee et al. use the plain NT-Xent loss, whose negatives are
  samples of the marginal, which is what keeps ``I_hat`` a lower bound of the true MI (Proposition II.1).
  Masking them would turn the loss into SupCon's and the bound would be lost. The price: with M equiprobable
  classes a perfect encoder reaches ``E[log(K_Est / (1 + N))]``, ``N ~ Bin(K_Est - 1, 1/M)``, slightly below
  ``H(C) = log M`` (:func:`perfect_encoder_bound` computes it for the actual class frequencies; at K_Est 256:
  1.99, 3.96 and 5.81 bits for H(C) = 2, 4 and 6 bits). It is also the most *any* encoder can show at that
  K_Est when the label is a function of the image: a critic on features is a critic on images, and on
  images the optimal critic scores ``log(1[same class] / p(c))``. As the true MI of same-class pairs is at
  most ``H(C)`` (Proposition III.1) and ``I_hat`` is below the true MI, an estimate at ``H(C)`` means the
  true MI is ``H(C)`` (Theorem III.1); at finite ``K_Est`` an encoder that keeps all class information
  sits at the perfect-encoder bound instead, and ``fraction_of_perfect`` in the report says how close.
- :class:`ViewPairs` (augmentation pairing, e.g. SimCLR's): two different augmented views of the same
  image. Views are precomputed, a fixed number per image (each pair picks two of them).
- :class:`TensorPairs`: row ``i`` of ``a`` with row ``i`` of ``b`` (tests: jointly Gaussian variables).

:func:`estimate_mi` works on features; :func:`estimate_encoder_mi` runs the whole thing for a weights file
and an image folder (``tools/estimate_mi.py``).
"""
import logging
import math
import os
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pretrain.methods.base import mi_ceiling

__all__ = ["FORMS", "MIError", "Pairing", "Critic", "PairSource", "TensorPairs", "ClassPairs", "ViewPairs",
           "ceiling_nats", "infonce_bound", "estimate_mi", "parse_pairing", "class_ids", "entropy_bits",
           "select_classes", "perfect_encoder_bound", "extract_features", "build_pairs", "estimate_encoder_mi",
           "NATS_PER_BIT", "NEAR_CEILING", "weights_stem"]

logger = logging.getLogger(__name__)

FORMS = ("infonce", "ntxent")
NATS_PER_BIT = math.log(2.0)
NEAR_CEILING = 0.95  # warn when the estimate reaches this fraction of the ceiling
MIN_PER_CLASS = 6    # same-class pairs need 2 images of a class in each of the training, validation, test items
TEMPERATURE_RANGE = (0.01, 1.0)


class MIError(ValueError):
    """Bad arguments or data for MI estimation; one line naming what to change."""


# ----------------------------------------------------------------------------------------- the bound

def ceiling_nats(k_est, form="infonce"):
    """The largest value the bound can take with batches of ``k_est`` pairs: ``log K_Est`` (infonce) or
    ``log(2 K_Est - 1)`` (ntxent)."""
    if form == "infonce":
        return mi_ceiling("infonce", num_negatives=int(k_est) - 1)
    if form == "ntxent":
        return mi_ceiling("ntxent", batch_size=int(k_est))
    raise MIError(f"unknown bound form {form!r}; use {' or '.join(FORMS)}")


def infonce_bound(za, zb, temperature, form="infonce"):
    """The InfoNCE bound (nats, a scalar tensor) of one batch: row ``i`` of ``za`` and of ``zb`` (L2-normalised
    embeddings, K x d) form the positive pairs; see the module docstring for the two forms."""
    k = za.shape[0]
    if form == "infonce":
        logits = za @ zb.t() / temperature
        target = torch.arange(k, device=za.device)
        loss = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))
        return math.log(k) - loss
    if form == "ntxent":
        z = torch.cat([za, zb])
        sim = z @ z.t() / temperature
        sim = sim.masked_fill(torch.eye(2 * k, dtype=torch.bool, device=z.device), float("-inf"))
        target = torch.cat([torch.arange(k, 2 * k), torch.arange(k)]).to(z.device)
        return math.log(2 * k - 1) - F.cross_entropy(sim, target)
    raise MIError(f"unknown bound form {form!r}; use {' or '.join(FORMS)}")


class Critic(nn.Module):
    """Projection-head critic on frozen features (see the module docstring).

    ``dims``: feature dimensions of the two sides; one shared head when they are equal and ``shared``.
    ``stats``: ``(mean, std)`` per side (tensors of the side's dimension) for the fixed standardisation.
    """

    def __init__(self, dims, stats, hidden_dim=None, out_dim=128, temperature=0.1, learn_temperature=True,
                 shared=True):
        super().__init__()
        da, db = (int(d) for d in dims)
        self.shared = bool(shared) and da == db
        self.head_a = self._head(da, hidden_dim, out_dim)
        self.head_b = self.head_a if self.shared else self._head(db, hidden_dim, out_dim)
        (mean_a, std_a), (mean_b, std_b) = stats
        for name, value in (("mean_a", mean_a), ("std_a", std_a), ("mean_b", mean_b), ("std_b", std_b)):
            self.register_buffer(name, torch.as_tensor(value, dtype=torch.float32).clone())
        log_t = torch.tensor(math.log(temperature), dtype=torch.float32)
        if learn_temperature:
            self.log_temperature = nn.Parameter(log_t)
        else:
            self.register_buffer("log_temperature", log_t)

    @staticmethod
    def _head(in_dim, hidden_dim, out_dim):
        hidden = int(hidden_dim) if hidden_dim else min(max(in_dim, 256), 2048)
        return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out_dim))

    @property
    def temperature(self):
        lo, hi = TEMPERATURE_RANGE
        return self.log_temperature.exp().clamp(lo, hi)

    def forward(self, a, b):
        za = F.normalize(self.head_a((a - self.mean_a) / self.std_a), dim=1)
        zb = F.normalize(self.head_b((b - self.mean_b) / self.std_b), dim=1)
        return za, zb


# ------------------------------------------------------------------------------------- pair sources

def _choose(n, k, generator):
    """``k`` anchor items out of ``n``, independently and uniformly (with replacement).

    The bound needs i.i.d. pairs: its negatives must be samples of the marginal. Distinct anchors (as a
    data loader would give) are slightly less likely to share a class, which on a small held-out set lifts
    the estimate above the true MI of the empirical distribution (0.07 bits at 6 bits, 10 images per class).
    """
    return torch.randint(n, (k,), generator=generator)


class PairSource:
    """Positive pairs over a finite set of items. Subclasses implement ``num_items``, ``dims``,
    ``_pairs(anchors, generator)``, ``subset(items)``, ``side_features()`` and may override ``groups()``."""

    def groups(self):
        """Group id per item for a stratified split (None: a plain random split)."""
        return None

    def sample(self, k, generator):
        """A batch of ``k`` i.i.d. positive pairs ``(a, b)`` (k x D each)."""
        return self._pairs(_choose(self.num_items, k, generator), generator)

    def split(self, holdout, generator):
        """(training source, held-out source), ``holdout`` the held-out fraction of the items."""
        groups = self.groups()
        if groups is None:
            n = self.num_items
            n_eval = min(max(int(round(holdout * n)), 1), n - 1)
            perm = torch.randperm(n, generator=generator)
            train, held = perm[n_eval:], perm[:n_eval]
        else:
            train, held = [], []
            sizes = torch.bincount(groups)
            if int(sizes[sizes > 0].min()) < 4:
                raise MIError("a split for same-class pairing needs at least 4 items per class (2 on each side), "
                              f"one class has {int(sizes[sizes > 0].min())}")
            for g in torch.unique(groups).tolist():
                members = torch.nonzero(groups == g).flatten()
                members = members[torch.randperm(len(members), generator=generator)]
                n_eval = min(max(int(round(holdout * len(members))), 2), len(members) - 2)
                held.append(members[:n_eval])
                train.append(members[n_eval:])
            train, held = torch.cat(train), torch.cat(held)
        return self.subset(torch.sort(train).values), self.subset(torch.sort(held).values)

    def stats(self):
        """``((mean_a, std_a), (mean_b, std_b))`` of the features per dimension; one pooled pair when both
        sides live in the same space."""
        fa, fb = self.side_features()
        if fa.shape[1] == fb.shape[1]:
            pooled = fa.float() if fa is fb else torch.cat([fa, fb]).float()
            s = (pooled.mean(0), pooled.std(0).clamp_min(1e-6))
            return s, s
        return ((fa.float().mean(0), fa.float().std(0).clamp_min(1e-6)),
                (fb.float().mean(0), fb.float().std(0).clamp_min(1e-6)))

    def to(self, device):  # pragma: no cover - overridden
        raise NotImplementedError


class TensorPairs(PairSource):
    """Row ``i`` of ``a`` and row ``i`` of ``b`` are a positive pair."""

    def __init__(self, a, b):
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[0]:
            raise MIError(f"paired features must be N x D tensors with the same N, got {tuple(a.shape)} and "
                          f"{tuple(b.shape)}")
        self.a, self.b = a.float(), b.float()

    @property
    def num_items(self):
        return self.a.shape[0]

    @property
    def dims(self):
        return self.a.shape[1], self.b.shape[1]

    def _pairs(self, anchors, generator):
        anchors = anchors.to(self.a.device)
        return self.a[anchors], self.b[anchors]

    def subset(self, items):
        items = items.to(self.a.device)
        return TensorPairs(self.a[items], self.b[items])

    def side_features(self):
        return self.a, self.b

    def to(self, device):
        return TensorPairs(self.a.to(device), self.b.to(device))


class ClassPairs(PairSource):
    """Same-class sampling: ``features`` N x D (one row per image), ``classes`` N class ids. A pair is an
    anchor image and another image of its class, drawn uniformly; every class needs two images."""

    def __init__(self, features, classes):
        classes = torch.as_tensor(classes, dtype=torch.long).flatten()
        if features.ndim != 2 or features.shape[0] != classes.shape[0]:
            raise MIError(f"features ({tuple(features.shape)}) and class ids ({tuple(classes.shape)}) must have "
                          "one row per image")
        self.features = features.float()
        self.classes = classes
        order = torch.argsort(classes, stable=True)
        sorted_classes = classes[order]
        _, counts = torch.unique_consecutive(sorted_classes, return_counts=True)
        if counts.numel() == 0 or int(counts.min()) < 2:
            raise MIError("same-class pairing needs at least two images of every class")
        starts = torch.cumsum(counts, 0) - counts
        group = torch.repeat_interleave(torch.arange(len(counts)), counts)
        self._order = order                            # item ids sorted by class
        self._start = starts[group]                    # per sorted position: where its class starts
        self._count = counts[group]                    # per sorted position: its class size
        self._rank = torch.empty_like(order)           # per item: its position in the sorted order
        self._rank[order] = torch.arange(len(order))

    @property
    def num_items(self):
        return self.features.shape[0]

    @property
    def dims(self):
        d = self.features.shape[1]
        return d, d

    def groups(self):
        return self.classes

    def partners(self, anchors, generator):
        """Another item of the same class for each anchor (uniform, never the anchor itself)."""
        pos = self._rank[anchors]
        start, count = self._start[pos], self._count[pos]
        r = (torch.rand(len(anchors), generator=generator) * (count - 1).float()).long()
        r = torch.minimum(r, count - 2)
        own = pos - start
        r = r + (r >= own).long()                      # skip the anchor's own slot
        return self._order[start + r]

    def _pairs(self, anchors, generator):
        partners = self.partners(anchors, generator)
        dev = self.features.device
        return self.features[anchors.to(dev)], self.features[partners.to(dev)]

    def subset(self, items):
        return ClassPairs(self.features[items.to(self.features.device)], self.classes[items])

    def side_features(self):
        return self.features, self.features

    def to(self, device):
        return ClassPairs(self.features.to(device), self.classes)


class ViewPairs(PairSource):
    """Augmentation pairing: ``views`` N x V x D, the features of V augmented views of each of N images. A
    pair is two different views of one image."""

    def __init__(self, views):
        if views.ndim != 3 or views.shape[1] < 2:
            raise MIError(f"view features must be N x V x D with V >= 2 views per image, got {tuple(views.shape)}")
        self.views = views.float()

    @property
    def num_items(self):
        return self.views.shape[0]

    @property
    def dims(self):
        d = self.views.shape[2]
        return d, d

    def _pairs(self, anchors, generator):
        v = self.views.shape[1]
        first = torch.randint(v, (len(anchors),), generator=generator)
        second = (first + torch.randint(1, v, (len(anchors),), generator=generator)) % v
        dev = self.views.device
        anchors = anchors.to(dev)
        return self.views[anchors, first.to(dev)], self.views[anchors, second.to(dev)]

    def subset(self, items):
        return ViewPairs(self.views[items.to(self.views.device)])

    def side_features(self):
        flat = self.views.reshape(-1, self.views.shape[2])
        return flat, flat

    def to(self, device):
        return ViewPairs(self.views.to(device))


# ---------------------------------------------------------------------------------------- estimation

def _seed_list(seeds):
    if isinstance(seeds, (int, np.integer)):
        return [int(seeds)]
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise MIError("no seeds given")
    return seeds


def _check_args(k_est, iters, holdout, eval_batches, form, checks=1):
    if isinstance(k_est, bool) or not isinstance(k_est, (int, np.integer)) or k_est < 2:
        raise MIError(f"k_est must be an integer >= 2, got {k_est!r}")
    if isinstance(iters, bool) or not isinstance(iters, (int, np.integer)) or iters < 1:
        raise MIError(f"iters must be a positive integer, got {iters!r}")
    if not 0.0 < float(holdout) < 1.0:
        raise MIError(f"holdout must be a fraction in (0, 1), got {holdout!r}")
    if isinstance(eval_batches, bool) or not isinstance(eval_batches, (int, np.integer)) or eval_batches < 1:
        raise MIError(f"eval_batches must be a positive integer, got {eval_batches!r}")
    if isinstance(checks, bool) or not isinstance(checks, (int, np.integer)) or checks < 1:
        raise MIError(f"checks must be a positive integer, got {checks!r}")
    if form not in FORMS:
        raise MIError(f"unknown bound form {form!r}; use {' or '.join(FORMS)}")


def _estimate_one(source, seed, *, k_est, iters, form, holdout, eval_batches, lr, hidden_dim, out_dim,
                  temperature, learn_temperature, device, log_every, checks):
    generator = torch.Generator().manual_seed(int(seed))
    rest, test = source.split(holdout, generator)
    train, val = rest.split(holdout, generator)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        critic = Critic(source.dims, train.stats(), hidden_dim=hidden_dim, out_dim=out_dim,
                        temperature=temperature, learn_temperature=learn_temperature).to(device)
    optimizer = torch.optim.Adam(critic.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: 0.5 * (1 + math.cos(math.pi * i / iters)))
    train, val, test = train.to(device), val.to(device), test.to(device)
    period = max(1, iters // checks)
    val_batches = max(1, min(eval_batches, 10))

    def mean_bound(pairs, batches):
        critic.eval()
        with torch.no_grad():
            values = [float(infonce_bound(*critic(*pairs.sample(k_est, generator)), critic.temperature, form))
                      for _ in range(batches)]
        critic.train()
        return values

    history = []  # (iteration, mean training bound since the last check, validation bound)
    best = (-math.inf, 0, None)
    window = []
    critic.train()
    for it in range(1, iters + 1):
        a, b = train.sample(k_est, generator)
        za, zb = critic(a, b)
        bound = infonce_bound(za, zb, critic.temperature, form)
        optimizer.zero_grad(set_to_none=True)
        (-bound).backward()
        optimizer.step()
        schedule.step()
        window.append(float(bound.detach()))
        if it % period == 0 or it == iters:
            val_bound = float(np.mean(mean_bound(val, val_batches)))
            history.append((it, float(np.mean(window)), val_bound))
            window = []
            if val_bound > best[0]:
                best = (val_bound, it, {k: v.detach().clone() for k, v in critic.state_dict().items()})
            if log_every and (len(history) % max(1, log_every // period) == 0):
                logger.info("seed %d iter %d/%d: training bound %.4f, validation bound %.4f nats, temperature %.4f",
                            seed, it, iters, history[-1][1], val_bound, float(critic.temperature.detach()))
    val_best, best_iter, state = best
    critic.load_state_dict(state)
    values = np.asarray(mean_bound(test, eval_batches))
    sem = float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else 0.0
    # still rising: the best critic is the last one and validation gained over the last fifth of training
    late = [v for i, _, v in history if i >= 0.8 * iters]
    still_rising = best_iter == iters and len(history) > 1 and late[-1] - late[0] > 0.02 if late else False
    train_at_best = next(t for i, t, _ in history if i == best_iter)
    return {"seed": int(seed), "mi_nats": float(values.mean()), "mi_bits": float(values.mean() / NATS_PER_BIT),
            "eval_sem_nats": sem, "train_mi_nats": train_at_best, "val_mi_nats": val_best, "best_iter": best_iter,
            "still_rising": bool(still_rising), "temperature": float(critic.temperature.detach()),
            "train_items": train.num_items, "val_items": val.num_items, "test_items": test.num_items}


def estimate_mi(source, features_b=None, *, k_est=256, iters=1000, seeds=(0,), form="infonce", holdout=0.25,
                eval_batches=50, lr=1e-3, hidden_dim=None, out_dim=128, temperature=0.1, learn_temperature=True,
                checks=20, device="cpu", log_every=0):
    """Post-training InfoNCE estimate of the MI between two sides of positive pairs (see the module docstring).

    ``source``: a :class:`PairSource`, or an N x D tensor whose rows pair with those of ``features_b``.
    ``seeds``: an int or a list; each seed gives one independent estimate (split, critic, batches).
    ``checks``: validation checks during training (the critic kept is the best one on validation).

    Returns a dict: ``mi_nats``, ``mi_bits`` (mean over seeds), ``mi_nats_std``, ``mi_bits_std`` (standard
    deviation over seeds, 0 for one seed), ``ceiling_nats``, ``ceiling_bits``, ``k_est``, ``form``,
    ``near_ceiling`` (estimate >= 95% of the ceiling), ``seeds``, ``per_seed`` (each: ``seed``, ``mi_nats``,
    ``mi_bits``, ``eval_sem_nats`` (standard error over the test batches), ``train_mi_nats`` and ``val_mi_nats``
    (the bound on training and validation batches at the kept critic), ``best_iter`` (its step),
    ``still_rising`` (validation still improving at the end: more ``iters`` would help), ``temperature``,
    ``train_items``, ``val_items``, ``test_items``),
    ``iters``, ``eval_batches``, ``holdout``, ``checks``, ``critic`` (its settings), ``warnings`` (sentences:
    near the ceiling, critic still improving, fewer test items than K_Est, critic fitting its training pairs
    much better than held-out ones, a negative estimate).
    """
    if isinstance(source, torch.Tensor):
        if features_b is None:
            raise MIError("paired features need features_b, the second member of each pair")
        source = TensorPairs(source, features_b)
    elif features_b is not None:
        raise MIError("features_b is only used with a tensor as the first argument")
    _check_args(k_est, iters, holdout, eval_batches, form, checks)
    k_est, iters, eval_batches = int(k_est), int(iters), int(eval_batches)
    seeds = _seed_list(seeds)
    groups = source.groups()
    if groups is not None:
        sizes = torch.bincount(groups)
        smallest = int(sizes[sizes > 0].min())
        if smallest < MIN_PER_CLASS:
            raise MIError(f"same-class pairing needs at least {MIN_PER_CLASS} items per class (2 each to train, "
                          f"validate and test the critic); one class has {smallest}")
    elif source.num_items < 6:
        raise MIError(f"{source.num_items} items are too few to train, validate and test a critic")
    device = torch.device(device)
    per_seed = [_estimate_one(source, s, k_est=k_est, iters=iters, form=form, holdout=float(holdout),
                              eval_batches=eval_batches, lr=lr, hidden_dim=hidden_dim, out_dim=out_dim,
                              temperature=temperature, learn_temperature=learn_temperature, device=device,
                              log_every=log_every, checks=int(checks))
                for s in seeds]
    values = np.asarray([r["mi_nats"] for r in per_seed])
    mean = float(values.mean())
    std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    ceiling = ceiling_nats(k_est, form)
    warnings = []
    if mean >= NEAR_CEILING * ceiling:
        name = "log K_Est" if form == "infonce" else "log(2 K_Est - 1)"
        warnings.append(f"the estimate ({mean:.3f} nats) is within {100 * (1 - NEAR_CEILING):.0f}% of the ceiling "
                        f"{name} = {ceiling:.3f} nats: the batch, not the encoder, limits it; raise K_Est")
    rising = [r["seed"] for r in per_seed if r["still_rising"]]
    if rising:
        warnings.append(f"the critic was still improving at the end of training (seeds {', '.join(map(str, rising))}): "
                        "the estimate may be low; raise the iterations")
    smallest = min(r["test_items"] for r in per_seed)
    if smallest < k_est:
        warnings.append(f"only {smallest} test items for batches of K_Est = {k_est} pairs: test batches repeat items "
                        "and the estimate varies with the split (see the spread over seeds); use more images")
    train_mean = float(np.mean([r["train_mi_nats"] for r in per_seed]))
    if train_mean - mean > max(0.2, 0.25 * abs(mean)):
        warnings.append(f"the critic scores its training pairs well above held-out ones ({train_mean:.3f} vs "
                        f"{mean:.3f} nats): it memorises its few training images, so the held-out estimate is a "
                        "loose lower bound; more images would tighten it")
    if mean < 0:
        warnings.append(f"the estimate is negative ({mean / NATS_PER_BIT:.3f} bits): the critic found no dependence "
                        "that holds on held-out items, and a negative InfoNCE bound says only MI >= 0 (read it as "
                        "0, not as an ordering); give the critic more training pairs (more images, or more views "
                        "per image for augmentation pairing)")
    return {"mi_nats": mean, "mi_bits": mean / NATS_PER_BIT, "mi_nats_std": std, "mi_bits_std": std / NATS_PER_BIT,
            "ceiling_nats": ceiling, "ceiling_bits": ceiling / NATS_PER_BIT, "k_est": k_est, "form": form,
            "near_ceiling": bool(mean >= NEAR_CEILING * ceiling), "seeds": seeds, "per_seed": per_seed,
            "iters": iters, "eval_batches": eval_batches, "holdout": float(holdout), "checks": int(checks),
            "warnings": warnings,
            "critic": {"hidden_dim": hidden_dim or min(max(source.dims[0], 256), 2048), "out_dim": out_dim,
                       "initial_temperature": temperature, "learn_temperature": bool(learn_temperature),
                       "lr": lr, "optimizer": "adam, cosine decay"}}


# ------------------------------------------------------------------------- classes, entropy, pairing

class Pairing:
    """A parsed ``--pairing``: ``kind`` ``"simclr"`` or ``"class"``; ``attributes`` (class pairing) the label
    columns whose joint value defines the class."""

    def __init__(self, kind, attributes=()):
        self.kind = kind
        self.attributes = list(attributes)

    @property
    def spec(self):
        return "simclr" if self.kind == "simclr" else "class:" + "+".join(self.attributes)

    def __repr__(self):
        return f"Pairing({self.spec!r})"


def parse_pairing(spec, attributes=None):
    """``simclr``, ``class`` (every attribute), ``class:all`` or ``class:a+b`` (those attributes of the data,
    e.g. ``class:color+digit`` for CDP; also comma-separated). ``attributes``: the data's attribute names
    (checked when given; needed to expand ``all``)."""
    spec = str(spec).strip()
    if spec == "simclr":
        return Pairing("simclr")
    kind, _, rest = spec.partition(":")
    if kind != "class":
        raise MIError(f"unknown pairing {spec!r}; use simclr, class, class:all or class:<attr>[+<attr>...]")
    names = [n.strip() for n in rest.replace(",", "+").split("+") if n.strip()]
    if not names or names == ["all"]:
        if attributes is None:
            raise MIError(f"pairing {spec!r} needs the data's attribute names to expand")
        return Pairing("class", attributes)
    if len(set(names)) != len(names):
        raise MIError(f"pairing {spec!r} names an attribute twice")
    if attributes is not None:
        unknown = [n for n in names if n not in attributes]
        if unknown:
            raise MIError(f"pairing {spec!r}: the data has no attribute {unknown[0]!r} "
                          f"(it has: {', '.join(attributes)}; or use class:all)")
        names = [a for a in attributes if a in names]  # the data's column order
    return Pairing("class", names)


def class_ids(labels, columns):
    """Joint class id (0..M-1, in sorted order of the label tuples) of the chosen columns of ``labels``
    (N x A integer tensor); returns ``(ids, num_classes)``."""
    labels = torch.as_tensor(labels, dtype=torch.long)
    if labels.ndim == 1:
        labels = labels[:, None]
    chosen = labels[:, list(columns)]
    _, ids = torch.unique(chosen, dim=0, return_inverse=True)
    return ids, int(ids.max()) + 1 if len(ids) else 0


def entropy_bits(ids):
    """Empirical (plug-in) entropy of integer class ids, in bits."""
    counts = torch.bincount(torch.as_tensor(ids, dtype=torch.long).flatten()).double()
    p = counts[counts > 0] / counts.sum()
    return float(-(p * p.log2()).sum())


def perfect_encoder_bound(class_probs, k_est, form="infonce"):
    """Expected bound (nats) of an encoder that keeps exactly the class, under same-class sampling.

    The optimal critic scores ``log(1[same class] / p(c))``; an anchor of class ``c`` then sees
    ``1 + N`` equal top scores, ``N`` the same-class negatives of its batch, so its bound is
    ``log(K / (1 + N))`` (``K = K_Est`` candidates; ntxent: ``2 K_Est - 1``). ``N`` is binomial with
    ``K - 1`` trials (ntxent: ``2 K_Est - 2``) of probability ``p(c)``; the result is the average over
    ``c ~ p``. It tends to ``H(C)`` (nats) as ``K_Est`` grows, and is below ``log K``.
    """
    p = np.asarray(class_probs, dtype=np.float64)
    p = p[p > 0] / p.sum()
    k = int(k_est)
    candidates, trials = (k, k - 1) if form == "infonce" else (2 * k - 1, 2 * k - 2)
    total = 0.0
    for pc in p:
        if pc >= 1.0:
            total += pc * (math.log(candidates) - math.log1p(trials))
            continue
        # the binomial pmf where it matters: mean +- 12 standard deviations (and at least 0..64)
        mean, sd = trials * pc, math.sqrt(trials * pc * (1 - pc))
        lo, hi = max(0, int(mean - 12 * sd) - 64), min(trials, int(mean + 12 * sd) + 64)
        n = torch.arange(lo, hi + 1, dtype=torch.float64)
        log_pmf = (math.lgamma(trials + 1) - torch.lgamma(n + 1) - torch.lgamma(trials - n + 1)
                   + n * math.log(pc) + (trials - n) * math.log1p(-pc))
        total += pc * float((log_pmf.exp() * (math.log(candidates) - torch.log1p(n))).sum())
    return total


def _k_for_class_entropy(class_probs, form, fraction=0.95, limit=1 << 20):
    """Smallest power-of-two K_Est at which a perfect encoder reaches ``fraction`` of H(C), or None."""
    p = np.asarray(class_probs, dtype=np.float64)
    p = p[p > 0] / p.sum()
    target = fraction * float(-(p * np.log(p)).sum())
    k = 2
    while k <= limit:
        if perfect_encoder_bound(p, k, form) >= target:
            return k
        k *= 2
    return None


# -------------------------------------------------------------------------- features from an encoder

class _ImageFeatures(torch.utils.data.Dataset):
    """uint8 tensors of image ``i`` of a labelled dataset through a view pipeline: 3 x S x S (one view) or
    V x 3 x S x S (``num_views`` augmented views, seeded by the image index)."""

    def __init__(self, dataset, pipeline, num_views, seed):
        self.dataset, self.pipeline, self.num_views, self.seed = dataset, pipeline, num_views, int(seed)

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        from pretrain.views import sample_seed

        out = self.pipeline(self.dataset.load(i), sample_seed(self.seed, 0, i))
        views = [out[f"view{v + 1}"] for v in range(self.num_views)]
        return views[0] if self.num_views == 1 else torch.stack(views)


@torch.no_grad()
def extract_features(encoder, dataset, pipeline, *, num_views=1, batch_size=64, num_workers=0, seed=0):
    """Features of every image of ``dataset`` (anything with ``load(i)`` and ``len``): N x D for one view,
    N x V x D for ``num_views`` views. ``pipeline`` is a :class:`pretrain.views.ViewPipeline` whose
    ``num_views`` matches."""
    loader = torch.utils.data.DataLoader(_ImageFeatures(dataset, pipeline, num_views, seed), batch_size=batch_size,
                                         shuffle=False, num_workers=num_workers)
    out = []
    for batch in loader:
        if num_views == 1:
            out.append(encoder(batch).float().cpu())
        else:
            n, v = batch.shape[:2]
            out.append(encoder(batch.flatten(0, 1)).float().cpu().view(n, v, -1))
    return torch.cat(out)


def _view_pipeline(views, image_size, num_views):
    """A view pipeline by registered name or from a pretraining config YAML (its INPUT.VIEWS and INPUT.*)."""
    from pretrain.config import ConfigError, load_config
    from pretrain.views import VIEWS, build_views

    if views.endswith((".yaml", ".yml")) or os.path.isfile(views):
        try:
            cfg = load_config(views)
        except ConfigError as e:
            raise MIError(f"--views {views}: {e}") from None
        name = cfg.INPUT.VIEWS
    else:
        from pretrain.config import get_cfg

        cfg, name = get_cfg(), views
    if name not in VIEWS:
        raise MIError(f"unknown view pipeline {name!r}; registered: {', '.join(sorted(VIEWS))} "
                      "(or a pretraining config .yaml)")
    cfg.INPUT.SIZE = int(image_size) if image_size else cfg.INPUT.SIZE
    cfg.INPUT.NUM_VIEWS = int(num_views)
    cfg.JIGSAW.ENABLED = False
    return build_views(cfg, name), name, cfg.INPUT.SIZE


def select_classes(dataset, pairing, *, min_per_class=MIN_PER_CLASS):
    """Same-class pairing over a labelled dataset (``attributes``, ``labels``): ``(keep, ids, info)`` with
    ``keep`` the images used (classes of fewer than ``min_per_class`` images are left out, with a warning in
    ``info``), ``ids`` their joint class ids (0..M-1) and ``info`` the class count and entropy. Raises
    :class:`MIError` when fewer than two classes remain. Reads labels only, no image."""
    columns = [dataset.attributes.index(a) for a in pairing.attributes]
    ids, _ = class_ids(dataset.labels, columns)
    counts = torch.bincount(ids)
    keep_class = counts >= min_per_class
    warnings = []
    if not bool(keep_class.all()):
        dropped = int((~keep_class & (counts > 0)).sum())
        warnings.append(f"{dropped} of {len(counts)} classes have fewer than {min_per_class} images and are left out")
    if int(keep_class.sum()) < 2:
        raise MIError(f"pairing {pairing.spec}: fewer than 2 classes with at least {min_per_class} images each; "
                      "same-class pairing needs more images per class")
    keep = keep_class[ids]
    ids, num_classes = class_ids(ids[keep], [0])
    probs = torch.bincount(ids).double() / len(ids)
    info = {"class_attributes": list(pairing.attributes), "num_classes": num_classes, "num_images": int(keep.sum()),
            "class_entropy_bits": entropy_bits(ids), "class_probs": probs.tolist(), "warnings": warnings}
    return keep, ids, info


def build_pairs(dataset, pairing, features, *, min_per_class=MIN_PER_CLASS):
    """The pair source and a description for ``pairing`` over ``dataset`` (a labelled dataset with
    ``attributes`` and ``labels``) and its ``features`` (N x D, or N x V x D for simclr); class pairing
    goes through :func:`select_classes`."""
    info = {"pairing": pairing.spec, "pairing_kind": pairing.kind}
    if pairing.kind == "simclr":
        info.update(num_images=int(features.shape[0]), warnings=[])
        return ViewPairs(features), info
    keep, ids, selected = select_classes(dataset, pairing, min_per_class=min_per_class)
    info.update(selected)
    return ClassPairs(features[keep], ids), info


def estimate_encoder_mi(weights, data, pairing, *, k_est=256, iters=1000, seeds=(0, 1, 2), form="infonce",
                        views="moco_v2", views_per_image=4, image_size=224, holdout=0.25, eval_batches=50,
                        max_images=0, batch_size=64, num_workers=4, device="auto", fmt="auto",
                        trust_pickle=False, backbone_name=None, log_every=0):
    """The whole post-training estimate for a weights file and an image folder; returns the mi.json dict.

    ``data``: a folder with ``labels.csv`` or an ImageFolder (:class:`pretrain.labeled.LabeledImages`).
    ``pairing``: a spec for :func:`parse_pairing`. Class pairing encodes each image once through the
    ``eval`` views (resize, centre crop to ``image_size``); ``simclr`` pairing encodes ``views_per_image``
    augmented views per image from ``views`` (a registered pipeline name or a pretraining config .yaml),
    seeded per image, once for all seeds. ``max_images`` > 0 uses a fixed random subset of the images.
    Raises :class:`MIError` (and the loaders' one-line errors: ``FrozenEncoderError``, ``LabeledDataError``).
    """
    from pretrain.frozen import load_frozen_encoder
    from pretrain.labeled import LabeledImages

    start = time.perf_counter()
    _check_args(k_est, iters, holdout, eval_batches, form)
    seeds = _seed_list(seeds)
    if isinstance(views_per_image, bool) or not isinstance(views_per_image, int) or views_per_image < 2:
        raise MIError(f"views_per_image must be an integer >= 2, got {views_per_image!r}")
    # validate everything cheap before loading weights or decoding images
    dataset = LabeledImages(data)
    spec = parse_pairing(pairing, dataset.attributes)
    if spec.kind == "simclr":
        pipeline, views_name, size = _view_pipeline(views, image_size, views_per_image)
        num_views = views_per_image
    else:
        pipeline, views_name, size = _view_pipeline("eval", image_size, 1)
        num_views = 1
    if max_images and max_images < len(dataset):
        keep = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0))[:max_images]
        dataset = _Subset(dataset, torch.sort(keep).values)
    if spec.kind == "class":  # the classes that can be paired; only their images are encoded
        keep, _, _ = select_classes(dataset, spec)
        if not bool(keep.all()):
            dataset = _Subset(dataset, torch.nonzero(keep).flatten())
    encoder = load_frozen_encoder(weights, fmt=fmt, trust_pickle=trust_pickle, device=device)
    loaded = time.perf_counter()
    features = extract_features(encoder, dataset, pipeline, num_views=num_views, batch_size=batch_size,
                                num_workers=num_workers)
    encoded = time.perf_counter()
    source, info = build_pairs(dataset, spec, features)
    result = estimate_mi(source, k_est=k_est, iters=iters, seeds=seeds, form=form, holdout=holdout,
                         eval_batches=eval_batches, device=encoder.device, log_every=log_every)
    done = time.perf_counter()

    report = {"weights": os.fspath(weights),
              "backbone": backbone_name or weights_stem(weights),
              "encoder": encoder.description, "feature_dim": encoder.feature_dim,
              "data": os.fspath(data), "attributes": list(dataset.attributes)}
    report.update({k: v for k, v in info.items() if k not in ("warnings", "class_probs")})
    report.update(result)
    report["image_size"] = size
    if spec.kind == "simclr":
        report.update(views=views_name, views_per_image=views_per_image)
    else:
        report["views"] = "eval"
    warnings = list(info["warnings"]) + list(result["warnings"])
    if spec.kind == "class":
        h_bits = info["class_entropy_bits"]
        perfect = perfect_encoder_bound(info["class_probs"], k_est, form)
        report["perfect_encoder_nats"] = perfect
        report["perfect_encoder_bits"] = perfect / NATS_PER_BIT
        report["fraction_of_perfect"] = result["mi_nats"] / perfect if perfect > 0 else None
        h_nats = h_bits * NATS_PER_BIT
        if perfect < NEAR_CEILING * h_nats:
            needed = _k_for_class_entropy(info["class_probs"], form)
            more = f"; K_Est >= {needed} would allow 95% of H(C)" if needed else ""
            warnings.append(f"with K_Est = {k_est} even a perfect encoder reaches only {perfect / NATS_PER_BIT:.2f} "
                            f"bits of H(C) = {h_bits:.2f} bits (same-class negatives in the batch, the ceiling){more}")
        if result["mi_nats"] > h_nats + 2 * max(result["mi_nats_std"], 0.01):
            warnings.append(f"the estimate ({result['mi_bits']:.2f} bits) exceeds H(C) = {h_bits:.2f} bits, which "
                            "a same-class pairing cannot do: are images duplicated across classes or splits?")
    report["warnings"] = warnings
    report["timing"] = {"load_s": round(loaded - start, 3), "features_s": round(encoded - loaded, 3),
                        "estimate_s": round(done - encoded, 3), "total_s": round(done - start, 3)}
    report["device"] = str(encoder.device)
    return report


class _Subset:
    """A fixed subset of a labelled dataset (``load``, ``labels``, ``attributes``, ``len``)."""

    def __init__(self, dataset, items):
        if isinstance(dataset, _Subset):  # a subset of a subset: index the original
            dataset, items = dataset.dataset, dataset.items[items]
        self.dataset, self.items = dataset, items
        self.attributes = dataset.attributes
        self.classes = dataset.classes
        self.labels = dataset.labels[items]

    def load(self, i):
        return self.dataset.load(int(self.items[i]))

    def __len__(self):
        return len(self.items)


def weights_stem(path):
    base = os.path.basename(os.fspath(path).rstrip("/"))
    for suffix in (".pth.tar", ".safetensors", ".pkl", ".pth", ".pt", ".ckpt"):
        if base.endswith(suffix):
            return base[: -len(suffix)]
    return os.path.splitext(base)[0]
