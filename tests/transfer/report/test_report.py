"""Tables, plots and the HTML report from results.json files written into tmp_path (format: docs/artifacts.md).

The expected numbers are computed here with numpy and scipy (intervals, t-tests) from the values the test
wrote, independently of the table code (which uses the statistics module and its own t-test formulas).
"""
import csv
import io
import json
import math
import os
import subprocess
import sys
from html.parser import HTMLParser

import numpy as np
import pytest
from scipy import stats

from transfer.report import (CSV_COLUMNS, FORMATS, ReportError, build_report, make_tables, markdown_table, render,
                             table_text)
from transfer.report.runs import collect_runs
from pretrain.common.paths import REPO_ROOT

REPO = REPO_ROOT
TASK = "coco_mask_rcnn_R_50_FPN_1x"
VOC = "voc_faster_rcnn_R_50_C4_24k"
METRICS = ("AP", "AP50", "AP75")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CONFIG_YAML = """\
MODEL:
  WEIGHTS: {weights}
  RESNETS:
    DEPTH: {depth}
    NUM_GROUPS: 1
    WIDTH_PER_GROUP: 64
SOLVER:
  MAX_ITER: 90000
  IMS_PER_BATCH: 16
  BASE_LR: 0.02
SEED: 0
"""


def write_run(root, task, backbone, mode, seed, metrics, *, depth=None, commit=None, raw=None):
    """One run directory as a sweep writes it: ROOT/<task>/<backbone>/<mode>/seed<k>/results.json."""
    folder = os.path.join(root, task, backbone, mode, f"seed{seed}")
    os.makedirs(folder, exist_ok=True)
    record = {"backbone": backbone, "task": task, "mode": mode, "seed": seed,
              "weights": f"/weights/{backbone}.pkl", "iterations": 90000, "metrics": metrics}
    if commit:
        record["commit"] = commit
    with open(os.path.join(folder, "results.json"), "w") as f:
        f.write(raw if raw is not None else json.dumps(record))  # NaN / null written as json does
    if depth:
        with open(os.path.join(folder, "config.yaml"), "w") as f:
            f.write(CONFIG_YAML.format(weights=f"/weights/{backbone}.pkl", depth=depth))
    return folder


# backbone -> mode -> seeds; supervised frozen lacks seed 2, random has no frozen runs at all
PLAN = {"supervised": {"finetune": [0, 1, 2], "frozen": [0, 1]},
        "moco_v2": {"finetune": [0, 1, 2], "frozen": [0, 1, 2]},
        "random": {"finetune": [0]}}
NONFINITE = {("moco_v2", "frozen", 1, "bbox", "AP50"): None,  # JSON null (what results_record writes)
             ("moco_v2", "finetune", 2, "segm", "AP"): float("nan")}  # a literal NaN


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A small sweep with known values; returns (root, values) with values[(backbone, mode, family, metric)]
    = {seed: value} of the finite values only."""
    root = str(tmp_path_factory.mktemp("sweep"))
    rng = np.random.default_rng(7)
    values = {}
    for backbone, modes in PLAN.items():
        for mode, seeds in modes.items():
            for seed in seeds:
                metrics = {}
                for family in ("bbox", "segm"):
                    metrics[family] = {}
                    for metric in (*METRICS, "APs"):
                        v = float(np.round(rng.uniform(5, 60), 3))
                        key = (backbone, mode, seed, family, metric)
                        if key in NONFINITE:
                            v = NONFINITE[key]
                        else:
                            values.setdefault((backbone, mode, family, metric), {})[seed] = v
                        metrics[family][metric] = v
                write_run(root, TASK, backbone, mode, seed, metrics, depth=50, commit="0123456789abcdef0123")
    write_run(root, VOC, "supervised", "finetune", 0, {"bbox": {"AP": 53.5, "AP50": 81.3, "AP75": 58.8}})
    write_run(root, VOC, "moco_v2", "finetune", 0, {"bbox": {"AP": 57.0, "AP50": 82.4, "AP75": 63.6}})
    # unusable files: skipped with a reason, never fatal
    write_run(root, "broken", "x", "finetune", 0, {}, raw="{not json")
    write_run(root, "badmode", "x", "linear", 0, {"bbox": {"AP": 1.0}})
    write_run(root, "badvalue", "x", "finetune", 0, {"bbox": {"AP": "high"}})
    dup = write_run(os.path.join(root, "zz_copy"), VOC, "moco_v2", "finetune", 0, {"bbox": {"AP": 99.0}})
    return root, values, dup


def _expected(values, backbone, mode, family, metric):
    v = np.array(list(values.get((backbone, mode, family, metric), {}).values()), dtype=float)
    mean = float(np.mean(v)) if len(v) else None
    std = float(np.std(v, ddof=1)) if len(v) > 1 else None
    return len(v), mean, std


def _expected_ci(values, backbone, mode, family, metric):
    """scipy's 95% t-interval of the mean, or None below 3 seeds (the tables claim none)."""
    v = np.array(list(values.get((backbone, mode, family, metric), {}).values()), dtype=float)
    return stats.t.interval(0.95, len(v) - 1, loc=np.mean(v), scale=stats.sem(v)) if len(v) >= 3 else None


