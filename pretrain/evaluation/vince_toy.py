"""The toy example of Wu et al. (2020), Sec. 4.1 and Table 1: VINCE is a looser MI bound than InfoNCE.

Data (Sec. 4.1): ``z ~ N(0, S_z)``, ``eps ~ N(0, S_eps)`` with ``S_z = [[1, -0.5], [-0.5, 1]]`` and
``S_eps = [[1, 0.9], [0.9, 1]]``; ``(x, y) = z + eps`` is jointly Gaussian with ``S = S_z + S_eps =
[[2, 0.4], [0.4, 2]]``, so ``I(X; Y) = -1/2 log(1 - S_12 S_21 / (S_11 S_22)) = -1/2 log(0.96) = 0.02041``
nats (:func:`analytic_mi`; :func:`monte_carlo_mi` checks it as ``E[log p(x, y) - log p(x) - log p(y)]``).

Estimator (Appendix B.1 and Sec. 3): the critic is IR's witness function, ``s(x, y) = g(x) . g(y) / t`` with
one encoder ``g`` for both variables, a "5-layer MLP with 10 hidden dimensions and ReLU nonlinearities" (five
linear layers, 10 units wide, a 10-d output), L2-normalised, temperature ``t = 0.07`` (Appendix B.3's). The
memory bank holds ``g(y_j)`` of every training point; here it is recomputed at every step (2000 scalars through
a tiny MLP cost less than keeping it stale), so that the positive and the negatives are scored by the same
encoder. Each point ``(x_i, y_i)`` is scored against its own ``y_i`` and ``K - 1 = 100`` negatives drawn
i.i.d. from the bank (the point itself excluded), and the bound is::

    I_hat = E[ s(x_i, y_i) - log( 1/K (exp s(x_i, y_i) + sum_j exp s(x_i, y_j)) ) ]   <= log K

- **InfoNCE**: negatives uniform over the bank;
- **VINCE (p%)**: negatives uniform over the ``p%`` of bank points closest (L2) to ``g(y_i)``: "50% would
  indicate that negative samples can only be drawn from the 50% of examples whose representation is closest
  to g(y_1)" (Sec. 4.1); a smaller p is a larger threshold tau, a harder negative set and a looser bound
  (Corollary 4.1.1).

Each setting trains its own critic on its own objective: Adam (lr 0.03, batch 128, no weight decay) for 100
epochs on 2000 points. The estimate is then read with the trained encoder on a fresh held-out sample of the
same size (its own exact bank, ``eval_draws`` draws of negatives per point), so that a critic that memorised
its training pairs cannot inflate it; ``evaluate_on="train"`` reads it on the training sample instead. Each
seed draws its own data, initialisation and negatives; a setting reports the mean and sample standard
deviation over seeds.

Why this critic: with two separate, unnormalised encoders (``shared=False, normalize=False``) the "p% closest
in g-space" set is no longer the set of high critic values that Corollary 4.1.1 restricts to, and training on
the VINCE objective learns to tell y_1 from its g-space neighbours: the "estimate" then exceeds the true MI
(e.g. 0.2-0.35 nats at p = 75-90% after 30 epochs), no bound at all. With IR's critic a neighbour in g-space
also has a close critic value (|s(x, y_1) - s(x, y_j)| <= |g(y_1) - g(y_j)| / t), which is what the corollary
needs, and the estimates fall with p as in Table 1.

Measured (``tools/vince_toy.py`` defaults: 5 seeds, 2000 points, 100 epochs, held-out reading; 647 s on 2
busy CPU cores), ours vs the paper's Table 1 (mean +- std over seeds)::

    True            0.02041                 0.02041
    InfoNCE         0.0147   +- 0.002       0.01345 +- 0.001
    VINCE (90%)     0.00786  +- 0.003       0.01241 +- 3e-4
    VINCE (75%)     4.4e-06  +- 8e-06       0.00220 +- 1e-4
    VINCE (50%)    -5e-08    +- 2e-07       7.29e-5 +- 9e-6
    VINCE (25%)     1.2e-07  +- 7e-08       1.67e-5 +- 2e-6
    VINCE (10%)    -6e-08    +- 2e-07       5.87e-6 +- 1e-6
    VINCE (5%)     -1.3e-07  +- 2e-07       1.97e-6 +- 4e-6

The ordering is the paper's (InfoNCE below the truth, VINCE looser as p shrinks, next to nothing from 50% on);
our bound collapses a little earlier (75%), and below 50% the critic is constant to float32 precision.

``run_table()`` runs every setting of Table 1; ``tools/vince_toy.py`` prints it next to the paper's numbers
(:data:`PAPER_TABLE1`).
"""
import math
import statistics
import time
from dataclasses import dataclass, field

