"""Mutual information next to downstream numbers: Lee et al.'s encoder ranking and InfoMin's reverse-U.

Reads the ``mi.json`` files (format: docs/artifacts.md) of ``tools/estimate_mi.py`` under a results root (any depth; a sweep writes
them to ``ROOT/mi_<name>/<backbone>/mi.json``) and relates them to the runs' ``results.json``:

- :func:`mi_columns`: one MI column (bits) per estimate, ``{column: {backbone: value}}``, for the tables'
  ``extra`` columns;
- :func:`ranking`: per downstream (task, mode, metric), the backbones' MI and mean value, and the Pearson
  and Kendall correlations between them across backbones (with p-values), as Lee et al. Table I;
- :func:`plot_mi_vs_metric`: the downstream value against MI, one point per backbone, with a quadratic
  fit from 4 distinct MI values on (the reverse-U of InfoMin Fig. 5 / Lee et al. Fig. 5-6 shows as a
  concave curve; 3 points are only joined, since a parabola would pass through them whatever they are). Backbones named
  as a family plus a number (``cj0.5``, ``cj1``, ``crop0.08``: one augmentation at several strengths) form
  one series each, with its own fit, as Lee et al. Fig. 5(a) and (b).

An estimate within 5% of its ceiling (log K_Est) is marked: there the batch, not the encoder, limits it.
"""
import json
import math
import os
import re
from dataclasses import dataclass

from pretrain.common.runs import MI_FILE
from transfer.report.render import escape_html

__all__ = ["MIRecord", "collect_mi", "mi_columns", "ranking", "Ranking", "render_ranking",
           "plot_mi_vs_metric", "RANKED_METRICS"]

NEAR_CEILING = 0.95
# the downstream metric per family that the ranking uses (Lee et al.: linear accuracy)
RANKED_METRICS = (("linear", "top1"), ("bbox", "AP"), ("segm", "AP"), ("keypoints", "AP"))


@dataclass(frozen=True)
class MIRecord:
    path: str
    name: str            # the estimate's name: the sweep's evaluation name, else the pairing
    backbone: str
    pairing: str
    mi_nats: float
    mi_std_nats: float
    ceiling_nats: float
    k_est: int
    class_entropy_bits: float = None

    @property
    def mi_bits(self):
        return self.mi_nats / math.log(2)

    @property
    def near_ceiling(self):
        return self.ceiling_nats > 0 and self.mi_nats >= NEAR_CEILING * self.ceiling_nats

    @property
    def column(self):
        return f"MI {self.name} (bits)"


def _float(record, key, required=True):
    value = record.get(key)
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"`{key}` is {value!r}, not a finite number")
    return float(value)


def _read(path):
    with open(path) as f:
        record = json.load(f)
    if not isinstance(record, dict):
        raise ValueError("not a JSON object")
    folder = os.path.basename(os.path.dirname(path))
    parent = os.path.basename(os.path.dirname(os.path.dirname(path)))
    backbone = record.get("backbone") or record.get("backbone_name") or folder
    pairing = str(record.get("pairing") or "")
    if not pairing:
        raise ValueError("`pairing` missing")
    name = parent[len("mi_"):] if parent.startswith("mi_") and len(parent) > 3 else pairing
    k_est = record.get("k_est")
    if isinstance(k_est, bool) or not isinstance(k_est, int):
        raise ValueError(f"`k_est` is {k_est!r}, not an integer")
    std = record.get("mi_nats_std", record.get("mi_std_nats", 0.0))
    return MIRecord(path, name, str(backbone), pairing, _float(record, "mi_nats"),
                    float(std) if isinstance(std, (int, float)) and math.isfinite(std) else 0.0,
                    _float(record, "ceiling_nats"), k_est, _float(record, "class_entropy_bits", required=False))


def collect_mi(root):
    """``(records, skipped)``: every readable mi.json under ``root``; ``skipped`` = [(path, reason)]."""
    records, skipped, seen = [], [], {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        if MI_FILE not in filenames:
            continue
        path = os.path.join(dirpath, MI_FILE)
        try:
            rec = _read(path)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, ValueError) as e:
            skipped.append((path, str(e).splitlines()[0] if str(e) else type(e).__name__))
            continue
        key = (rec.name, rec.backbone)
        if key in seen:
            skipped.append((path, f"a second MI estimate {rec.name!r} of {rec.backbone} (first: {seen[key]})"))
            continue
        seen[key] = path
        records.append(rec)
    return records, skipped


def mi_columns(records):
    """``{column: {backbone: MI in bits}}`` for the tables' extra columns."""
    out = {}
    for rec in records:
        out.setdefault(rec.column, {})[rec.backbone] = rec.mi_bits
    return out


def _means(collection):
    """``{(task, mode, family, metric): {backbone: mean over seeds}}`` of the ranked metrics."""
    sums = {}
    for run in collection.runs:
        for family, metric in RANKED_METRICS:
            value = run.value(family, metric)
            if value is None or not math.isfinite(value):
                continue
            sums.setdefault((run.task, run.mode, family, metric), {}).setdefault(run.backbone, []).append(value)
    return {k: {b: sum(v) / len(v) for b, v in d.items()} for k, d in sums.items()}


@dataclass
class Ranking:
    estimate: str          # MI estimate name
    task: str
    mode: str
    metric: str            # "family.metric"
    rows: list             # [(backbone, MI bits, near ceiling, downstream mean)], by MI, decreasing
    n: int
    pearson: float = None
    pearson_p: float = None
    kendall: float = None
    kendall_p: float = None


