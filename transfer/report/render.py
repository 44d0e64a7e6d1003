"""Render :class:`~transfer.report.table.Table` objects as markdown, CSV (long form), LaTeX or HTML.

Every format shows the same cells: mean +- sample std over n seeds with n, the 95% confidence interval
of the mean (from 3 seeds on; a cell with fewer says so), the delta to the baseline in brackets with
its sign, in bold (LaTeX and HTML: bold and coloured) only when it is beyond seed noise
(:mod:`transfer.report.significance`), a dash for a missing cell and a dagger for a cell that excluded
non-finite runs, a double dagger for a cell whose runs depart from the published protocol they claim
(the reasons listed under the table); published rows are marked as such and carry the spread and trials the paper reports.
CSV is one row per cell with exactly the columns :data:`CSV_COLUMNS`.
"""
import csv
import html
import io

from transfer.report.significance import ALPHA, CONFIDENCE, MIN_SEEDS
from transfer.report.table import FAMILY_LABELS, MODE_LABELS

FORMATS = ("markdown", "csv", "latex", "html")
CSV_COLUMNS = ("task", "family", "metric", "backbone", "mode", "n", "mean", "std", "ci_low", "ci_high", "delta",
               "test", "p_value", "significant", "off_protocol", "protocol_note")
DASH = "\u2014"
FLAG = "\u2020"  # dagger: non-finite runs excluded
OFF = "\u2021"  # double dagger: runs that depart from the published protocol they claim
PM = "\u00b1"
FEW = "too few seeds"
CI_PCT = f"{CONFIDENCE * 100:g}%"
TEST_RULE = (f"two-sided, p < {ALPHA:g}: a paired t-test when both rows ran the same seed ids (a seed fixes the "
             "data order and the new layers' initialisation, so pairing cancels the noise the runs share), "
             "Welch's t-test otherwise; exact permutation tests are not used because with 3 seeds per row "
             "they cannot reach p < 0.05")
TEST_SHORT = (f"two-sided p < {ALPHA:g}; paired t-test when both rows ran the same seeds, else Welch's t-test")
LEGEND = (f"Cells: mean {PM} sample std over the n seeds, with the {CI_PCT} confidence interval of the mean (CI, "
          f"t-distribution, n-1 degrees of freedom); [delta] vs the baseline backbone of the same task and mode, "
          f"in bold only when beyond seed noise ({TEST_RULE}). A cell with fewer than {MIN_SEEDS} seeds says "
          f"\"{FEW}\": no CI and no test are claimed. {DASH}: no runs; {FLAG}: runs with non-finite values "
          f"excluded; {OFF}: not the published protocol the config claims (a shortened schedule, another batch "
          "without rescaling, a changed head...: the reasons are listed under the table). Published rows are the papers' numbers, their deltas vs the paper's own baseline row; "
          f"{PM} is the run-to-run std the authors report and n their number of trials, where they report "
          "them, and those deltas are tested with Welch's t-test from the reported statistics.")


# ------------------------------------------------------------------------------------------------ cells

def fmt_number(x, decimals):
    return f"{x:.{decimals}f}"


def fmt_delta(delta, decimals):
    r = round(delta, decimals)
    return f"{(r if r != 0 else 0.0):+.{decimals}f}"