import torch
from torch import nn

__all__ = ["SIGMA_Z", "SIGMA_EPS", "SIGMA", "PAPER_TRUE_MI", "PAPER_TABLE1", "PERCENTS", "analytic_mi",
           "monte_carlo_mi", "sample", "mlp", "ToyCritic", "vince_bound", "train_estimator", "Setting",
           "run_table", "format_table"]

SIGMA_Z = ((1.0, -0.5), (-0.5, 1.0))
SIGMA_EPS = ((1.0, 0.9), (0.9, 1.0))
SIGMA = tuple(tuple(a + b for a, b in zip(ra, rb)) for ra, rb in zip(SIGMA_Z, SIGMA_EPS))  # ((2, .4), (.4, 2))
PERCENTS = (90, 75, 50, 25, 10, 5)
PAPER_TRUE_MI = 0.02041
# Table 1 of Wu et al. 2020: (mean, std over 5 seeds); None = InfoNCE
PAPER_TABLE1 = {None: (0.01345, 0.001), 90: (0.01241, 3e-4), 75: (0.00220, 1e-4), 50: (7.29e-5, 9e-6),
                25: (1.67e-5, 2e-6), 10: (5.87e-6, 1e-6), 5: (1.97e-6, 4e-6)}


def analytic_mi(cov=SIGMA):
    """I(X; Y) in nats of a bivariate Gaussian with covariance ``cov``: -1/2 log(1 - s12 s21 / (s11 s22))."""
    (s11, s12), (s21, s22) = cov
    return -0.5 * math.log(1.0 - s12 * s21 / (s11 * s22))


def _covariance(cov):
    return torch.tensor(cov, dtype=torch.float64)


def sample(n, generator=None, cov_z=SIGMA_Z, cov_eps=SIGMA_EPS):
    """``n`` pairs ``(x, y) = z + eps`` as two n x 1 float32 tensors."""
    z = torch.distributions.MultivariateNormal(torch.zeros(2, dtype=torch.float64), _covariance(cov_z))
    e = torch.distributions.MultivariateNormal(torch.zeros(2, dtype=torch.float64), _covariance(cov_eps))
    lz = torch.linalg.cholesky(z.covariance_matrix)
    le = torch.linalg.cholesky(e.covariance_matrix)
    xy = torch.randn(n, 2, generator=generator, dtype=torch.float64) @ lz.T
    xy = xy + torch.randn(n, 2, generator=generator, dtype=torch.float64) @ le.T
    xy = xy.float()
    return xy[:, :1], xy[:, 1:]


def monte_carlo_mi(n=200000, seed=0):
    """``E[log p(x, y) - log p(x) - log p(y)]`` over ``n`` sampled pairs (the densities of the summed
    covariance): an independent check of :func:`analytic_mi`. Returns (estimate, standard error)."""
    g = torch.Generator().manual_seed(seed)
    x, y = sample(n, g)
    xy = torch.cat([x, y], 1).double()
    cov = _covariance(SIGMA)
    joint = torch.distributions.MultivariateNormal(torch.zeros(2, dtype=torch.float64), cov)
    px = torch.distributions.Normal(0.0, math.sqrt(cov[0, 0]))
    py = torch.distributions.Normal(0.0, math.sqrt(cov[1, 1]))
    pmi = joint.log_prob(xy) - px.log_prob(xy[:, 0]) - py.log_prob(xy[:, 1])
    return float(pmi.mean()), float(pmi.std() / math.sqrt(n))