def ranking(records, collection):
    """One :class:`Ranking` per (MI estimate, downstream task/mode/metric) sharing >= 2 backbones;
    correlations need >= 3 backbones (None otherwise, or when a side is constant)."""
    from scipy import stats

    by_name = {}
    for rec in records:
        by_name.setdefault(rec.name, {})[rec.backbone] = rec
    out = []
    for (task, mode, family, metric), values in sorted(_means(collection).items()):
        for name, recs in sorted(by_name.items()):
            common = sorted(set(values) & set(recs), key=lambda b: -recs[b].mi_nats)
            if len(common) < 2:
                continue
            rows = [(b, recs[b].mi_bits, recs[b].near_ceiling, values[b]) for b in common]
            r = Ranking(name, task, mode, f"{family}.{metric}", rows, len(rows))
            x = [row[1] for row in rows]
            y = [row[3] for row in rows]
            if len(rows) >= 3 and len(set(x)) > 1 and len(set(y)) > 1:
                p = stats.pearsonr(x, y)
                k = stats.kendalltau(x, y)
                r.pearson, r.pearson_p = float(p[0]), float(p[1])
                r.kendall, r.kendall_p = float(k[0]), float(k[1])
            out.append(r)
    return out


def _corr(value, p):
    return "n/a" if value is None else f"{value:+.3f} (p={p:.2g})"


def render_ranking(rankings, fmt="markdown"):
    """The rankings as markdown (or HTML) tables: backbones by MI with the downstream value, and the
    correlations under each table."""
    if not rankings:
        return ""
    parts = []
    if fmt == "html":
        for r in rankings:
            head = (f"<h3>MI {escape_html(r.estimate)} vs {escape_html(r.task)} ({escape_html(r.mode)}) "
                    f"{escape_html(r.metric)}</h3>")
            rows = "".join(f"<tr><td class=\"label\">{escape_html(b)}</td><td>{mi:.3f}{' *' if near else ''}</td>"
                           f"<td>{v:.2f}</td></tr>" for b, mi, near, v in r.rows)
            parts.append(head + f"<table><tr><th>backbone</th><th>MI (bits)</th><th>{escape_html(r.metric)}</th></tr>"
                         f"{rows}</table><p class=\"notes\">n = {r.n} &middot; Pearson {_corr(r.pearson, r.pearson_p)}"
                         f" &middot; Kendall {_corr(r.kendall, r.kendall_p)}</p>")
        parts.append("<p class=\"notes\">* within 5% of the estimate's ceiling log K_Est: the estimation batch, "
                     "not the encoder, limits it.</p>")
        return "\n".join(parts)
    for r in rankings:
        lines = [f"### MI {r.estimate} vs {r.task} ({r.mode}) {r.metric}", "",
                 f"| backbone | MI (bits) | {r.metric} |", "|---|---:|---:|"]
        lines += [f"| {b} | {mi:.3f}{' *' if near else ''} | {v:.2f} |" for b, mi, near, v in r.rows]
        lines += ["", f"n = {r.n}; Pearson {_corr(r.pearson, r.pearson_p)}; Kendall {_corr(r.kendall, r.kendall_p)}", ""]
        parts.append("\n".join(lines))
    if any(near for r in rankings for _, _, near, _ in r.rows):
        parts.append("\\* within 5% of the estimate's ceiling log K_Est: the estimation batch, not the encoder, "
                     "limits it.\n")
    return "\n".join(parts)


def series(rows):
    """``{family: rows}``: backbones named ``<family><number>`` grouped by family (in first-seen order);
    one unnamed series when no family has two members."""
    groups = {}
    for row in rows:
        m = re.fullmatch(r"(.*?[A-Za-z_+-])[\d.]+", row[0])
        groups.setdefault(m.group(1).rstrip("_-") if m else row[0], []).append(row)
    if all(len(v) < 2 for v in groups.values()):
        return {"": list(rows)}
    return groups


def plot_mi_vs_metric(rankings, title_prefix="Downstream vs MI"):
    """``{key: PNG bytes}``: one scatter per ranking (value against MI, labelled points) with a quadratic
    least-squares fit when there are >= 3 distinct MI values (concave: a reverse-U)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    plots = {}
    for r in rankings:
        fig, ax = plt.subplots(figsize=(5, 3.6), dpi=100)
        for i, (family, rows) in enumerate(series(r.rows).items()):
            color = f"C{i}"
            x = np.array([row[1] for row in rows])
            y = np.array([row[3] for row in rows])
            ax.scatter(x, y, color=color, zorder=3, label=family or None)
            for (b, _, _, _), xi, yi in zip(rows, x, y):
                ax.annotate(b, (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=7)
            order = np.argsort(x)
            if len(set(x.tolist())) == 3:  # a parabola through 3 points fits exactly: join them instead
                ax.plot(x[order], y[order], color=color, lw=1, ls=":")
            elif len(set(x.tolist())) >= 4:
                coef = np.polyfit(x, y, 2)
                grid = np.linspace(x.min(), x.max(), 100)
                ax.plot(grid, np.polyval(coef, grid), color=color, lw=1, ls="--",
                        label=f"{family + ': ' if family else ''}quadratic fit"
                              + (" (concave)" if coef[0] < 0 else ""))
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="best")
        ax.set_xlabel(f"MI {r.estimate} (bits)")
        ax.set_ylabel(r.metric)
        ax.set_title(f"{title_prefix}: {r.task} ({r.mode})", fontsize=9)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        plt.close(fig)
        plots[f"{r.estimate}|{r.task}|{r.mode}|{r.metric}"] = buf.getvalue()
    return plots
