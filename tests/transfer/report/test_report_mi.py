"""MI next to downstream numbers: mi.json collection, the MI columns, Pearson/Kendall correlations across
backbones (checked against direct computations), the ranking text and the reverse-U plot."""
import itertools
import json
import math
import os

import numpy as np
import pytest

from transfer.report import collect_runs
from transfer.report.mi import collect_mi, mi_columns, plot_mi_vs_metric, ranking, render_ranking
from tool_loader import load_tool

# backbone -> (MI nats, linear top-1): an inverted U in MI, as InfoMin's views
DATA = {"a": (1.0, 40.0), "b": (2.0, 55.0), "c": (3.0, 61.0), "d": (4.0, 58.0), "e": (5.0, 47.0)}


def write_json(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(data, f)


def make_root(root, ceiling=math.log(256)):
    for b, (mi, acc) in DATA.items():
        for seed, noise in ((0, -0.5), (1, 0.5)):
            write_json(os.path.join(root, "linear_cdp", b, "frozen", f"seed{seed}", "results.json"),
                       {"backbone": b, "task": "linear_cdp", "mode": "frozen", "seed": seed, "weights": "",
                        "iterations": 10, "metrics": {"linear": {"top1": acc + noise, "top5": 100.0}}})
        write_json(os.path.join(root, "mi_views", b, "mi.json"),
                   {"backbone": b, "pairing": "simclr", "mi_nats": mi, "mi_nats_std": 0.01, "mi_bits": mi / math.log(2),
                    "ceiling_nats": ceiling, "k_est": 256, "seeds": [0, 1]})


def kendall_tau(x, y):
    """Kendall's tau-a by counting concordant and discordant pairs (no ties in these data)."""
    s = 0
    for i, j in itertools.combinations(range(len(x)), 2):
        s += np.sign(x[i] - x[j]) * np.sign(y[i] - y[j])
    return s / (len(x) * (len(x) - 1) / 2)


def test_ranking_and_correlations(tmp_path):
    make_root(str(tmp_path))
    records, skipped = collect_mi(str(tmp_path))
    assert not skipped and len(records) == 5
    assert {r.name for r in records} == {"views"}
    cols = mi_columns(records)
    assert list(cols) == ["MI views (bits)"]
    assert cols["MI views (bits)"]["c"] == pytest.approx(3.0 / math.log(2))
    (r,) = ranking(records, collect_runs(str(tmp_path)))
    assert (r.task, r.mode, r.metric, r.n) == ("linear_cdp", "frozen", "linear.top1", 5)
    assert [row[0] for row in r.rows] == ["e", "d", "c", "b", "a"]  # by MI, decreasing
    x = np.array([DATA[b][0] / math.log(2) for b, *_ in r.rows])
    y = np.array([DATA[b][1] for b, *_ in r.rows])  # the mean of the two seeds
    assert [row[3] for row in r.rows] == pytest.approx(list(y))
    assert r.pearson == pytest.approx(np.corrcoef(x, y)[0, 1])
    assert r.kendall == pytest.approx(kendall_tau(x, y))
    text = render_ranking([r])
    assert "| c | 4.328 | 61.00 |" in text and f"Pearson {r.pearson:+.3f}" in text
    png = plot_mi_vs_metric([r])
    (blob,) = png.values()
    assert blob[:8] == b"\x89PNG\r\n\x1a\n"


def test_near_ceiling_marked_and_bad_files_skipped(tmp_path):
    make_root(str(tmp_path), ceiling=5.0 * 1.02)  # e's 5.0 nats is within 5% of its ceiling
    write_json(os.path.join(str(tmp_path), "mi_bad", "x", "mi.json"), {"pairing": "simclr", "mi_nats": "high", "k_est": 256})
    records, skipped = collect_mi(str(tmp_path))
    assert len(records) == 5 and len(skipped) == 1 and "mi_nats" in skipped[0][1]
    near = {r.backbone for r in records if r.near_ceiling}
    assert near == {"e"}
    text = render_ranking(ranking(records, collect_runs(str(tmp_path))))
    assert "| e | 7.213 * |" in text and "ceiling" in text


def test_make_table_shows_mi_and_correlations(tmp_path, capsys):

    make_root(str(tmp_path))
    make_table = load_tool("make_table")
    report = tmp_path / "r.html"
    assert make_table.main([str(tmp_path), "--report", str(report)]) == 0
    out = capsys.readouterr().out
    assert "MI views (bits)" in out and "Pearson" in out and "Kendall" in out
    html = report.read_text()
    assert "Kendall" in html and html.count("data:image/png;base64") >= 1


def test_series_group_augmentation_families():
    from transfer.report.mi import series

    rows = [(name, 1.0, False, 50.0) for name in ("cj0.25", "cj1", "cj2.5", "crop0.08", "crop0.9", "supervised")]
    groups = series(rows)
    assert {k: [r[0] for r in v] for k, v in groups.items()} == {
        "cj": ["cj0.25", "cj1", "cj2.5"], "crop": ["crop0.08", "crop0.9"], "supervised": ["supervised"]}
    plain = [(name, 1.0, False, 50.0) for name in ("ir", "ball", "ann+")]
    assert list(series(plain)) == [""]  # no family: one series
