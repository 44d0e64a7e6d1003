"""Render :class:`~transfer.report.table.Table` objects as markdown, CSV (long form), LaTeX or HTML.

Every format shows the same cells: mean +- sample std over seeds (n when > 1), the delta to the
baseline in brackets with its sign, a dash for a missing cell and a dagger for a cell that excluded
non-finite runs; published rows are marked as such. LaTeX and HTML (and markdown, in bold) highlight
deltas of at least +0.5 point as the papers do. CSV is one row per cell with exactly the columns
``task,family,metric,backbone,mode,n,mean,std,delta``.
"""
import csv
import html
import io

from transfer.report.table import FAMILY_LABELS, HIGHLIGHT, MODE_LABELS

FORMATS = ("markdown", "csv", "latex", "html")
CSV_COLUMNS = ("task", "family", "metric", "backbone", "mode", "n", "mean", "std", "delta")
DASH = "\u2014"
FLAG = "\u2020"  # dagger: non-finite runs excluded
PM = "\u00b1"
LEGEND = (f"Cells: mean {PM} sample std over seeds (n shown when > 1); [delta] vs the baseline backbone of the same "
          f"task and mode; {DASH}: no runs; {FLAG}: runs with non-finite values excluded; published rows are the "
          "papers' numbers, their deltas vs the paper's own baseline row.")


# ------------------------------------------------------------------------------------------------ cells

def fmt_number(x, decimals):
    return f"{x:.{decimals}f}"


def fmt_delta(delta, decimals):
    r = round(delta, decimals)
    return f"{(r if r != 0 else 0.0):+.{decimals}f}"


def is_highlight(delta, decimals, threshold=HIGHLIGHT):
    """A delta of at least +threshold as displayed (so a shown +0.5 is always highlighted)."""
    return delta is not None and round(delta, decimals) >= threshold - 1e-9


def cell_parts(cell, row, table):
    """The pieces of a cell's text: dict(mean, std, n, flag, delta, high) of strings / bool, or None
    for an empty cell (a published row's other mode), or {"missing": True}."""
    decimals = table.published_decimals if row.published else table.decimals
    if cell is None:
        return None if row.published else {"missing": True, "flag": False}
    parts = {"missing": False, "mean": "", "std": "", "n": "", "flag": False, "delta": "", "high": False}
    if row.published:
        parts["mean"] = fmt_number(cell.mean, decimals)
    else:
        parts["flag"] = cell.flagged
        if cell.mean is None:
            parts["missing"] = True
            return parts
        parts["mean"] = fmt_number(cell.mean, decimals)
        if cell.n > 1:
            parts["std"] = fmt_number(cell.std, decimals)
            parts["n"] = str(cell.n)
    if cell.delta is not None and not row.is_baseline:
        parts["delta"] = fmt_delta(cell.delta, decimals)
        parts["high"] = is_highlight(cell.delta, decimals)
    return parts


def table_notes(table):
    """Lines to print under a table: missing runs, non-finite runs, other remarks."""
    lines = []
    if table.missing:
        lines.append(f"missing runs: {table.missing_runs} (seeds other backbones ran; {DASH}: no runs at all): "
                     + "; ".join(table.missing))
    if table.nonfinite:
        k = len(table.nonfinite)
        lines.append(f"non-finite values, not averaged in ({FLAG}): {k} run{'s' if k > 1 else ''}: "
                     + "; ".join(table.nonfinite))
    lines.extend(table.notes)
    return lines


def skipped_lines(skipped):
    if not skipped:
        return []
    return [f"skipped {len(skipped)} results.json that could not be used:"] + [f"  {p}: {why}" for p, why in skipped]


def _row_label(row):
    if row.published:
        return f"{row.label} (published: {row.citation})"
    return f"{row.label} (baseline)" if row.is_baseline else row.label


def _extra_text(value, decimals):
    if value is None:
        return DASH
    return fmt_number(value, decimals) if isinstance(value, float) else str(value)


# --------------------------------------------------------------------------------------------- markdown

def _md_escape(text):
    return str(text).replace("|", "\\|")


