"""Transfer curves during pretraining: each downstream metric against the pretraining epoch, next to the MI.

A sweep with ``pretrain: curves`` (:mod:`transfer.launch.curves`) evaluates the checkpoints its pretraining runs
keep every K epochs; their runs carry the backbone label ``<method>@ep<epoch>``
(:func:`pretrain.common.runs.epoch_label`). Here those ``results.json`` and ``mi.json`` become:

- :func:`collect_curves`: per task, the metric of its first family among :data:`CURVE_METRICS` (linear and
  kNN top-1, box, mask or keypoint AP) as one line per method (the pretrained backbone) and mode, points
  ``(epoch, mean over seeds, sample std, n)``; per MI estimate, one line per method of MI in bits;
- :func:`plot_curves`: one PNG per task, the modes side by side (frozen, fine-tuned) with the MI estimates in
  a panel beside them, the same colour for a method in every panel;
- :func:`curves_html`: those figures and the numbers, for the HTML report.

Runs of other backbones are not part of any curve; a root without curve runs has no curves (None).
"""
import io
import math
import os
from dataclasses import dataclass, field

from pretrain.common.fileio import write_bytes_atomic
from pretrain.common.runs import MODES, split_epoch_label
from transfer.report.render import escape_html
from transfer.report.table import MODE_LABELS

__all__ = ["CURVE_METRICS", "Curve", "MICurve", "Curves", "collect_curves", "plot_curves", "write_curve_plots",
           "curves_html", "CURVES_HEADING"]

CURVES_HEADING = "Transfer curves during pretraining"
# the metric a task's curve shows: the first family its curve runs report
CURVE_METRICS = (("linear", "top1"), ("knn", "top1"), ("bbox", "AP"), ("segm", "AP"), ("keypoints", "AP"))
COLORS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c")


@dataclass
class Curve:
    """One task's curves: ``lines[method][mode]`` = [(epoch, mean, std or None, n)], by epoch."""

    task: str
    family: str
    metric: str
    modes: list
    lines: dict

    def epochs(self):
        return sorted({p[0] for by_mode in self.lines.values() for pts in by_mode.values() for p in pts})


@dataclass
class MICurve:
    """One MI estimate's curves: ``lines[method]`` = [(epoch, MI bits, std bits, ceiling bits)], by epoch."""

    name: str
    lines: dict

    def epochs(self):
        return sorted({p[0] for pts in self.lines.values() for p in pts})


@dataclass
class Curves:
    curves: list = field(default_factory=list)   # [Curve], by task
    mi: list = field(default_factory=list)       # [MICurve], by name

    def methods(self):
        """Every method, in order (the colour of each in every figure)."""
        names = {m for c in self.curves for m in c.lines} | {m for c in self.mi for m in c.lines}
        return sorted(names)


def _stats(values):
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
    return mean, std, n


def collect_curves(collection, mi_records=()):
    """The :class:`Curves` of a report's runs (:class:`transfer.report.runs.Collection`) and MI estimates
    (:class:`transfer.report.mi.MIRecord`), or None when no backbone is an epoch label."""
    per_task = {}
    for run in collection.runs:
        label = split_epoch_label(run.backbone)
        if label is not None:
            per_task.setdefault(run.task, []).append((label, run))
    curves = []
    for task in sorted(per_task):
        found = [(fam, met) for fam, met in CURVE_METRICS
                 if any(r.value(fam, met) is not None for _, r in per_task[task])]
        if not found:
            continue
        family, metric = found[0]
        values = {}
        for (method, epoch), run in per_task[task]:
            value = run.value(family, metric)
            if value is not None and math.isfinite(value):
                values.setdefault(method, {}).setdefault(run.mode, {}).setdefault(epoch, []).append(value)
        lines = {m: {mode: [(e, *_stats(v)) for e, v in sorted(by_epoch.items())]
                     for mode, by_epoch in by_mode.items()} for m, by_mode in sorted(values.items())}
        modes = [m for m in MODES if any(m in by_mode for by_mode in lines.values())]
        if lines:
            curves.append(Curve(task, family, metric, modes, lines))
    mi = {}
    for rec in mi_records:
        label = split_epoch_label(rec.backbone)
        if label is not None:
            method, epoch = label
            ln2 = math.log(2)
            mi.setdefault(rec.name, {}).setdefault(method, []).append(
                (epoch, rec.mi_bits, rec.mi_std_nats / ln2, rec.ceiling_nats / ln2))
    mi_curves = [MICurve(name, {m: sorted(pts) for m, pts in sorted(lines.items())})
                 for name, lines in sorted(mi.items())]
    if not curves and not mi_curves:
        return None
    return Curves(curves, mi_curves)


def _draw(ax, epochs, ys, errs, color, label, style="-"):
    ax.plot(epochs, ys, color=color, marker="o", markersize=4, linewidth=1.4, linestyle=style, label=label)
    with_std = [(x, y, e) for x, y, e in zip(epochs, ys, errs) if e is not None]
    if with_std:  # sample std over seeds, where there are several
        ex, ey, ee = zip(*with_std)
        ax.errorbar(ex, ey, yerr=ee, fmt="none", ecolor=color, elinewidth=1, capsize=3)


