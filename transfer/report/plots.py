"""One PNG per task: each backbone's delta vs the baseline (its mean without a baseline), fine-tuned and
frozen side by side, one bar per metric family (AP by default; a task without AP, such as
linear_<dataset>, its first metric), error bars the sample std over seeds.

Drawn with matplotlib's object API on the Agg canvas: no display, no pyplot global state.
"""
import io
import math
import os

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from pretrain.common.fileio import write_bytes_atomic
from transfer.report.table import FAMILY_LABELS, HIGHLIGHT, MODE_LABELS

COLORS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860")


def _safe_name(task):
    return "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in task)


def plot_task(tables, metric="AP"):
    """PNG bytes for the tables of one task (one per family), or None when there is nothing to draw."""
    tables = [t for t in tables if metric in t.metrics and t.our_rows()]
    if not tables:
        return None
    task, modes, baseline = tables[0].task, tables[0].modes, tables[0].baseline
    backbones = []
    for t in tables:
        for row in t.our_rows():
            if row.backbone not in backbones and not (baseline and row.backbone == baseline):
                backbones.append(row.backbone)
    if not backbones:
        return None
    width_in = max(7.0, 2.2 + len(modes) * (0.9 + 0.55 * len(backbones) * max(1, len(tables)) ** 0.5))
    fig = Figure(figsize=(min(width_in, 18.0), 4.2), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(modes), sharey=True, squeeze=False)[0]
    bar_w = 0.8 / len(tables)
    top = 0.0
    for ax, mode in zip(axes, modes):
        for j, t in enumerate(tables):
            rows = {r.backbone: r for r in t.our_rows()}
            xs, ys, errs = [], [], []
            for i, b in enumerate(backbones):
                cell = rows[b].cells.get((mode, metric)) if b in rows else None
                value = None if cell is None else (cell.delta if baseline else cell.mean)
                x = i + (j - (len(tables) - 1) / 2) * bar_w
                if value is None or not math.isfinite(value):
                    ax.text(x, 0, "no runs", ha="center", va="bottom", fontsize=7, color="#8c959f", rotation=90)
                    continue
                xs.append(x)
                ys.append(value)
                errs.append(cell.std)
                top = max(top, abs(value) + (cell.std or 0.0))
            label = f"{FAMILY_LABELS.get(t.family, t.family)} {metric}"
            ax.bar(xs, ys, width=bar_w * 0.95, color=COLORS[j % len(COLORS)], label=label)
            with_std = [(x, y, e) for x, y, e in zip(xs, ys, errs) if e is not None]
            if with_std:  # error bars: sample std over seeds, where there are several
                ex, ey, ee = zip(*with_std)
                ax.errorbar(ex, ey, yerr=ee, fmt="none", ecolor="#333333", elinewidth=1, capsize=3)
        ax.axhline(0, color="#333333", linewidth=0.8)
        pad = (max(len(backbones), 3) - len(backbones)) / 2  # a lone backbone gets a bar, not a wall
        ax.set_xlim(-0.6 - pad, len(backbones) - 0.4 + pad)
        ax.set_xticks(range(len(backbones)))
        crowded = len(backbones) > 3
        ax.set_xticklabels(backbones, rotation=30 if crowded else 0, ha="right" if crowded else "center")
        ax.set_title(MODE_LABELS[mode])
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
    if baseline and top >= HIGHLIGHT / 2:  # the papers' +0.5 mark, where it is on the scale of the data
        for ax in axes:
            ax.axhline(HIGHLIGHT, color="#1a7f37", linewidth=0.8, linestyle="--", label=f"+{HIGHLIGHT}")
    axes[0].set_ylabel(f"{metric} delta vs {baseline} (points)" if baseline else f"{metric} (%)")
    axes[-1].legend(fontsize=8, loc="best")
    fig.suptitle(task, fontsize=11)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def plot_tables(tables, metric="AP"):
    """{task: PNG bytes} for every task of ``tables`` that has something to draw."""
    by_task = {}
    for t in tables:
        by_task.setdefault(t.task, []).append(t)
    out = {}
    for task, ts in by_task.items():
        png = plot_task(ts, metric=metric)
        if png is None and not any(metric in t.metrics for t in ts):  # e.g. linear_<dataset>: top1, not AP
            png = plot_task(ts, metric=ts[0].metrics[0])
        if png is not None:
            out[task] = png
    return out


def write_plots(plots, out_dir):
    """Write ``{task: png}`` as ``out_dir/<task>.png`` (atomically); returns the paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for task, png in plots.items():
        path = os.path.join(out_dir, f"{_safe_name(task)}.png")
        write_bytes_atomic(path, png)
        paths.append(path)
    return paths
