"""How many seeds a difference needs: the power analysis behind ``tools/make_table.py --seeds-needed``.

For every cell of our runs that is compared (every backbone but the baseline; every backbone when the
tables have no baseline), one row: the spread of the runs (the pooled sample std of the cell and the
baseline's cell, or the cell's own without a baseline), the difference to detect (a given DELTA, or the
observed delta to the baseline), the power the seeds run now have to detect it, and the seeds per row
a two-sided two-sample t-test at alpha 0.05 needs for power 0.8 (:func:`significance.seeds_needed`;
never fewer than the 3 seeds from which the tables test at all).
"""
import csv
import io
from dataclasses import dataclass

from transfer.report.render import DASH, escape_html, fmt_number, html_document, latex_escape
from transfer.report.significance import ALPHA, MIN_SEEDS, POWER, pooled_std, power_two_sample, seeds_needed
from transfer.report.table import MODE_LABELS

OBSERVED = "observed"  # --seeds-needed without a value: the observed deltas
SEEDS_COLUMNS = ("task", "family", "metric", "backbone", "mode", "n", "baseline_n", "std", "delta", "delta_source",
                 "power_now", "seeds_needed", "note")
TITLE = (f"Seeds needed per row: two-sided two-sample t-test, alpha {ALPHA:g}, power {POWER:g}, at the observed "
         "spread")
LEGEND = (f"std: the pooled sample std of the row's seeds and the baseline's (the row's own without a baseline); "
          f"delta: the difference to detect (given, or the observed delta to the baseline); power now: the chance "
          f"that the seeds the rows have now detect it; seeds needed: per row, for power {POWER:g} (noncentral t "
          f"distribution, equal seeds per row), at least {MIN_SEEDS}, the fewest the tables test; {DASH}: cannot be "
          "computed (see the note).")


@dataclass
class SeedsRow:
    task: str
    family: str
    metric: str
    backbone: str
    mode: str
    n: int
    baseline_n: int = None
    std: float = None
    delta: float = None
    delta_source: str = ""  # "observed" | "given"
    power_now: float = None
    seeds_needed: int = None
    note: str = ""
    decimals: int = 1


def _row(table, row, mode, metric, cell, base, delta):
    out = SeedsRow(task=table.task, family=table.family, metric=metric, backbone=row.backbone, mode=mode, n=cell.n,
                   baseline_n=base.n if base is not None else None, decimals=table.decimals)
    groups = [(cell.std, cell.n)] + ([(base.std, base.n)] if base is not None else [])
    out.std = pooled_std(groups)
    if delta == OBSERVED:
        out.delta, out.delta_source = cell.delta, OBSERVED
    else:
        out.delta, out.delta_source = abs(float(delta)), "given"
    if out.std is None:
        out.note = "no spread: fewer than 2 seeds"
        return out
    if out.delta is None:
        out.note = "no delta: no baseline cell"
        return out
    if out.delta == 0:
        out.note = "delta is 0"
        return out
    power_n = min(cell.n, base.n) if base is not None else cell.n
    if out.std > 0 and power_n >= 2:
        out.power_now = power_two_sample(power_n, out.delta, out.std)
    needed = seeds_needed(out.delta, out.std)
    if needed is None:
        out.note = "more than 100000 seeds"
    else:
        out.seeds_needed = max(needed, MIN_SEEDS)
        if out.std == 0:
            out.note = "the runs do not spread"
    return out


def seeds_rows(tables, delta=OBSERVED):
    """The :class:`SeedsRow` of every compared cell of ``tables``; ``delta``: a difference to detect (in the
    metric's points), or :data:`OBSERVED` for each cell's delta to the baseline."""
    out = []
    for table in tables:
        if table.baseline is None and delta == OBSERVED:
            continue
        base_row = next((r for r in table.our_rows() if r.backbone == table.baseline), None)
        for row in table.our_rows():
            if row is base_row:
                continue
            for mode in table.modes:
                for metric in table.metrics:
                    cell = row.cells.get((mode, metric))
                    if cell is None or cell.mean is None:
                        continue
                    base = base_row.cells.get((mode, metric)) if base_row is not None else None
                    if table.baseline is not None and (base is None or base.mean is None):
                        continue
                    out.append(_row(table, row, mode, metric, cell, base, delta))
    return out