def _md_cell(parts):
    if parts is None:
        return ""
    if parts["missing"]:
        return DASH + (FLAG if parts["flag"] else "")
    text = parts["mean"]
    if parts["std"]:
        text += f" {PM} {parts['std']}"
    if parts["n"]:
        text += f" (n={parts['n']})"
    if parts["flag"]:
        text += FLAG
    if parts["delta"]:
        text += f" **[{parts['delta']}]**" if parts["high"] else f" [{parts['delta']}]"
    return text


def render_markdown_table(table):
    header = ["backbone", *table.extra_columns,
              *(f"{MODE_LABELS[m]} {metric}" for m in table.modes for metric in table.metrics)]
    lines = [f"### {table.task} \u00b7 {FAMILY_LABELS.get(table.family, table.family)}", "",
             "| " + " | ".join(header) + " |",
             "|" + "|".join([":---"] + ["---:"] * (len(header) - 1)) + "|"]
    for row in table.rows:
        label = f"_{_md_escape(_row_label(row))}_" if row.published else _md_escape(_row_label(row))
        cells = [label] + [_extra_text(row.extra.get(c), table.decimals) for c in table.extra_columns]
        cells += [_md_cell(cell_parts(row.cells.get((m, metric)), row, table))
                  for m in table.modes for metric in table.metrics]
        lines.append("| " + " | ".join(cells) + " |")
    notes = table_notes(table)
    if notes:
        lines.append("")
        lines.extend(f"- {_md_escape(n)}" for n in notes)
    return "\n".join(lines)


def render_markdown(tables, skipped=()):
    blocks = [render_markdown_table(t) for t in tables]
    tail = [LEGEND]
    if skipped:
        tail.append("\n".join(f"- {line.strip()}" if i else line for i, line in enumerate(skipped_lines(skipped))))
    return "\n\n".join(blocks + tail) + "\n"


# -------------------------------------------------------------------------------------------------- csv

def _num(x):
    return "" if x is None else repr(float(x))


def csv_rows(tables):
    """The long-form rows (dicts keyed by :data:`CSV_COLUMNS`), one per cell of our runs with a run behind
    it, and one per published number (backbone ``published:PAPER TABLE:KEY``, n empty)."""
    out = []
    for table in tables:
        for row in table.rows:
            for mode in table.modes:
                for metric in table.metrics:
                    cell = row.cells.get((mode, metric))
                    if cell is None:
                        continue
                    if row.published:
                        ref = cell.reference
                        out.append(dict(task=table.task, family=table.family, metric=metric,
                                        backbone=f"published:{ref.citation}:{ref.backbone}", mode=mode, n="",
                                        mean=_num(ref.value), std="", delta=_num(ref.delta)))
                    else:
                        out.append(dict(task=table.task, family=table.family, metric=metric, backbone=row.backbone,
                                        mode=mode, n=str(cell.n), mean=_num(cell.mean), std=_num(cell.std),
                                        delta=_num(cell.delta)))
    return out


def render_csv(tables, skipped=()):
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(csv_rows(tables))
    return buf.getvalue()


# ------------------------------------------------------------------------------------------------ latex

_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                  DASH: "---", FLAG: r"$^\dagger$", PM: r"$\pm$"}


def latex_escape(text):
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))


def _latex_metric(metric):
    if metric.startswith("AP") and len(metric) > 2:
        return f"AP$_{{{metric[2:]}}}$"
    return latex_escape(metric)


def _latex_cell(parts):
    if parts is None:
        return ""
    if parts["missing"]:
        return "---" + ("$^\\dagger$" if parts["flag"] else "")
    text = parts["mean"]
    if parts["std"]:
        text += f"$\\pm${parts['std']}"
    if parts["n"]:
        text += f"$_{{n={parts['n']}}}$"
    if parts["flag"]:
        text += "$^\\dagger$"
    if parts["delta"]:
        delta = f"({parts['delta']})"
        text += " {\\scriptsize " + (f"\\textcolor{{green!50!black}}{{{delta}}}" if parts["high"] else delta) + "}"
    return text


