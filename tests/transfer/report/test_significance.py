"""The seed statistics against independent computations: scipy's own tests and intervals, and simulation.

transfer.report.significance writes the formulas out (from summary statistics, as the published rows
need); here they are checked against ``scipy.stats.ttest_ind``/``ttest_rel``/``ttest_ind_from_stats``,
``scipy.stats.t.interval`` with ``scipy.stats.sem``, numpy, textbook sample sizes and a Monte Carlo
simulation of the two-sample t-test.
"""
import math

import numpy as np
import pytest
from scipy import stats

from transfer.report.significance import (MIN_SEEDS, compare, compare_summaries, paired_t, pooled_std,
                                          power_two_sample, seeds_needed, t_interval, welch)


@pytest.mark.parametrize("n", [2, 3, 5, 10])
def test_t_interval_matches_scipy(n):
    x = np.random.default_rng(n).normal(40.0, 0.7, n)
    low, high = t_interval(float(np.mean(x)), float(np.std(x, ddof=1)), n)
    ref = stats.t.interval(0.95, n - 1, loc=np.mean(x), scale=stats.sem(x))
    assert (low, high) == pytest.approx(ref, rel=1e-12)
    assert t_interval(1.0, None, 1) is None and t_interval(1.0, 0.5, 1) is None


@pytest.mark.parametrize("n1, n2, seed", [(3, 3, 0), (3, 5, 1), (4, 7, 2), (10, 3, 3)])
def test_welch_matches_scipy(n1, n2, seed):
    rng = np.random.default_rng(seed)
    a, b = rng.normal(41.0, 0.5, n1), rng.normal(40.5, 1.2, n2)
    t, df, p = welch(np.mean(a), np.std(a, ddof=1), n1, np.mean(b), np.std(b, ddof=1), n2)
    ref = stats.ttest_ind(a, b, equal_var=False)
    assert t == pytest.approx(ref.statistic, rel=1e-10) and p == pytest.approx(ref.pvalue, rel=1e-9)
    assert df == pytest.approx(ref.df, rel=1e-10)
    # from the values, with unpaired seeds: the same test
    c = compare(list(a), list(range(n1)), list(b), list(range(100, 100 + n2)))
    assert c.test == "welch" and c.p == pytest.approx(ref.pvalue, rel=1e-9)
    assert c.significant == (ref.pvalue < 0.05)
    # and from published summaries
    s = compare_summaries(np.mean(a), np.std(a, ddof=1), n1, np.mean(b), np.std(b, ddof=1), n2)
    summary = stats.ttest_ind_from_stats(np.mean(a), np.std(a, ddof=1), n1, np.mean(b), np.std(b, ddof=1), n2,
                                         equal_var=False)
    assert s.test == "welch_summary" and s.p == pytest.approx(summary.pvalue, rel=1e-9)


@pytest.mark.parametrize("n, seed", [(3, 0), (5, 1), (8, 2)])
def test_paired_test_over_shared_seeds_matches_scipy(n, seed):
    rng = np.random.default_rng(seed)
    shared = rng.normal(0, 3.0, n)  # the noise both runs of a seed share
    a, b = 40 + shared + rng.normal(0.4, 0.1, n), 39 + shared + rng.normal(0, 0.1, n)
    t, df, p = paired_t(a, b)
    ref = stats.ttest_rel(a, b)
    assert t == pytest.approx(ref.statistic, rel=1e-10) and p == pytest.approx(ref.pvalue, rel=1e-9) and df == n - 1
    seeds = list(range(n))
    # the seeds in another order in one row: still paired by seed id
    order = list(reversed(seeds))
    c = compare(list(a), seeds, [b[s] for s in order], order)
    assert c.test == "paired_t" and c.p == pytest.approx(ref.pvalue, rel=1e-9)
    # the shared noise swamps Welch's test, not the paired one
    assert c.significant and not compare(list(a), seeds, list(b), [s + 50 for s in seeds]).significant