def mlp(width=10, depth=5, dim_in=1, dim_out=10):
    """``depth`` linear layers, ``width`` hidden units, ReLU between them."""
    layers, d = [], dim_in
    for _ in range(depth - 1):
        layers += [nn.Linear(d, width), nn.ReLU()]
        d = width
    layers.append(nn.Linear(d, dim_out))
    return nn.Sequential(*layers)


class ToyCritic(nn.Module):
    """``s(x, y) = f(x) . h(y)``: by default IR's witness, ``f(x) = n(g(x)) / t`` and ``h(y) = n(g(y))`` with one
    MLP ``g`` and ``n`` the L2 normalisation; ``shared=False`` gives ``x`` its own MLP, ``normalize=False``
    drops the normalisation and the temperature (plain dot product)."""

    def __init__(self, width=10, depth=5, dim=10, shared=True, normalize=True, temperature=0.07):
        super().__init__()
        self.g = mlp(width, depth, 1, dim)
        self.g_x = None if shared else mlp(width, depth, 1, dim)
        self.normalize = bool(normalize)
        self.temperature = float(temperature)

    def embed_y(self, y):
        z = self.g(y)
        return nn.functional.normalize(z, dim=1) if self.normalize else z

    def embed_x(self, x):
        z = self.g(x) if self.g_x is None else self.g_x(x)
        return nn.functional.normalize(z, dim=1) / self.temperature if self.normalize else z


def _negatives(anchor, bank, own, percent, k, generator):
    """Indices (B x k) of negatives for each row, drawn i.i.d.: uniform over the bank (``percent`` None or
    100), or uniform over the ``percent``% of bank entries closest (L2) to ``anchor``; the row's own entry
    ``own`` is never drawn."""
    n, b = bank.shape[0], anchor.shape[0]
    if percent is None or percent >= 100:
        draw = torch.randint(0, n - 1, (b, k), generator=generator)
        return draw + (draw >= own[:, None]).long()  # skip the row's own index
    m = max(1, math.ceil(percent / 100.0 * (n - 1)))
    dist = torch.cdist(anchor, bank)
    dist[torch.arange(b), own] = float("inf")
    threshold = dist.kthvalue(m, dim=1, keepdim=True).values
    eligible = (dist <= threshold).cumsum(1)  # ties at the threshold may add an entry or two
    count = eligible[:, -1:]
    rank = (torch.rand(b, k, generator=generator) * count).long().clamp_max(count - 1) + 1
    return torch.searchsorted(eligible, rank)


def vince_bound(fx, gy_all, own, percent, k, generator):
    """Per-row bound ``s_pos - logsumexp([s_pos, s_neg]) + log(K)`` (K = k + 1) of the rows ``own`` of the
    sample: ``fx`` = f(x_own) (B x d), ``gy_all`` = g(y) of the whole sample (N x d, the bank)."""
    gy = gy_all[own]
    neg = _negatives(gy.detach(), gy_all.detach(), own, percent, k, generator)
    s_pos = (fx * gy).sum(1, keepdim=True)
    s_neg = torch.einsum("bd,bkd->bk", fx, gy_all[neg])
    scores = torch.cat([s_pos, s_neg], 1)
    return s_pos[:, 0] - torch.logsumexp(scores, 1) + math.log(k + 1)