def render_latex_table(table):
    k = len(table.metrics)
    first = 2 + len(table.extra_columns)
    groups = " & ".join(f"\\multicolumn{{{k}}}{{c}}{{{MODE_LABELS[m]}}}" for m in table.modes)
    rules = "".join(f"\\cmidrule(lr){{{first + i * k}-{first + (i + 1) * k - 1}}}" for i in range(len(table.modes)))
    lead = " & " * (1 + len(table.extra_columns))
    gaps = (f"; in brackets the gap to {latex_escape(table.baseline)} (published rows: to the paper's baseline),"
            f" in green gaps of at least +{HIGHLIGHT} point") if table.baseline else ""
    header = " & ".join(["pre-train", *(latex_escape(c) for c in table.extra_columns),
                         *(_latex_metric(metric) for _ in table.modes for metric in table.metrics)])
    lines = [f"% {table.task} / {table.family}; needs \\usepackage{{booktabs,xcolor}}",
             "\\begin{table}[t]", "\\centering", "\\small",
             f"\\caption{{{latex_escape(table.task)}: {latex_escape(FAMILY_LABELS.get(table.family, table.family))}."
             f" Mean$\\pm$std over seeds{gaps}.}}",
             f"\\begin{{tabular}}{{l{'r' * len(table.extra_columns)}{'c' * (k * len(table.modes))}}}",
             "\\toprule", f"{lead}{groups} \\\\", rules, header + " \\\\",
             "\\midrule"]
    published_started = False
    for row in table.rows:
        if row.published and not published_started:
            lines.append("\\midrule")
            published_started = True
        label = latex_escape(_row_label(row))
        label = f"\\textit{{{label}}}" if row.published else label
        cells = [label] + [latex_escape(_extra_text(row.extra.get(c), table.decimals)) for c in table.extra_columns]
        cells += [_latex_cell(cell_parts(row.cells.get((m, metric)), row, table))
                  for m in table.modes for metric in table.metrics]
        lines.append(" & ".join(cells) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    for note in table_notes(table):
        lines.append(f"\\par\\smallskip{{\\footnotesize {latex_escape(note)}}}")
    lines.append("\\end{table}")
    return "\n".join(lines)


def render_latex(tables, skipped=()):
    out = [render_latex_table(t) for t in tables]
    out += [f"% {line}" for line in skipped_lines(skipped)]
    return "\n\n".join(out) + "\n"


# ------------------------------------------------------------------------------------------------- html

CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: #1f2328; margin: 2em auto;
       max-width: 1500px; padding: 0 1em; line-height: 1.45; }
