"""Seed statistics: the 95% confidence interval of a mean, the test of a delta, and the seeds a delta needs.

A table cell averages a few seeds, so its mean comes with a t-interval (``t_{0.975, n-1} * s / sqrt(n)``),
and its delta to the baseline is "beyond seed noise" only when a two-sided test at ``ALPHA`` rejects
"no difference":

- **paired t-test** when both cells ran the same seed ids: a seed fixes the data order and the new
  layers' initialisation of both runs (``cfg.SEED``), so the per-seed differences cancel the noise the
  two runs share and are what is tested (n - 1 degrees of freedom);
- **Welch's t-test** otherwise (unpaired seeds, unequal variances; Welch-Satterthwaite degrees of
  freedom), also for published rows from the mean, spread and number of trials a paper reports.

Permutation tests are exact but cannot reject anything with the seeds a detection benchmark affords:
with 3 seeds per row the smallest attainable two-sided p is 2/2^3 = 0.25 (paired sign flips) or
2/C(6, 3) = 0.1 (unpaired), and a paired one needs 6 seeds to ever reach 0.05. A cell with fewer than
``MIN_SEEDS`` seeds gets neither an interval nor a test: with n = 2 the t-interval is +-12.7 standard
errors, and a test on it says nothing a reader can use.

:func:`seeds_needed` is the power analysis for planning: the seeds per row a two-sided two-sample t-test
at ``ALPHA`` needs to detect a difference ``delta`` with probability ``POWER`` when the runs spread with
standard deviation ``std`` (noncentral t distribution, equal seeds per row).

Only scipy's distributions are used; the formulas are written out here so that the tests can check them
against scipy's own tests (``scipy.stats.ttest_ind``, ``ttest_rel``) and a simulation.
"""
import math
from dataclasses import dataclass

from scipy import stats

__all__ = ["ALPHA", "CONFIDENCE", "MIN_SEEDS", "POWER", "TESTS", "Comparison", "compare", "compare_summaries",
           "paired_t", "pooled_std", "power_two_sample", "seeds_needed", "t_interval", "welch"]

ALPHA = 0.05        # two-sided significance level of the delta tests
CONFIDENCE = 0.95   # of the intervals
MIN_SEEDS = 3       # fewer seeds in a cell: no interval, no test
POWER = 0.8         # of the power analysis
MAX_SEEDS = 100000  # the power analysis gives up beyond this many seeds per row

# the `test` of a comparison: what was done, or why nothing was
TESTS = {
    "paired_t": "paired t-test over the seeds both rows ran",
    "welch": "Welch's t-test (unpaired seeds)",
    "welch_summary": "Welch's t-test from the published mean, spread and trials",
    "too_few_seeds": f"not tested: a row has fewer than {MIN_SEEDS} seeds",
    "no_spread": "not tested: the paper reports no spread for a row",
}


def t_interval(mean, std, n, confidence=CONFIDENCE):
    """(low, high): the t-interval of a mean of ``n`` values with sample std ``std``; None when n < 2."""
    if mean is None or std is None or n is None or n < 2:
        return None
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * std / math.sqrt(n)
    return mean - half, mean + half


def _two_sided_p(t, df):
    return float(2 * stats.t.sf(abs(t), df))


def _degenerate_p(difference):
    """p of a test whose standard error is 0: the runs did not vary, so any difference is beyond their noise."""
    return 1.0 if difference == 0 else 0.0


def welch(mean1, std1, n1, mean2, std2, n2):
    """(t, df, p) of Welch's two-sided t-test of mean1 - mean2 from summary statistics (sample stds)."""
    v1, v2 = std1 ** 2 / n1, std2 ** 2 / n2
    difference = mean1 - mean2
    if v1 + v2 == 0:
        return (math.copysign(math.inf, difference) if difference else 0.0), float(n1 + n2 - 2), \
            _degenerate_p(difference)
    t = difference / math.sqrt(v1 + v2)
    df = (v1 + v2) ** 2 / (v1 ** 2 / (n1 - 1) + v2 ** 2 / (n2 - 1))
    return t, df, _two_sided_p(t, df)


def paired_t(values1, values2):
    """(t, df, p) of the two-sided paired t-test of values1 - values2 (equal lengths, same order)."""
    diffs = [a - b for a, b in zip(values1, values2)]
    n = len(diffs)
    mean = math.fsum(diffs) / n
    sd = math.sqrt(math.fsum((d - mean) ** 2 for d in diffs) / (n - 1))
    if sd == 0:
        return (math.copysign(math.inf, mean) if mean else 0.0), float(n - 1), _degenerate_p(mean)
    t = mean / (sd / math.sqrt(n))
    return t, float(n - 1), _two_sided_p(t, n - 1)