def _texts(r):
    """Display strings of a row: n, std, delta, power now, seeds needed."""
    n = str(r.n) if r.baseline_n is None else f"{r.n} / {r.baseline_n}"
    std = DASH if r.std is None else fmt_number(r.std, r.decimals)
    delta = DASH if r.delta is None else fmt_number(r.delta, r.decimals)
    power = DASH if r.power_now is None else f"{r.power_now:.2f}"
    needed = DASH if r.seeds_needed is None else str(r.seeds_needed)
    return n, std, delta, power, needed


HEADER = ("task", "family", "backbone", "mode", "metric", "n (row / baseline)", "std", "delta", "power now",
          "seeds needed", "note")


def _display_rows(rows):
    return [(r.task, r.family, r.backbone, MODE_LABELS.get(r.mode, r.mode), r.metric, *_texts(r), r.note)
            for r in rows]


def _csv(rows):
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=SEEDS_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({"task": r.task, "family": r.family, "metric": r.metric, "backbone": r.backbone,
                         "mode": r.mode, "n": r.n, "baseline_n": "" if r.baseline_n is None else r.baseline_n,
                         "std": "" if r.std is None else repr(r.std),
                         "delta": "" if r.delta is None else repr(float(r.delta)), "delta_source": r.delta_source,
                         "power_now": "" if r.power_now is None else repr(r.power_now),
                         "seeds_needed": "" if r.seeds_needed is None else r.seeds_needed, "note": r.note})
    return buf.getvalue()


def _markdown(rows):
    lines = [f"## {TITLE}", "", "| " + " | ".join(HEADER) + " |",
             "|" + "|".join([":---"] * 5 + ["---:"] * 5 + [":---"]) + "|"]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in _display_rows(rows)]
    return "\n".join(lines + ["", LEGEND, ""])


def _latex(rows):
    lines = ["% needs \\usepackage{booktabs}", "\\begin{table}[t]", "\\centering", "\\small",
             f"\\caption{{{latex_escape(TITLE)}. {latex_escape(LEGEND)}}}",
             "\\begin{tabular}{lllllrrrrrl}", "\\toprule", " & ".join(latex_escape(h) for h in HEADER) + " \\\\",
             "\\midrule"]
    lines += [" & ".join(latex_escape(c) for c in r) + " \\\\" for r in _display_rows(rows)]
    return "\n".join(lines + ["\\bottomrule", "\\end{tabular}", "\\end{table}", ""])


def seeds_html(rows):
    """The seeds-needed table as an HTML fragment (for the report)."""
    head = "".join(f"<th>{escape_html(h)}</th>" for h in HEADER)
    body = "".join("<tr>" + "".join(f'<td{" class=label" if i < 5 else ""}>{escape_html(c)}</td>'
                                    for i, c in enumerate(r)) + "</tr>" for r in _display_rows(rows))
    return (f'<div class="scroll"><table class="results"><thead><tr>{head}</tr></thead><tbody>{body}</tbody>'
            f'</table></div>\n<p class="legend">{escape_html(LEGEND)}</p>')


def render_seeds(rows, fmt="markdown"):
    """The seeds-needed rows in one of the table formats."""
    if fmt == "csv":
        return _csv(rows)
    if fmt == "latex":
        return _latex(rows)
    if fmt == "html":
        return html_document("Seeds needed", f"<h1>{escape_html(TITLE)}</h1>\n{seeds_html(rows)}")
    if fmt == "markdown":
        return _markdown(rows)
    raise ValueError(f"unknown format {fmt!r}")