h1 { font-size: 1.6em; margin-bottom: .2em; }
h2 { font-size: 1.3em; margin-top: 2em; border-bottom: 1px solid #d0d7de; }
h3 { font-size: 1.05em; margin-bottom: .4em; }
.meta, .legend, .notes { color: #57606a; font-size: .9em; }
table.results, table.runs { border-collapse: collapse; font-variant-numeric: tabular-nums; margin: .5em 0; }
table.results th, table.results td, table.runs th, table.runs td { padding: 3px 9px; }
table.results thead tr:first-child th { border-bottom: 1px solid #8c959f; }
table.results thead { border-top: 2px solid #1f2328; border-bottom: 1px solid #1f2328; }
table.results tbody { border-bottom: 2px solid #1f2328; }
table.results td { text-align: right; white-space: nowrap; }
table.results td.label { text-align: left; white-space: normal; min-width: 9em; max-width: 17em; }
table.results th.group-start, table.results td.group-start { border-left: 1px solid #d0d7de; }
tr.published td { color: #57606a; font-style: italic; background: #f6f8fa; }
tr.published.first td { border-top: 1px solid #8c959f; }
tr.baseline td.label { font-weight: 600; }
.std, .n { color: #57606a; font-size: .85em; }
.delta { font-size: .85em; margin-left: .3em; }
.delta.high { color: #1a7f37; font-weight: 600; background: #dafbe1; padding: 0 2px; border-radius: 3px; }
.flag { color: #cf222e; }
.missing { color: #8c959f; }
table.runs { font-size: .85em; } table.runs th { text-align: left; background: #f6f8fa; }
table.runs td, table.runs th { border: 1px solid #d0d7de; white-space: nowrap; }
table.runs td.num { text-align: right; } table.runs td.path { white-space: normal; word-break: break-all; }
.scroll { overflow-x: auto; }
code { font-size: .9em; } img.plot { max-width: 100%; border: 1px solid #d0d7de; }
"""


def _esc(text):
    return html.escape(str(text), quote=True)


def _html_cell(parts):
    if parts is None:
        return ""
    flag = f'<span class="flag" title="runs with non-finite values excluded">{FLAG}</span>' if parts["flag"] else ""
    if parts["missing"]:
        return f'<span class="missing" title="no runs">{DASH}</span>{flag}'
    text = _esc(parts["mean"])
    if parts["std"]:
        text += f' <span class="std">{PM}&#8239;{_esc(parts["std"])}</span>'
    if parts["n"]:
        text += f' <span class="n">(n={_esc(parts["n"])})</span>'
    text += flag
    if parts["delta"]:
        cls = "delta high" if parts["high"] else "delta"
        text += f'<span class="{cls}">({_esc(parts["delta"])})</span>'
    return text


def render_html_table(table):
    """One table as an HTML fragment (heading, table, notes)."""
    k = len(table.metrics)
    extra_heads = "".join(f'<th rowspan="2">{_esc(c)}</th>' for c in table.extra_columns)
    groups = "".join(f'<th colspan="{k}" class="group-start">{_esc(MODE_LABELS[m])}</th>' for m in table.modes)
    metrics = "".join(f'<th{" class=group-start" if i == 0 else ""}>{_esc(metric)}</th>'
                      for _ in table.modes for i, metric in enumerate(table.metrics))
    out = [f'<h3>{_esc(table.task)} &middot; {_esc(FAMILY_LABELS.get(table.family, table.family))}</h3>',
           '<div class="scroll"><table class="results">', "<thead>",
           f'<tr><th rowspan="2" class="label">pre-train</th>{extra_heads}{groups}</tr>', f"<tr>{metrics}</tr>",
           "</thead>", "<tbody>"]
    first_published = True
    for row in table.rows:
        classes = []
        if row.published:
            classes.append("published")
            if first_published:
                classes.append("first")
                first_published = False
        if row.is_baseline:
            classes.append("baseline")
        cls = f' class="{" ".join(classes)}"' if classes else ""
        label = _esc(row.label)
        if row.published:
            label += f' <span class="n">(published: {_esc(row.citation)})</span>'
        elif row.is_baseline:
            label += ' <span class="n">(baseline)</span>'
        cells = [f'<td class="label">{label}</td>']
        cells += [f"<td>{_esc(_extra_text(row.extra.get(c), table.decimals))}</td>" for c in table.extra_columns]
        for m in table.modes:
            for i, metric in enumerate(table.metrics):
                start = ' class="group-start"' if i == 0 else ""
                cells.append(f"<td{start}>{_html_cell(cell_parts(row.cells.get((m, metric)), row, table))}</td>")
        out.append(f"<tr{cls}>{''.join(cells)}</tr>")
    out += ["</tbody>", "</table></div>"]
    notes = table_notes(table)
    if notes:
        out.append('<ul class="notes">' + "".join(f"<li>{_esc(n)}</li>" for n in notes) + "</ul>")
    return "\n".join(out)


def html_document(title, body):
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{_esc(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n")


def render_html(tables, skipped=()):
    """A standalone HTML page with the tables (the full report with plots is transfer.report.html)."""
    body = ["<h1>Transfer results</h1>", f'<p class="legend">{_esc(LEGEND)}</p>']
    body += [render_html_table(t) for t in tables]
    lines = skipped_lines(skipped)
    if lines:
        body.append(f'<p class="notes">{_esc(lines[0])}</p><ul class="notes">'
                    + "".join(f"<li><code>{_esc(p)}</code>: {_esc(w)}</li>" for p, w in skipped) + "</ul>")
    return html_document("Transfer results", "\n".join(body))


RENDERERS = {"markdown": render_markdown, "csv": render_csv, "latex": render_latex, "html": render_html}


def render(tables, fmt="markdown", skipped=()):
    """The tables in one of :data:`FORMATS`; ``skipped``: [(path, reason)] listed under them."""
    if fmt not in RENDERERS:
        raise ValueError(f"unknown format {fmt!r} (one of {', '.join(FORMATS)})")
    return RENDERERS[fmt](tables, skipped=skipped)