def _figure(curve, curves):
    """PNG bytes: the curve's modes side by side, then the MI panel (when there are MI curves)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    colors = {m: COLORS[i % len(COLORS)] for i, m in enumerate(curves.methods())}
    panels = len(curve.modes) + (1 if curves.mi else 0)
    fig = Figure(figsize=(3.6 * panels + 0.8, 3.4), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, panels, squeeze=False)[0]
    for ax in axes[1:len(curve.modes)]:
        ax.sharey(axes[0])
    unit = "%" if curve.metric.startswith("top") or curve.metric.startswith("AP") else ""
    for ax, mode in zip(axes, curve.modes):
        for method, by_mode in curve.lines.items():
            pts = by_mode.get(mode)
            if pts:
                _draw(ax, [p[0] for p in pts], [p[1] for p in pts], [p[2] for p in pts], colors[method], method)
        ax.set_title(MODE_LABELS[mode], fontsize=10)
        ax.set_xlabel("pretraining epoch")
        ax.grid(alpha=0.3)
    if curve.modes:
        axes[0].set_ylabel(f"{curve.family} {curve.metric}" + (f" ({unit})" if unit else ""))
    if curves.mi:
        ax = axes[-1]
        styles = ("-", "--", ":", "-.")
        for j, mic in enumerate(curves.mi):
            for method, pts in mic.lines.items():
                _draw(ax, [p[0] for p in pts], [p[1] for p in pts], [p[2] or None for p in pts], colors[method],
                      f"{method} ({mic.name})" if len(curves.mi) > 1 else method, styles[j % len(styles)])
        ax.set_title("MI estimate", fontsize=10)
        ax.set_xlabel("pretraining epoch")
        ax.set_ylabel("MI (bits)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="best")
    if curves.mi and len(curves.mi) > 1:
        axes[-1].legend(fontsize=7, loc="best")
    fig.suptitle(f"{curve.task}: {curve.family} {curve.metric} during pretraining" if curve.modes
                 else "MI during pretraining", fontsize=11)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _mi_only(curves):
    """The MI panel alone (a root with MI curves and no downstream ones)."""
    return _figure(Curve("MI", "", "", [], {}), curves)


def plot_curves(curves):
    """``{name: PNG bytes}``: ``curves_<task>`` per task (``curves_mi`` when only MI curves exist)."""
    if curves is None:
        return {}
    if not curves.curves:
        return {"curves_mi": _mi_only(curves)} if curves.mi else {}
    return {f"curves_{c.task}": _figure(c, curves) for c in curves.curves}


def write_curve_plots(plots, out_dir):
    """Write ``{name: png}`` of :func:`plot_curves` as ``out_dir/<name>.png`` (atomically); returns the paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for name, png in plots.items():
        safe = "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in name)
        paths.append(write_bytes_atomic(os.path.join(out_dir, f"{safe}.png"), png))
    return paths


def _num(value, digits=2):
    return "&mdash;" if value is None else f"{value:.{digits}f}"


def _table(epochs, columns):
    """An HTML table: one row per epoch, ``columns`` = [(heading, {epoch: (mean, std, n)})]."""
    head = "<tr><th>epoch</th>" + "".join(f"<th>{escape_html(h)}</th>" for h, _ in columns) + "</tr>"
    rows = []
    for e in epochs:
        cells = []
        for _, points in columns:
            p = points.get(e)
            cells.append("<td></td>" if p is None else
                         f'<td class="num">{_num(p[0])}' + (f" &plusmn; {_num(p[1])}" if p[1] is not None else "")
                         + (f" ({p[2]})" if p[2] and p[2] > 1 else "") + "</td>")
        rows.append(f'<tr><td class="num">{e}</td>{"".join(cells)}</tr>')
    return f"<table>{head}{''.join(rows)}</table>"


def curves_html(curves, plots, data_uri):
    """The report's section: each task's figure (``plots`` of :func:`plot_curves`) and its numbers, then the
    MI estimates' numbers. ``data_uri(png)`` embeds a figure."""
    parts = ['<p class="notes">Evaluations of the checkpoints kept every K epochs of pretraining (backbones '
             '<code>&lt;method&gt;@ep&lt;epoch&gt;</code>): mean &plusmn; sample std over seeds (n when more than '
             'one); MI in bits.</p>']
    for name, png in plots.items():
        parts.append(f'<img class="plot" alt="{escape_html(name)}" src="{data_uri(png)}">')
    for c in curves.curves:
        columns = [(f"{method} {MODE_LABELS[mode]}", {p[0]: p[1:] for p in by_mode[mode]})
                   for method, by_mode in c.lines.items() for mode in c.modes if mode in by_mode]
        parts.append(f"<h3>{escape_html(c.task)}: {escape_html(c.family)} {escape_html(c.metric)}</h3>"
                     + _table(c.epochs(), columns))
    for mic in curves.mi:
        columns = [(method, {p[0]: (p[1], p[2] or None, 0) for p in pts}) for method, pts in mic.lines.items()]
        parts.append(f"<h3>MI {escape_html(mic.name)} (bits)</h3>" + _table(mic.epochs(), columns))
    return "\n".join(parts)