def _mean_std(values):
    n = len(values)
    mean = math.fsum(values) / n
    return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))


@dataclass(frozen=True)
class Comparison:
    """The test of a delta: ``test`` is a key of :data:`TESTS`; ``p`` and ``significant`` are None when
    nothing was tested."""

    test: str
    p: float = None
    df: float = None
    alpha: float = ALPHA

    @property
    def tested(self):
        return self.p is not None

    @property
    def significant(self):
        return None if self.p is None else self.p < self.alpha

    @property
    def description(self):
        text = TESTS[self.test]
        return text if self.p is None else f"{text}, p = {self.p:.2g}"


def compare(values, seeds, base_values, base_seeds, alpha=ALPHA, min_seeds=MIN_SEEDS):
    """The test of mean(values) - mean(base_values): paired when both ran the same seeds, else Welch's;
    ``too_few_seeds`` when either has fewer than ``min_seeds`` values."""
    if len(values) < min_seeds or len(base_values) < min_seeds:
        return Comparison("too_few_seeds", alpha=alpha)
    if sorted(seeds) == sorted(base_seeds) and len(set(seeds)) == len(seeds):
        mine, base = dict(zip(seeds, values)), dict(zip(base_seeds, base_values))
        order = sorted(mine)
        _, df, p = paired_t([mine[s] for s in order], [base[s] for s in order])
        return Comparison("paired_t", p=p, df=df, alpha=alpha)
    m1, s1 = _mean_std(values)
    m2, s2 = _mean_std(base_values)
    _, df, p = welch(m1, s1, len(values), m2, s2, len(base_values))
    return Comparison("welch", p=p, df=df, alpha=alpha)


def compare_summaries(mean, std, n, base_mean, base_std, base_n, alpha=ALPHA, min_seeds=MIN_SEEDS):
    """Welch's test from summary statistics (published rows); ``no_spread`` without both spreads."""
    if std is None or base_std is None or n is None or base_n is None:
        return Comparison("no_spread", alpha=alpha)
    if n < min_seeds or base_n < min_seeds:
        return Comparison("too_few_seeds", alpha=alpha)
    _, df, p = welch(mean, std, n, base_mean, base_std, base_n)
    return Comparison("welch_summary", p=p, df=df, alpha=alpha)


def pooled_std(stds_and_ns):
    """The pooled sample std of groups given as (std, n) (groups with n < 2 or no std are left out);
    None when no group has a spread."""
    groups = [(s, n) for s, n in stds_and_ns if s is not None and n is not None and n >= 2]
    if not groups:
        return None
    dof = sum(n - 1 for _, n in groups)
    return math.sqrt(sum((n - 1) * s * s for s, n in groups) / dof)


def power_two_sample(n, delta, std, alpha=ALPHA):
    """The power of the two-sided two-sample t-test (n per row, equal variances) at effect delta/std."""
    df = 2 * n - 2
    crit = float(stats.t.ppf(1 - alpha / 2, df))
    nc = abs(delta) / (std * math.sqrt(2.0 / n))
    upper = float(stats.nct.sf(crit, df, nc))
    lower = float(stats.nct.cdf(-crit, df, nc))  # the wrong-sign rejections: nan (underflow) far out in the tail
    if not math.isfinite(upper):
        upper = 1.0 if nc > crit else 0.0
    return min(1.0, upper + (lower if math.isfinite(lower) else 0.0))


def seeds_needed(delta, std, alpha=ALPHA, power=POWER, max_seeds=MAX_SEEDS):
    """The fewest seeds per row (>= 2) for which a two-sided two-sample t-test at ``alpha`` detects a true
    difference ``delta`` with probability ``power`` when runs spread with standard deviation ``std``.

    None when no number up to ``max_seeds`` does (delta 0, or tiny against the spread); 2 when the runs
    do not spread at all (``std`` 0) and delta is not 0.
    """
    if delta is None or std is None or not math.isfinite(delta) or not math.isfinite(std) or std < 0:
        raise ValueError(f"seeds_needed needs a finite delta and std >= 0, got {delta!r}, {std!r}")
    if delta == 0:
        return None
    if std == 0:
        return 2
    if power_two_sample(max_seeds, delta, std, alpha) < power:
        return None
    lo, hi = 2, 2  # the power grows with n: double, then bisect
    while power_two_sample(hi, delta, std, alpha) < power:
        lo, hi = hi + 1, min(2 * hi, max_seeds)
    while lo < hi:
        mid = (lo + hi) // 2
        if power_two_sample(mid, delta, std, alpha) >= power:
            hi = mid
        else:
            lo = mid + 1
    return lo