def cell_parts(cell, row, table):
    """The pieces of a cell's text, or None for an empty cell (a published row's other mode), or
    {"missing": True, "flag": bool}. Pieces: mean, std, n, ci (low, high) strings ("" / None when absent);
    few (fewer than MIN_SEEDS seeds: no CI, no test), flag; delta, sig (beyond seed noise), down (a
    significant negative delta) and why (the test and its p, for tooltips)."""
    decimals = table.published_decimals if row.published else table.decimals
    if cell is None:
        return None if row.published else {"missing": True, "flag": False}
    parts = {"missing": False, "mean": "", "std": "", "n": "", "ci": None, "few": False, "flag": False,
             "delta": "", "sig": False, "down": False, "why": "", "off": False}
    if not row.published:
        parts["flag"] = cell.flagged
        parts["off"] = bool(cell.off_protocol)
        if cell.mean is None:
            parts["missing"] = True
            return parts
        parts["few"] = cell.few_seeds
    parts["mean"] = fmt_number(cell.mean, decimals)
    if cell.std is not None:
        parts["std"] = fmt_number(cell.std, decimals)
    if cell.n:
        parts["n"] = str(cell.n)
    if cell.ci is not None:
        parts["ci"] = (fmt_number(cell.ci[0], decimals), fmt_number(cell.ci[1], decimals))
    if cell.delta is not None and not row.is_baseline:
        parts["delta"] = fmt_delta(cell.delta, decimals)
        comparison = cell.comparison
        if comparison is not None:
            parts["sig"] = bool(comparison.significant)
            parts["down"] = parts["sig"] and cell.delta < 0
            parts["why"] = comparison.description
    return parts


def _seeds_note(parts):
    """"n=3, CI 1.0\u20132.0", "n=2: too few seeds", "n=5" (a published row without spread) or ""."""
    if not parts["n"]:
        return ""
    if parts["few"]:
        return f"n={parts['n']}: {FEW}"
    if parts["ci"]:
        return f"n={parts['n']}, CI {parts['ci'][0]}\u2013{parts['ci'][1]}"
    return f"n={parts['n']}"


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
    if table.off_protocol:
        lines.append(f"not the claimed published protocol ({OFF}), not comparable with the papers' rows: "
                     + " | ".join(table.off_protocol))
    if table.unrecorded:
        lines.append("protocol not recorded (results.json from before protocols were recorded): "
                     + "; ".join(table.unrecorded))
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
        text += f" ({_seeds_note(parts)})"
    if parts["flag"]:
        text += FLAG
    if parts["off"]:
        text += OFF
    if parts["delta"]:
        text += f" **[{parts['delta']}]**" if parts["sig"] else f" [{parts['delta']}]"
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


def _significance_fields(cell):
    comparison = cell.comparison
    if comparison is None:
        return {"test": "", "p_value": "", "significant": ""}
    return {"test": comparison.test, "p_value": _num(comparison.p),
            "significant": "" if comparison.p is None else ("yes" if comparison.significant else "no")}


def _protocol_fields(cell, row):
    """``off_protocol``: yes / no / empty (published rows, and runs that record no protocol);
    ``protocol_note``: why (the departing runs' deviations), or ``protocol not recorded``."""
    if row.published:
        return {"off_protocol": "", "protocol_note": ""}
    if cell.off_protocol:
        return {"off_protocol": "yes", "protocol_note": " | ".join(cell.off_protocol)}
    if cell.unrecorded_seeds:
        return {"off_protocol": "", "protocol_note": "protocol not recorded"}
    return {"off_protocol": "no", "protocol_note": ""}


def csv_rows(tables):
    """The long-form rows (dicts keyed by :data:`CSV_COLUMNS`), one per cell of our runs with a run behind
    it, and one per published number (backbone ``published:PAPER TABLE:KEY``; n, std and the CI where the
    paper reports its trials and spread). ``test``: a key of :data:`transfer.report.significance.TESTS`
    (empty for the baseline and without one); ``significant``: yes / no / empty when not tested."""
    out = []
    for table in tables:
        for row in table.rows:
            for mode in table.modes:
                for metric in table.metrics:
                    cell = row.cells.get((mode, metric))
                    if cell is None:
                        continue
                    ci = cell.ci or (None, None)
                    fields = dict(task=table.task, family=table.family, metric=metric, mode=mode,
                                  n="" if cell.n is None else str(cell.n), mean=_num(cell.mean), std=_num(cell.std),
                                  ci_low=_num(ci[0]), ci_high=_num(ci[1]), delta=_num(cell.delta),
                                  **_significance_fields(cell))
                    if row.published:
                        fields["backbone"] = f"published:{cell.reference.citation}:{cell.reference.backbone}"
                    else:
                        fields["backbone"] = row.backbone
                    fields.update(_protocol_fields(cell, row))
                    out.append(fields)
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
                  DASH: "---", FLAG: r"$^\dagger$", OFF: r"$^\ddagger$", PM: r"$\pm$", "\u2013": "--", "<": "$<$",
                  ">": "$>$"}


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
        text += f"$_{{n={parts['n']}}}$" + ("\\textsuperscript{\\S}" if parts["few"] else "")
    if parts["ci"]:
        text += f" {{\\scriptsize [{parts['ci'][0]}, {parts['ci'][1]}]}}"
    if parts["flag"]:
        text += "$^\\dagger$"
    if parts["off"]:
        text += "$^\\ddagger$"
    if parts["delta"]:
        delta = f"({parts['delta']})"
        if parts["sig"]:
            colour = "red!70!black" if parts["down"] else "green!50!black"
            delta = f"\\textbf{{\\textcolor{{{colour}}}{{{delta}}}}}"
        text += " {\\scriptsize " + delta + "}"
    return text