def _expected_p(values, backbone, base, mode, family, metric):
    """scipy's p of the delta: paired over the same seeds, else Welch's; None below 3 seeds."""
    mine, ref = values.get((backbone, mode, family, metric), {}), values.get((base, mode, family, metric), {})
    if len(mine) < 3 or len(ref) < 3:
        return None
    if set(mine) == set(ref):
        return stats.ttest_rel([mine[s] for s in sorted(mine)], [ref[s] for s in sorted(mine)]).pvalue
    return stats.ttest_ind(list(mine.values()), list(ref.values()), equal_var=False).pvalue


def _table(tables, task, family):
    (t,) = [t for t in tables if t.task == task and t.family == family]
    return t


def test_collect_skips_unusable_results(sweep):
    root, _, dup = sweep
    collection = collect_runs(root)
    reasons = {os.path.relpath(p, root).split(os.sep)[0]: why for p, why in collection.skipped}
    assert set(reasons) == {"broken", "badmode", "badvalue", "zz_copy"}
    assert "mode" in reasons["badmode"] and "not a number" in reasons["badvalue"] and "duplicate" in reasons["zz_copy"]
    assert len(collection.runs) == sum(len(s) for m in PLAN.values() for s in m.values()) + 2
    run = next(r for r in collection.runs if r.task == TASK)
    assert run.arch == "R-50" and run.config["MAX_ITER"] == 90000 and run.commit.startswith("0123")


def test_table_arithmetic_matches_numpy(sweep):
    root, values, _ = sweep
    _, tables = make_tables(root, baseline="supervised")
    tested = set()
    for family in ("bbox", "segm"):
        table = _table(tables, TASK, family)
        assert table.modes == ("finetune", "frozen") and table.metrics == METRICS
        assert [r.backbone for r in table.rows] == ["supervised", "moco_v2", "random"]  # baseline first
        for row in table.rows:
            for mode in table.modes:
                for metric in METRICS:
                    cell = row.cells[(mode, metric)]
                    if mode not in PLAN[row.backbone]:
                        assert cell is None
                        continue
                    n, mean, std = _expected(values, row.backbone, mode, family, metric)
                    assert cell.n == n
                    assert cell.mean == pytest.approx(mean, rel=1e-12)
                    assert (cell.std is None) if std is None else cell.std == pytest.approx(std, rel=1e-12)
                    _, base, _ = _expected(values, "supervised", mode, family, metric)
                    assert cell.delta == pytest.approx(mean - base, rel=1e-12, abs=1e-12)
                    ci = _expected_ci(values, row.backbone, mode, family, metric)
                    assert (cell.ci is None) if ci is None else cell.ci == pytest.approx(ci, rel=1e-12)
                    if row.backbone == "supervised":
                        assert cell.comparison is None
                        continue
                    p = _expected_p(values, row.backbone, "supervised", mode, family, metric)
                    if p is None:
                        assert cell.comparison.test == "too_few_seeds" and cell.comparison.p is None
                    else:
                        assert cell.comparison.p == pytest.approx(p, rel=1e-9)
                        tested.add(cell.comparison.test)
    assert tested == {"paired_t"}  # moco_v2 fine-tuned ran the baseline's seeds 0-2; frozen has too few