@torch.no_grad()
def _evaluate(critic, x, y, percent, k, draws, generator, chunk=500):
    gy_all, fx = critic.embed_y(y), critic.embed_x(x)
    total = 0.0
    for _ in range(draws):
        for s in range(0, len(x), chunk):
            own = torch.arange(s, min(s + chunk, len(x)))
            total += float(vince_bound(fx[own], gy_all, own, percent, k, generator).sum())
    return total / (draws * len(x))


def train_estimator(percent=None, *, seed=0, n=2000, epochs=100, batch_size=128, lr=0.03, negatives=100,
                    width=10, depth=5, dim=10, shared=True, normalize=True, temperature=0.07,
                    evaluate_on="heldout", eval_draws=10):
    """Fit the critic with InfoNCE (``percent`` None) or VINCE (``percent`` in (0, 100)) and return the
    estimated MI (nats); see the module docstring."""
    if percent is not None and not 0 < percent <= 100:
        raise ValueError(f"VINCE percent {percent} must be in (0, 100]")
    if evaluate_on not in ("heldout", "train"):
        raise ValueError(f"evaluate_on {evaluate_on!r}: use heldout or train")
    g = torch.Generator().manual_seed(seed)
    x, y = sample(n, g)
    torch.manual_seed(seed)
    critic = ToyCritic(width, depth, dim, shared=shared, normalize=normalize, temperature=temperature)
    optimizer = torch.optim.Adam(critic.parameters(), lr=lr, weight_decay=0.0)
    for _ in range(epochs):
        order = torch.randperm(n, generator=g)
        for s in range(0, n, batch_size):
            idx = order[s:s + batch_size]
            # the bank: the embedding of every training y, recomputed at every step (n scalars through a
            # tiny MLP), so that the positive and the negatives are scored by the same encoder
            loss = -vince_bound(critic.embed_x(x[idx]), critic.embed_y(y), idx, percent, negatives, g).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    if evaluate_on == "heldout":
        x, y = sample(n, g)
    return _evaluate(critic, x, y, percent, negatives, eval_draws, g)


@dataclass
class Setting:
    """One row of Table 1: InfoNCE (``percent`` None) or VINCE at ``percent``."""

    percent: int = None
    estimates: list = field(default_factory=list)  # one per seed
    seconds: float = 0.0

    @property
    def name(self):
        return "InfoNCE" if self.percent is None else f"VINCE ({self.percent}%)"

    @property
    def mean(self):
        return statistics.fmean(self.estimates)

    @property
    def std(self):
        return statistics.stdev(self.estimates) if len(self.estimates) > 1 else 0.0


def run_table(percents=PERCENTS, seeds=5, progress=None, **kwargs):
    """InfoNCE and VINCE at every percent, ``seeds`` seeds each (0 .. seeds-1); ``kwargs`` go to
    :func:`train_estimator` (``n``, ``epochs``, ...). ``progress(setting, seed, estimate)`` is called after
    each fit. Returns the :class:`Setting` rows in Table 1's order."""
    rows = []
    for percent in (None, *percents):
        row = Setting(percent)
        start = time.perf_counter()
        for seed in range(seeds):
            row.estimates.append(train_estimator(percent, seed=seed, **kwargs))
            if progress is not None:
                progress(row, seed, row.estimates[-1])
        row.seconds = time.perf_counter() - start
        rows.append(row)
    return rows


def _fmt(mean, std):
    return f"{mean:.3g} \u00b1 {std:.1g}"


def format_table(rows, true_mi=None):
    """Table 1 as markdown: ours (mean +- std over seeds) beside the paper's."""
    true_mi = analytic_mi() if true_mi is None else true_mi
    lines = ["| method | estimate of MI (ours) | Wu et al. Table 1 |", "|:---|---:|---:|",
             f"| True | {true_mi:.5f} | {PAPER_TRUE_MI:.5f} |"]
    for row in rows:
        paper = PAPER_TABLE1.get(row.percent)
        lines.append(f"| {row.name} | {_fmt(row.mean, row.std)} | {_fmt(*paper) if paper else ''} |")
    return "\n".join(lines)