def render_latex_table(table):
    k = len(table.metrics)
    first = 2 + len(table.extra_columns)
    groups = " & ".join(f"\\multicolumn{{{k}}}{{c}}{{{MODE_LABELS[m]}}}" for m in table.modes)
    rules = "".join(f"\\cmidrule(lr){{{first + i * k}-{first + (i + 1) * k - 1}}}" for i in range(len(table.modes)))
    lead = " & " * (1 + len(table.extra_columns))
    gaps = (f"; in parentheses the gap to {latex_escape(table.baseline)} (published rows: to the paper's "
            f"baseline), in bold (green up, red down) only beyond seed noise ({latex_escape(TEST_SHORT)})"
            ) if table.baseline else ""
    header = " & ".join(["pre-train", *(latex_escape(c) for c in table.extra_columns),
                         *(_latex_metric(metric) for _ in table.modes for metric in table.metrics)])
    lines = [f"% {table.task} / {table.family}; needs \\usepackage{{booktabs,xcolor}}",
             "\\begin{table}[t]", "\\centering", "\\small",
             f"\\caption{{{latex_escape(table.task)}: {latex_escape(FAMILY_LABELS.get(table.family, table.family))}."
             f" Mean$\\pm$std over n seeds, in brackets the {CI_PCT.replace('%', chr(92) + '%')} confidence"
             f" interval of the mean{gaps}; \\S: fewer than {MIN_SEEDS} seeds, no interval and no test.}}",
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
.delta.sig { color: #1a7f37; font-weight: 700; background: #dafbe1; padding: 0 2px; border-radius: 3px; }
.delta.sig.down { color: #cf222e; background: #ffebe9; }
.ci { color: #57606a; font-size: .8em; }
.few { color: #9a6700; font-size: .85em; }
.flag { color: #cf222e; }
.missing { color: #8c959f; }
table.runs { font-size: .85em; } table.runs th { text-align: left; background: #f6f8fa; }
table.runs td, table.runs th { border: 1px solid #d0d7de; white-space: nowrap; }
table.runs td.num { text-align: right; } table.runs td.path { white-space: normal; word-break: break-all; }
.scroll { overflow-x: auto; }
code { font-size: .9em; } img.plot { max-width: 100%; border: 1px solid #d0d7de; }
"""


def escape_html(text):
    """``text`` (any value) escaped for HTML text and attribute values."""
    return html.escape(str(text), quote=True)


def _html_cell(parts):
    if parts is None:
        return ""
    flag = f'<span class="flag" title="runs with non-finite values excluded">{FLAG}</span>' if parts["flag"] else ""
    if parts["missing"]:
        return f'<span class="missing" title="no runs">{DASH}</span>{flag}'
    text = escape_html(parts["mean"])
    if parts["std"]:
        text += f' <span class="std">{PM}&#8239;{escape_html(parts["std"])}</span>'
    if parts["n"] and parts["few"]:
        text += (f' <span class="few" title="fewer than {MIN_SEEDS} seeds: no confidence interval, no test">'
                 f'(n={escape_html(parts["n"])}: {FEW})</span>')
    elif parts["n"]:
        text += f' <span class="n">(n={escape_html(parts["n"])})</span>'
    if parts["ci"]:
        text += (f' <span class="ci" title="{CI_PCT} confidence interval of the mean">'
                 f'[{escape_html(parts["ci"][0])}&ndash;{escape_html(parts["ci"][1])}]</span>')
    text += flag
    if parts["off"]:
        text += f'<span class="flag" title="not the published protocol the config claims (see below)">{OFF}</span>'
    if parts["delta"]:
        cls = "delta sig" + (" down" if parts["down"] else "") if parts["sig"] else "delta"
        title = f' title="{escape_html(parts["why"])}"' if parts["why"] else ""
        delta = escape_html(parts["delta"])
        text += (f'<strong class="{cls}"{title}>({delta})</strong>' if parts["sig"]
                 else f'<span class="{cls}"{title}>({delta})</span>')
    return text


def render_html_table(table):
    """One table as an HTML fragment (heading, table, notes)."""
    k = len(table.metrics)
    extra_heads = "".join(f'<th rowspan="2">{escape_html(c)}</th>' for c in table.extra_columns)
    groups = "".join(f'<th colspan="{k}" class="group-start">{escape_html(MODE_LABELS[m])}</th>' for m in table.modes)
    metrics = "".join(f'<th{" class=group-start" if i == 0 else ""}>{escape_html(metric)}</th>'
                      for _ in table.modes for i, metric in enumerate(table.metrics))
    out = [f'<h3>{escape_html(table.task)} &middot; {escape_html(FAMILY_LABELS.get(table.family, table.family))}</h3>',
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
        label = escape_html(row.label)
        if row.published:
            label += f' <span class="n">(published: {escape_html(row.citation)})</span>'
        elif row.is_baseline:
            label += ' <span class="n">(baseline)</span>'
        cells = [f'<td class="label">{label}</td>']
        cells += [f"<td>{escape_html(_extra_text(row.extra.get(c), table.decimals))}</td>" for c in table.extra_columns]
        for m in table.modes:
            for i, metric in enumerate(table.metrics):
                start = ' class="group-start"' if i == 0 else ""
                cells.append(f"<td{start}>{_html_cell(cell_parts(row.cells.get((m, metric)), row, table))}</td>")
        out.append(f"<tr{cls}>{''.join(cells)}</tr>")
    out += ["</tbody>", "</table></div>"]
    notes = table_notes(table)
    if notes:
        out.append('<ul class="notes">' + "".join(f"<li>{escape_html(n)}</li>" for n in notes) + "</ul>")
    return "\n".join(out)


def html_document(title, body):
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{escape_html(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n")


def render_html(tables, skipped=(), sections=()):
    """A standalone HTML page with the tables (the full report with plots is transfer.report.html);
    ``sections``: extra (title, HTML body) blocks after the tables."""
    body = ["<h1>Transfer results</h1>", f'<p class="legend">{escape_html(LEGEND)}</p>']
    body += [render_html_table(t) for t in tables]
    body += [f"<h2>{escape_html(heading)}</h2>\n{html_body}" for heading, html_body in sections]
    lines = skipped_lines(skipped)
    if lines:
        body.append(f'<p class="notes">{escape_html(lines[0])}</p><ul class="notes">'
                    + "".join(f"<li><code>{escape_html(p)}</code>: {escape_html(w)}</li>" for p, w in skipped) + "</ul>")
    return html_document("Transfer results", "\n".join(body))


RENDERERS = {"markdown": render_markdown, "csv": render_csv, "latex": render_latex, "html": render_html}


def render(tables, fmt="markdown", skipped=()):
    """The tables in one of :data:`FORMATS`; ``skipped``: [(path, reason)] listed under them."""
    if fmt not in RENDERERS:
        raise ValueError(f"unknown format {fmt!r} (one of {', '.join(FORMATS)})")
    return RENDERERS[fmt](tables, skipped=skipped)
