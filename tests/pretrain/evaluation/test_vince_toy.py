"""pretrain.evaluation.vince_toy: the true MI of Wu et al.'s toy, and InfoNCE >= VINCE 50% >= VINCE 10% (Table 1)."""
import math

import pytest
import torch

from pretrain.evaluation.vince_toy import (PAPER_TRUE_MI, SIGMA, _negatives, analytic_mi, monte_carlo_mi, sample,
                                train_estimator)
from tool_loader import load_tool
from pretrain.common.paths import REPO_ROOT

REPO = REPO_ROOT
SMALL = dict(n=1000, epochs=15, eval_draws=5)  # Table 1 uses 2000 points and 100 epochs
SEEDS = (0, 1)


def test_true_mi():
    assert SIGMA == ((2.0, 0.4), (0.4, 2.0))
    assert analytic_mi() == pytest.approx(PAPER_TRUE_MI, abs=5e-6)
    # closed form from the covariance: I = 1/2 log(s11 s22 / det S)
    (a, b), (c, d) = SIGMA
    assert analytic_mi() == pytest.approx(0.5 * math.log(a * d / (a * d - b * c)), rel=1e-12)
    estimate, stderr = monte_carlo_mi(n=200000, seed=1)
    assert abs(estimate - analytic_mi()) < 4 * stderr
    x, y = sample(200000, torch.Generator().manual_seed(2))
    cov = torch.cov(torch.cat([x, y], 1).T.double())
    assert torch.allclose(cov, torch.tensor(SIGMA, dtype=torch.float64), atol=0.03)


def test_negatives_come_from_the_nearest_percent():
    g = torch.Generator().manual_seed(0)
    bank = torch.randn(200, 3, generator=g)
    own = torch.tensor([0, 7, 199])
    neg = _negatives(bank[own], bank, own, 10, 500, g)
    dist = torch.cdist(bank[own], bank)
    for row, i in enumerate(own.tolist()):
        allowed = set(dist[row].argsort()[1:21].tolist())  # the 10% of the other 199 points: 20, itself excluded
        drawn = set(neg[row].tolist())
        assert drawn <= allowed and len(drawn) == 20 and i not in drawn
    uniform = _negatives(bank[own], bank, own, None, 2000, g)
    for row, i in enumerate(own.tolist()):
        assert i not in set(uniform[row].tolist()) and len(set(uniform[row].tolist())) > 150


@pytest.fixture(scope="module")
def estimates():
    torch.set_num_threads(1)
    return {p: [train_estimator(p, seed=s, **SMALL) for s in SEEDS] for p in (None, 50, 10)}


def test_infonce_is_a_lower_bound(estimates):
    true = analytic_mi()
    for e in estimates[None]:
        assert 0.003 < e < true + 0.004  # held-out noise of 1000 points
    assert sum(estimates[None]) / len(SEEDS) < true


def test_vince_is_looser_as_the_negatives_get_harder(estimates):
    for s in range(len(SEEDS)):
        infonce, v50, v10 = estimates[None][s], estimates[50][s], estimates[10][s]
        assert infonce > v50 + 0.003, (s, infonce, v50)
        assert v50 >= v10 - 1e-4, (s, v50, v10)  # both ~0 (Table 1: 7e-5 and 6e-6)
        assert abs(v50) < 1e-3 and abs(v10) < 1e-3


def test_cli_prints_the_table(tmp_path, capsys):
    cli = load_tool("vince_toy")
    out = tmp_path / "t.md"
    assert cli.main(["--seeds", "1", "--epochs", "1", "--points", "300", "--percents", "50", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| VINCE (50%) |" in printed and "7.29e-05" in printed and "0.02041" in printed
    assert out.read_text() == printed
    with pytest.raises(SystemExit) as stop:
        cli.main(["--percents", "150"])
    assert stop.value.code == 2 and capsys.readouterr().err.count("\n") == 1
