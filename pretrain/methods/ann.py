"""Annulus discrimination (ANN) and ANN+ (Wu et al. 2020, Sec. 5, Lemma 5.1).

ANN is BALL (:mod:`pretrain.methods.ball`) with the close-neighbour set ``C_i`` removed from the negatives:
``C_i`` = the bank entries that share ``i``'s cluster in any of ``CLUSTER.RUNS`` (10) k-means runs of the
bank with ``CLUSTER.K`` clusters (30000 on ImageNet, 300 on CIFAR10), recomputed at every epoch start on
rank 0 and broadcast (:class:`pretrain.methods.negatives.AnnSampler`)::

    loss = -log exp(f.M_i/t) / (exp(f.M_i/t) + sum_{j in B_i \\ C_i} exp(f.M_j/t))

The negative sets differ in size from sample to sample (masked logits); the logged ``num_negatives`` and
the MI ceiling ``log(K + 1)`` use their mean size. The cluster assignments are checkpointed (the method's
``extra_state``), so a resumed run contrasts against the clusters of an uninterrupted one.

ANN+ (registry name ``ann_plus``) anneals both sets (``BALL.ANNEAL`` and ``CLUSTER.ANNEAL`` forced on):
``B_i`` shrinks from the whole bank as in BALL+, and ``C_i`` grows from empty to full with the same
weight ``w`` of the schedule: the first ``round(w x RUNS)`` k-means runs define ``C_i`` (see
:mod:`pretrain.methods.negatives`). So ANN+ starts as IR and ends as ANN. Plain ``ann`` follows the two config
keys.
"""
from pretrain.methods.ball import Ball

__all__ = ["Ann", "AnnPlus"]


class Ann(Ball):
    sampler_kind = "ann"

    @classmethod
    def check_config(cls, cfg):
        super().check_config(cfg)
        cls._check_cluster(cfg)

    def extra_logs(self):
        logs = super().extra_logs()
        logs["close_runs"] = self.sampler.close_runs(self._iter)
        return logs


class AnnPlus(Ann):
    """ANN with annealed background and close-neighbour sets (``BALL.ANNEAL``, ``CLUSTER.ANNEAL`` forced on)."""

    anneal = True
    anneal_close = True