def test_missing_and_nonfinite_runs_are_counted_never_averaged(sweep):
    root, values, _ = sweep
    _, tables = make_tables(root, baseline="supervised")
    bbox = _table(tables, TASK, "bbox")
    # seeds others ran: supervised frozen seed 2, random fine-tuned seeds 1 and 2, random frozen (no runs) 0-2
    assert bbox.missing_runs == 1 + 2 + 3
    assert bbox.missing == ["supervised frozen seed 2", "random fine-tuned seed 1", "random fine-tuned seed 2",
                            "random frozen (seeds 0, 1, 2)"]
    cell = next(r for r in bbox.rows if r.backbone == "moco_v2").cells[("frozen", "AP50")]
    assert cell.nonfinite_seeds == (1,) and cell.n == 2 and math.isfinite(cell.mean)
    assert cell.mean == pytest.approx(np.mean([values[("moco_v2", "frozen", "bbox", "AP50")][s] for s in (0, 2)]))
    assert bbox.nonfinite == ["moco_v2 frozen seed 1 (AP50)"]
    segm = _table(tables, TASK, "segm")
    assert segm.nonfinite == ["moco_v2 fine-tuned seed 2 (AP)"]
    text = render(tables, "markdown")
    assert "missing runs: 6" in text and "\u2014" in text and "\u2020" in text
    assert "1 run: moco_v2 frozen seed 1 (AP50)" in text
    # VOC has no frozen runs at all: dashes, counted as one missing entry per backbone
    voc = _table(tables, VOC, "bbox")
    assert voc.missing_runs == 2 and all(r.cells[("frozen", "AP")] is None for r in voc.rows)


def test_markdown_cells_show_n_std_and_signed_delta(tmp_path):
    root = str(tmp_path)
    for seed, ap in enumerate([40.0, 41.0]):
        write_run(root, TASK, "supervised", "finetune", seed, {"bbox": {"AP": ap}})
    for seed, ap in enumerate([41.0, 42.0, 43.0]):
        write_run(root, TASK, "infomin", "finetune", seed, {"bbox": {"AP": ap}})
    write_run(root, TASK, "pirl", "finetune", 0, {"bbox": {"AP": 40.1}})
    text = markdown_table(root, baseline="supervised")
    assert "| supervised (baseline) | 40.5 \u00b1 0.7 (n=2: too few seeds) |" in text
    low, high = stats.t.interval(0.95, 2, loc=42.0, scale=stats.sem([41.0, 42.0, 43.0]))
    # +1.5 but against a baseline of 2 seeds: not tested, so not marked
    assert f"| infomin | 42.0 \u00b1 1.0 (n=3, CI {low:.1f}\u2013{high:.1f}) [+1.5] |" in text
    assert "| pirl | 40.1 (n=1: too few seeds) [-0.4] |" in text  # n = 1: no std
    # no baseline: no deltas
    assert "[" not in markdown_table(root).split("Cells:")[0].replace("| backbone", "")


