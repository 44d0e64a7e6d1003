"""Ball discrimination (BALL) and BALL+ (Wu et al. 2020, Sec. 5, Lemma 5.1).

BALL is IR (:mod:`pretrain.methods.ir`: encoder, memory bank, InfoNCE form) with the negatives restricted to
the background set ``B_i``: the ``BALL.NEIGHBOURS`` (4096) bank entries closest (inner product) to the
current embedding, or ``BALL.FRACTION`` of the bank, ``i`` excluded (:class:`pretrain.methods.negatives.BallSampler`)::

    loss = -log exp(f.M_i/t) / (exp(f.M_i/t) + sum_{j in B_i} exp(f.M_j/t))

When ``|B_i|`` exceeds ``BANK.NUM_NEGATIVES`` (K), K negatives are drawn uniformly from ``B_i``. The logged
bound ``log(K + 1) - loss`` is Wu et al.'s VINCE bound (looser than InfoNCE's, Corollary 4.1.1).

BALL+ (registry name ``ball_plus``) anneals ``B_i`` from the whole bank (``BALL.ANNEAL_START`` 1.0: IR) down
to the BALL size on ``BALL.ANNEAL_SCHEDULE`` over ``BALL.ANNEAL_EPOCHS``; the class turns ``BALL.ANNEAL`` on
whatever the config says. Plain ``ball`` follows ``BALL.ANNEAL`` (so ``ball`` with ``BALL.ANNEAL True`` is
BALL+ too, logged under the name ``ball``).
"""
from pretrain.methods.ir import BankMethod

__all__ = ["Ball", "BallPlus"]


class Ball(BankMethod):
    sampler_kind = "ball"

    @classmethod
    def check_config(cls, cfg):
        super().check_config(cfg)
        cls._check_ball(cfg)

    def extra_logs(self):
        return {"background_size": self.sampler.last_background_size}


class BallPlus(Ball):
    """BALL with the annealed background set (``BALL.ANNEAL`` forced on)."""

    anneal = True
