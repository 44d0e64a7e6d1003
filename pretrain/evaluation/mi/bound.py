"""The InfoNCE bound on mutual information: its two forms, its ceiling, and the best a perfect encoder can reach.

A batch holds ``K_Est`` positive pairs ``(a_i, b_i)``. The critic scores ``s_ij = g(a_i) . g(b_j) / t``
(:class:`pretrain.evaluation.mi.critic.Critic`). Each anchor ``a_i`` has one positive ``b_i`` and
``K_Est - 1`` negatives ``b_j`` (the other pairs' second members), and symmetrically for ``b_i``::

    I(A; B) >= I_hat = log K_Est - 1/2 [CE(s, diag) + CE(s^T, diag)]          ceiling: log K_Est

(``form="infonce"``, the default; both directions are InfoNCE bounds, so is their mean). ``form="ntxent"`` is
Lee et al.'s Eq. (2)-(4) exactly: the 2 K_Est - 2 other members of the batch, of both sides, are the
negatives, ceiling ``log(2 K_Est - 1)``; use it to compare with their numbers. Either way the estimate can
never exceed the ceiling: when it comes close (within 5%), the batch, not the encoder, limits it.
"""
import math

import numpy as np
import torch
import torch.nn.functional as F

from pretrain.methods.base import mi_ceiling

__all__ = ["FORMS", "NATS_PER_BIT", "NEAR_CEILING", "MIError", "ceiling_nats", "infonce_bound",
           "perfect_encoder_bound", "k_for_class_entropy"]

FORMS = ("infonce", "ntxent")
NATS_PER_BIT = math.log(2.0)
NEAR_CEILING = 0.95  # warn when the estimate reaches this fraction of the ceiling


class MIError(ValueError):
    """Bad arguments or data for MI estimation; one line naming what to change."""



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



def k_for_class_entropy(class_probs, form, fraction=0.95, limit=1 << 20):
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