def test_csv_round_trip(sweep):
    root, values, _ = sweep
    text = table_text(root, "csv", baseline="supervised", metrics="all")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert tuple(csv.reader(io.StringIO(text)).__next__()) == CSV_COLUMNS
    ours = [r for r in rows if r["task"] == TASK]
    assert len(ours) == 2 * 4 * 5  # families x metrics x (backbone, mode) cells with runs
    for r in ours:
        n, mean, std = _expected(values, r["backbone"], r["mode"], r["family"], r["metric"])
        _, base, _ = _expected(values, "supervised", r["mode"], r["family"], r["metric"])
        assert int(r["n"]) == n
        assert float(r["mean"]) == pytest.approx(mean, rel=1e-12)
        assert (r["std"] == "") if n == 1 else float(r["std"]) == pytest.approx(std, rel=1e-12)
        assert float(r["delta"]) == pytest.approx(mean - base, rel=1e-12, abs=1e-12)
        ci = _expected_ci(values, r["backbone"], r["mode"], r["family"], r["metric"])
        if ci is None:
            assert r["ci_low"] == r["ci_high"] == ""
        else:
            assert (float(r["ci_low"]), float(r["ci_high"])) == pytest.approx(ci, rel=1e-12)
        p = _expected_p(values, r["backbone"], "supervised", r["mode"], r["family"], r["metric"])
        if r["backbone"] == "supervised":
            assert r["test"] == r["p_value"] == r["significant"] == ""
        elif p is None:
            assert r["test"] == "too_few_seeds" and r["p_value"] == r["significant"] == ""
        else:
            assert r["test"] == "paired_t" and float(r["p_value"]) == pytest.approx(p, rel=1e-9)
            assert r["significant"] == ("yes" if p < 0.05 else "no")
    no_baseline = list(csv.DictReader(io.StringIO(table_text(root, "csv"))))
    assert no_baseline and all(r["delta"] == "" for r in no_baseline)