def test_too_few_seeds_and_degenerate_spreads():
    assert compare([1.0, 2.0], [0, 1], [0.0, 0.5, 0.2], [0, 1, 2]).test == "too_few_seeds"
    too_few = compare([1.0, 2.0, 3.0], [0, 1, 2], [0.0, 0.5], [0, 1])
    assert too_few.test == "too_few_seeds" and too_few.p is None and too_few.significant is None
    assert MIN_SEEDS == 3
    # runs that do not vary: any difference is beyond their (zero) noise, none is not
    same = compare([2.0, 2.0, 2.0], [0, 1, 2], [1.0, 1.0, 1.0], [0, 1, 2])
    assert same.test == "paired_t" and same.p == 0.0 and same.significant
    assert compare([1.0, 1.0, 1.0], [0, 1, 2], [1.0, 1.0, 1.0], [0, 1, 2]).p == 1.0
    assert compare([2.0, 2.0, 2.0], [0, 1, 2], [1.0, 1.0, 1.0], [3, 4, 5]).p == 0.0
    assert compare_summaries(57.0, None, 5, 53.5, 0.2, 5).test == "no_spread"


def test_pooled_std_matches_numpy():
    rng = np.random.default_rng(3)
    groups = [rng.normal(m, 1.0, n) for m, n in ((0, 3), (5, 4), (-2, 6))]
    centred = np.concatenate([g - g.mean() for g in groups])
    expected = math.sqrt(np.sum(centred ** 2) / (sum(len(g) for g in groups) - len(groups)))
    got = pooled_std([(float(np.std(g, ddof=1)), len(g)) for g in groups] + [(None, 1)])
    assert got == pytest.approx(expected, rel=1e-12)
    assert pooled_std([(None, 1), (0.3, 1)]) is None


def _simulated_power(n, delta, std, reps, rng):
    """The share of simulated experiments (two rows of n seeds, normal noise) a two-sided two-sample
    t-test at 0.05 rejects, computed with numpy and the t quantile only."""
    a = rng.normal(delta, std, (reps, n))
    b = rng.normal(0.0, std, (reps, n))
    sp = np.sqrt((a.var(axis=1, ddof=1) + b.var(axis=1, ddof=1)) / 2)
    t = (a.mean(axis=1) - b.mean(axis=1)) / (sp * np.sqrt(2.0 / n))
    return float(np.mean(np.abs(t) > stats.t.ppf(0.975, 2 * n - 2)))


def test_power_matches_simulation():
    rng = np.random.default_rng(11)
    reps = 40000
    for n, delta, std in ((3, 1.0, 0.5), (5, 0.4, 0.3), (8, 0.2, 0.4)):
        simulated = _simulated_power(n, delta, std, reps, rng)
        se = math.sqrt(simulated * (1 - simulated) / reps)
        assert power_two_sample(n, delta, std) == pytest.approx(simulated, abs=4 * se + 1e-3), (n, delta, std)


def test_seeds_needed_textbook_values_and_simulation():
    # the classic sample sizes per group for alpha 0.05 two-sided, power 0.8 (Cohen's d = delta / std)
    assert seeds_needed(0.5, 1.0) == 64 and seeds_needed(0.8, 1.0) == 26 and seeds_needed(1.0, 1.0) == 17
    assert seeds_needed(-0.5, 1.0) == 64  # two-sided
    # a VOC-like case: +0.3 AP at MoCo's std of 0.2 AP
    n = seeds_needed(0.3, 0.2)
    rng = np.random.default_rng(5)
    reps = 40000
    at_n = _simulated_power(n, 0.3, 0.2, reps, rng)
    below = _simulated_power(n - 1, 0.3, 0.2, reps, rng)
    se = 0.5 / math.sqrt(reps)
    assert at_n >= 0.8 - 4 * se and below < 0.8 + 4 * se, (n, at_n, below)
    assert seeds_needed(0.0, 1.0) is None and seeds_needed(1e-6, 10.0) is None and seeds_needed(1.0, 0.0) == 2
    with pytest.raises(ValueError):
        seeds_needed(float("nan"), 1.0)