class _Checker(HTMLParser):
    """Collects tags, and fails on unbalanced table markup."""

    VOID = {"meta", "img", "br", "hr", "link", "input"}

    def __init__(self):
        super().__init__()
        self.stack, self.tags, self.images = [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "img":
            self.images.append(dict(attrs)["src"])
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, (tag, self.stack[-5:])
        self.stack.pop()


def _check_html(text):
    checker = _Checker()
    checker.feed(text)
    assert checker.stack == []
    return checker


# three paired seeds each: AP clearly up (+0.9, paired differences 0.9, 1.0, 0.8), AP50 within the noise
MARKED = {"supervised": {"AP": [39.6, 39.7, 39.8], "AP50": [59.5, 59.0, 60.0], "AP75": [43.0, 43.3, 43.6]},
          "new_ssl": {"AP": [40.5, 40.7, 40.6], "AP50": [59.6, 59.8, 59.4], "AP75": [42.0, 42.2, 42.1]}}


def _marked_root(root, few=True):
    for backbone, metrics in MARKED.items():
        for seed in range(3):
            write_run(root, TASK, backbone, "finetune", seed, {"bbox": {m: v[seed] for m, v in metrics.items()}})
    if few:  # a row with 2 seeds: no interval, no test
        for seed in range(2):
            write_run(root, TASK, "two_seeds", "finetune", seed, {"bbox": {"AP": 45.0 + seed, "AP50": 65.0,
                                                                            "AP75": 48.0}})
    return root


def _marked_expectations():
    """scipy's intervals and paired p-values of MARKED: {(backbone, metric): (low, high)}, {metric: p}."""
    ci = {(b, m): stats.t.interval(0.95, 2, loc=np.mean(v), scale=stats.sem(v))
          for b, metrics in MARKED.items() for m, v in metrics.items()}
    p = {m: stats.ttest_rel(MARKED["new_ssl"][m], MARKED["supervised"][m]).pvalue for m in METRICS}
    assert p["AP"] < 0.05 and p["AP50"] > 0.05 and p["AP75"] < 0.05  # up, within noise, down
    return ci, p


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_carries_n_ci_and_marks(tmp_path, fmt):
    root = _marked_root(str(tmp_path))
    ci, p = _marked_expectations()
    text = table_text(root, fmt, baseline="supervised", references=True)
    lo, hi = (f"{x:.1f}" for x in ci[("new_ssl", "AP")])
    if fmt == "markdown":
        assert f"40.6 \u00b1 0.1 (n=3, CI {lo}\u2013{hi}) **[+0.9]**" in text
        assert "59.6 \u00b1 0.2 (n=3, CI" in text and ") [+0.1] |" in text and "**[+0.1]**" not in text
        assert "**[-1.2]**" in text  # AP75 down, beyond noise: marked too
        assert "| two_seeds | 45.5 \u00b1 0.7 (n=2: too few seeds) [+5.8] |" in text  # not tested, not marked
        assert "published: InfoMin Table 2(a)" in text and "paired t-test" in text and "Welch" in text
    elif fmt == "csv":
        assert text.splitlines()[0] == ",".join(CSV_COLUMNS)
        rows = {(r["backbone"], r["metric"]): r for r in csv.DictReader(io.StringIO(text)) if r["family"] == "bbox"}
        for metric in METRICS:
            r = rows[("new_ssl", metric)]
            assert r["n"] == "3" and r["test"] == "paired_t" and float(r["p_value"]) == pytest.approx(p[metric])
            assert r["significant"] == ("yes" if p[metric] < 0.05 else "no")
            assert (float(r["ci_low"]), float(r["ci_high"])) == pytest.approx(ci[("new_ssl", metric)])
        two = rows[("two_seeds", "AP")]
        assert two["n"] == "2" and two["test"] == "too_few_seeds" and two["ci_low"] == two["significant"] == ""
        published = rows[("published:InfoMin Table 2(a):infomin", "AP")]
        assert published["mean"] == "40.6" and published["n"] == "" and published["test"] == "no_spread"
    elif fmt == "latex":
        assert r"\begin{tabular}" in text and r"\multicolumn{3}{c}{fine-tuned}" in text
        assert f"40.6$\\pm$0.1$_{{n=3}}$ {{\\scriptsize [{lo}, {hi}]}}" in text
        assert r"\textbf{\textcolor{green!50!black}{(+0.9)}}" in text  # AP up, beyond noise
        assert r"\textbf{\textcolor{red!70!black}{(-1.2)}}" in text  # AP75 down, beyond noise
        assert "{\\scriptsize (+0.1)}" in text  # AP50 within noise: not marked
        assert r"45.5$\pm$0.7$_{n=2}$\textsuperscript{\S} {\scriptsize (+5.8)}" in text
        assert "coco\\_mask\\_rcnn" in text and "\\textit{InfoMin Aug. (published: InfoMin Table 2(a))}" in text
    else:
        checker = _check_html(text)
        assert checker.tags.count("table") == 2  # bbox; segm: only published (no run reports masks)
        assert f'<span class="ci" title="95% confidence interval of the mean">[{lo}&ndash;{hi}]</span>' in text
        assert f'<strong class="delta sig" title="paired t-test over the seeds both rows ran, p = {p["AP"]:.2g}">' \
               "(+0.9)</strong>" in text
        assert '<strong class="delta sig down"' in text and ">(-1.2)</strong>" in text
        assert f'<span class="delta" title="paired t-test over the seeds both rows ran, p = {p["AP50"]:.2g}">' \
               "(+0.1)</span>" in text
        assert '<span class="few" title="fewer than 3 seeds: no confidence interval, no test">(n=2: too few seeds)' \
               in text and 'class="published' in text


def test_marks_follow_the_seeds(tmp_path):
    """A mark appears with the third seed of both rows and goes when a seed goes; unpaired seeds are tested
    with Welch's test."""
    root = _marked_root(str(tmp_path), few=False)
    assert "**[+0.9]**" in markdown_table(root, baseline="supervised")
    os.remove(os.path.join(root, TASK, "new_ssl", "finetune", "seed2", "results.json"))
    text = markdown_table(root, baseline="supervised")
    assert "**[" not in text and "40.6 \u00b1 0.1 (n=2: too few seeds) [+0.9]" in text
    # the third seed back, but under another seed id: unpaired, Welch's test on the same values
    write_run(root, TASK, "new_ssl", "finetune", 7, {"bbox": {m: v[2] for m, v in MARKED["new_ssl"].items()}})
    rows = {(r["backbone"], r["metric"]): r for r in csv.DictReader(io.StringIO(
        table_text(root, "csv", baseline="supervised")))}
    for metric in METRICS:
        welch = stats.ttest_ind(MARKED["new_ssl"][metric], MARKED["supervised"][metric], equal_var=False).pvalue
        r = rows[("new_ssl", metric)]
        assert r["test"] == "welch" and float(r["p_value"]) == pytest.approx(welch, rel=1e-9)
        assert r["significant"] == ("yes" if welch < 0.05 else "no")
    # without a baseline there are no deltas and no marks
    assert "**[" not in markdown_table(root) and "[+" not in markdown_table(root).split("Cells:")[0]


def test_published_gaps_are_tested_with_the_papers_spread(tmp_path):
    """MoCo's VOC numbers: means of 5 trials, std 0.2 AP50 / 0.2 AP / 0.4 AP75 (MoCo's detection README)."""
    root = str(tmp_path)
    write_run(root, VOC, "supervised", "finetune", 0, {"bbox": {"AP": 53.5, "AP50": 81.3, "AP75": 58.8}})
    text = table_text(root, "markdown", baseline="supervised", references=True)
    line = next(x for x in text.splitlines() if "MoCo* (published: InfoMin Table 3)" in x)
    # MoCo v1 vs supervised: +0.2 AP50 is within the spread, +2.4 AP and +3.8 AP75 are not
    assert "81.5 \u00b1 0.2 (n=5, CI" in line and ") [+0.2]" in line and "**[+2.4]**" in line and "**[+3.8]**" in line
    rows = {(r["backbone"], r["metric"]): r for r in csv.DictReader(io.StringIO(
        table_text(root, "csv", baseline="supervised", references=True)))}
    for metric, (mean, base, std) in {"AP50": (81.5, 81.3, 0.2), "AP": (55.9, 53.5, 0.2),
                                      "AP75": (62.6, 58.8, 0.4)}.items():
        r = rows[("published:InfoMin Table 3:moco_v1", metric)]
        p = stats.ttest_ind_from_stats(mean, std, 5, base, std, 5, equal_var=False).pvalue
        assert r["test"] == "welch_summary" and float(r["p_value"]) == pytest.approx(p, rel=1e-9)
        assert r["n"] == "5" and float(r["std"]) == std
        ci = stats.t.interval(0.95, 4, loc=mean, scale=std / math.sqrt(5))
        assert (float(r["ci_low"]), float(r["ci_high"])) == pytest.approx(ci, rel=1e-12)
    # InfoMin's own row: 5 runs, no published spread: n, no interval, no test
    infomin = rows[("published:InfoMin Table 3:infomin", "AP")]
    assert infomin["n"] == "5" and infomin["std"] == infomin["ci_low"] == "" and infomin["test"] == "no_spread"


def test_references_follow_the_runs_architecture(tmp_path):
    root = str(tmp_path)
    # a frozen ResNet-18 through the R-50 FPN config: config.yaml says depth 18
    write_run(root, TASK, "ann", "frozen", 0, {"bbox": {"AP": 10.0, "AP50": 21.0, "AP75": 8.0}}, depth=18)
    write_run(root, TASK, "supervised", "finetune", 0, {"bbox": {"AP": 39.0, "AP50": 59.0, "AP75": 43.0}}, depth=50)
    _, tables = make_tables(root, references=True)
    published = {(r.citation, r.backbone) for r in _table(tables, TASK, "bbox").published_rows()}
    assert ("Wu2020 Table 2(f)", "ann+") in published and ("InfoMin Table 2(a)", "infomin") in published
    wu = next(r for r in _table(tables, TASK, "bbox").rows
              if r.citation == "Wu2020 Table 2(f)" and r.backbone == "ann+")
    assert wu.cells[("frozen", "AP")].mean == 10.7 and ("finetune", "AP") not in wu.cells
    # without config.yaml the task's name decides: no ResNet-18 numbers by accident
    root2 = str(tmp_path / "plain")
    write_run(root2, TASK, "ann", "frozen", 0, {"bbox": {"AP": 10.0}})
    _, tables = make_tables(root2, references=True)
    assert not [r for r in tables[0].published_rows() if r.citation.startswith("Wu2020")]
    _, tables = make_tables(root2, references=True, reference_arch="R-18")
    assert {r.citation for r in tables[0].published_rows()} == {"Wu2020 Table 2(f)"}


def test_extra_scalar_column(tmp_path):
    root = str(tmp_path)
    write_run(root, TASK, "a", "finetune", 0, {"bbox": {"AP": 1.5}})
    write_run(root, TASK, "b", "finetune", 0, {"bbox": {"AP": 2.5}})
    _, tables = make_tables(root, extra={"MI": {"a": 3.25}})
    text = render(tables, "markdown")
    assert "| backbone | MI | fine-tuned AP |" in text
    assert "| a | 3.2 | 1.5 (n=1: too few seeds) |" in text and "| b | \u2014 | 2.5 (n=1: too few seeds) |" in text


def test_errors_are_one_line(tmp_path, sweep):
    root, _, _ = sweep
    with pytest.raises(ReportError, match="results root not found"):
        make_tables(str(tmp_path / "nope"))
    with pytest.raises(ReportError, match="no usable results.json"):
        make_tables(str(tmp_path))
    with pytest.raises(ReportError, match=r"baseline 'imagenet' has no runs .*backbones: moco_v2, random, supervised"):
        make_tables(root, baseline="imagenet")
    with pytest.raises(ReportError, match="no runs of task 'coco_keypoint_rcnn_R_50_FPN_1x'"):
        make_tables(root, tasks=["coco_keypoint_rcnn_R_50_FPN_1x"])
    with pytest.raises(ReportError, match="no run reports APx"):
        make_tables(root, metrics=("APx",))
    # with --references, a task without runs still gets its published rows
    _, tables = make_tables(root, tasks=["coco_mask_rcnn_R_101_C4_1x"], references=True)
    assert tables and all(r.published for t in tables for r in t.rows)


def test_build_report_writes_tables_plots_and_self_contained_html(sweep, tmp_path):
    root, _, _ = sweep
    out = str(tmp_path / "out")
    files = build_report(root, out, baseline="supervised", references=True)
    assert sorted(os.listdir(out)) == ["plots", "report.html", "table.csv", "table.md"]
    assert open(files.table_md).read() == files.markdown and "### coco_mask_rcnn_R_50_FPN_1x" in files.markdown
    assert sorted(os.path.basename(p) for p in files.plots) == [f"{TASK}.png", f"{VOC}.png"]
    for path in files.plots:
        with open(path, "rb") as f:
            assert f.read(8) == PNG_MAGIC
    text = open(files.report_html).read()
    checker = _check_html(text)
    assert len(checker.images) == 2 and all(src.startswith("data:image/png;base64,") for src in checker.images)
    assert "http://" not in text and "https://" not in text and "<link" not in text  # self-contained
    # per-run configuration summary: weights, iterations, seed, commit, config.yaml keys
    assert "/weights/moco_v2.pkl" in text and "0123456789ab" in text and "90000" in text and "0.02" in text
    assert os.path.join(TASK, "moco_v2", "frozen", "seed1") in text
    assert "4 results.json skipped" in text and "badmode" in text


def _cli(*args):
    return subprocess.run([sys.executable, os.path.join(REPO, "tools", "make_table.py"), *args],
                          capture_output=True, text=True, cwd=REPO, timeout=120)


def test_cli(sweep, tmp_path):
    root, _, _ = sweep
    missing = _cli(str(tmp_path / "does_not_exist"))
    assert missing.returncode != 0 and missing.stdout == ""
    expected = f"make_table: error: results root not found: {tmp_path / 'does_not_exist'}"
    assert missing.stderr.strip().splitlines() == [expected]
    out, report, plots = tmp_path / "t.csv", tmp_path / "r.html", tmp_path / "plots"
    ok = _cli(root, "--baseline", "supervised", "--format", "csv", "--out", str(out), "--tasks", VOC,
              "--report", str(report), "--plots", str(plots))
    assert ok.returncode == 0, ok.stderr
    rows = list(csv.DictReader(open(out)))
    moco = next(r for r in rows if r["backbone"] == "moco_v2" and r["metric"] == "AP")
    assert float(moco["delta"]) == pytest.approx(57.0 - 53.5)
    assert report.read_text().startswith("<!DOCTYPE html>") and (plots / f"{VOC}.png").read_bytes()[:8] == PNG_MAGIC
    assert "skipped 4 unusable" in ok.stderr
    text = _cli(root, "--baseline", "supervised", "--tasks", VOC)
    assert text.returncode == 0 and "| moco_v2 | 57.0 (n=1: too few seeds) [+3.5] |" in text.stdout
    bad = _cli(root, "--baseline", "nobody")
    assert bad.returncode == 1 and len(bad.stderr.strip().splitlines()) == 1 and "Traceback" not in bad.stderr


def test_cli_seeds_needed(tmp_path):
    from transfer.report.significance import seeds_needed

    root = _marked_root(str(tmp_path))
    done = _cli(root, "--baseline", "supervised", "--seeds-needed", "0.5", "--format", "csv")
    assert done.returncode == 0, done.stderr
    rows = {(r["backbone"], r["metric"]): r for r in csv.DictReader(io.StringIO(done.stdout))}
    assert {b for b, _ in rows} == {"new_ssl", "two_seeds"}  # the baseline is what they are compared with
    for metric in METRICS:
        a, b = np.array(MARKED["new_ssl"][metric]), np.array(MARKED["supervised"][metric])
        pooled = math.sqrt((np.sum((a - a.mean()) ** 2) + np.sum((b - b.mean()) ** 2)) / 4)
        r = rows[("new_ssl", metric)]
        assert float(r["std"]) == pytest.approx(pooled, rel=1e-12) and float(r["delta"]) == 0.5
        assert int(r["seeds_needed"]) == max(3, seeds_needed(0.5, pooled)) and r["delta_source"] == "given"
    # without a value: the observed deltas; markdown by default
    observed = _cli(root, "--baseline", "supervised", "--seeds-needed")
    assert observed.returncode == 0 and "Seeds needed per row" in observed.stdout
    line = next(x for x in observed.stdout.splitlines() if "| new_ssl | fine-tuned | AP50 |" in x)
    a, b = np.array(MARKED["new_ssl"]["AP50"]), np.array(MARKED["supervised"]["AP50"])
    pooled = math.sqrt((np.sum((a - a.mean()) ** 2) + np.sum((b - b.mean()) ** 2)) / 4)
    assert f"| {max(3, seeds_needed(a.mean() - b.mean(), pooled))} |" in line
    for args, message in (((root, "--seeds-needed"), "give --baseline or a DELTA"),
                          ((root, "--seeds-needed", "-1"), "DELTA must be a positive number")):
        bad = _cli(*args)
        assert bad.returncode != 0 and message in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_report_code_imports_neither_torch_nor_detectron2():
    code = ("import sys, transfer.report, transfer.report.references; "
            "bad = [m for m in sys.modules if m == 'torch' or m.startswith('torch.') or "
            "(m.startswith('detectron2') and not getattr(sys.modules[m], 'is_standin', False) "
            "and m not in ('detectron2._C', 'detectron2.evaluation.fast_eval_api'))]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr
