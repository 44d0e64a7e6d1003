"""The self-contained HTML report: tables, plots embedded as base64 PNG, per-run configuration summary.

One file, no external resources (styles inline, images as data URIs), so it can be attached or mailed.
"""
import base64
import datetime
import os

from transfer.report.render import LEGEND, escape_html, html_document, render_html_table
from transfer.report.runs import CONFIG_SUMMARY
from transfer.report.table import MODE_LABELS

RUN_SUMMARY_KEYS = ("MAX_ITER", "IMS_PER_BATCH", "BASE_LR")


def _rel(path, root):
    try:
        return os.path.relpath(path, root)
    except ValueError:
        return path


def data_uri(png):
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def runs_section(collection):
    """The per-run configuration summary: weights, iterations, seed, commit, config.yaml keys."""
    if not collection.runs:
        return "<h2 id=\"runs\">Runs</h2>\n<p class=\"notes\">No runs.</p>"
    config_keys = [label for label, _ in CONFIG_SUMMARY if label not in ("WEIGHTS", "DEPTH")
                   and any(label in r.config for r in collection.runs)]
    head = ["task", "backbone", "mode", "seed", "iterations", "weights", "commit", "arch", *config_keys, "run folder"]
    rows = []
    for r in sorted(collection.runs, key=lambda r: (r.task, r.backbone, r.mode, r.seed)):
        weights = r.weights or r.config.get("WEIGHTS") or "(none: random init)"
        cells = [f"<td>{escape_html(r.task)}</td>", f"<td>{escape_html(r.backbone)}</td>", f"<td>{escape_html(MODE_LABELS[r.mode])}</td>",
                 f'<td class="num">{r.seed}</td>',
                 f'<td class="num">{"" if r.iterations is None else r.iterations}</td>',
                 f'<td class="path"><code>{escape_html(weights)}</code></td>',
                 f"<td><code>{escape_html(r.commit[:12]) if r.commit else '&mdash;'}</code></td>",
                 f"<td>{escape_html(r.arch or '')}</td>"]
        cells += [f'<td class="num">{escape_html(r.config.get(k, ""))}</td>' for k in config_keys]
        flag = ' <span class="flag" title="non-finite metrics">&dagger;</span>' if r.nonfinite() else ""
        cells.append(f'<td class="path"><code>{escape_html(_rel(os.path.dirname(r.path), collection.root))}</code>{flag}</td>')
        rows.append("<tr>" + "".join(cells) + "</tr>")
    header = "".join(f"<th>{escape_html(h)}</th>" for h in head)
    note = ("Configuration keys are read from the <code>config.yaml</code> next to each <code>results.json</code> "
            "(empty when there is none); commit from <code>results.json</code> when the trainer recorded one; "
            "run folders are relative to the results root.")
    return "\n".join([f'<h2 id="runs">Runs ({len(collection.runs)})</h2>', f'<p class="notes">{note}</p>',
                      '<div class="scroll"><table class="runs">', f"<thead><tr>{header}</tr></thead>", "<tbody>",
                      *rows, "</tbody></table></div>"])


def problems_section(collection):
    parts = []
    if collection.skipped:
        parts.append(f'<h2 id="skipped">Skipped ({len(collection.skipped)})</h2>')
        parts.append('<ul class="notes">' + "".join(f"<li><code>{escape_html(_rel(p, collection.root))}</code>: {escape_html(w)}</li>"
                                                    for p, w in collection.skipped) + "</ul>")
    if collection.warnings:
        parts.append('<h2 id="warnings">Warnings</h2>')
        parts.append('<ul class="notes">' + "".join(f"<li><code>{escape_html(_rel(p, collection.root))}</code>: {escape_html(w)}</li>"
                                                    for p, w in collection.warnings) + "</ul>")
    return "\n".join(parts)


def report_html(collection, tables, plots, baseline=None, references=False, title="Transfer results",
                sections=()):
    """The report as one HTML string. ``plots``: {task: PNG bytes}; ``sections``: extra (title, HTML body)
    blocks after the tables (e.g. the MI ranking and its plots)."""
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    tasks = []
    for t in tables:
        if t.task not in tasks:
            tasks.append(t.task)
    meta = (f"Results root <code>{escape_html(os.path.abspath(collection.root))}</code> &middot; {len(collection.runs)} runs"
            f" &middot; {len(tasks)} tasks &middot; baseline: {escape_html(baseline) if baseline else 'none'}"
            f" &middot; published numbers: {'shown' if references else 'not shown'} &middot; generated {now}")
    body = [f"<h1>{escape_html(title)}</h1>", f'<p class="meta">{meta}</p>', f'<p class="legend">{escape_html(LEGEND)}</p>']
    if collection.skipped:
        body.append(f'<p class="notes"><span class="flag">{len(collection.skipped)} results.json skipped</span>, '
                    f'see <a href="#skipped">below</a>.</p>')
    if tasks:
        body.append("<p>" + " &middot; ".join(f'<a href="#task-{escape_html(t)}">{escape_html(t)}</a>' for t in tasks)
                    + ' &middot; <a href="#runs">runs</a></p>')
    for task in tasks:
        body.append(f'<h2 id="task-{escape_html(task)}">{escape_html(task)}</h2>')
        if task in plots:
            metric = next((t.metrics[0] for t in tables if t.task == task and t.metrics), "AP")
            what = f"{metric} delta vs {baseline}" if baseline else metric
            body.append(f'<img class="plot" alt="{escape_html(what)} per backbone, {escape_html(task)}" '
                        f'src="{data_uri(plots[task])}">')
        body.extend(render_html_table(t) for t in tables if t.task == task)
    for i, (heading, html_body) in enumerate(sections):
        body.append(f'<h2 id="section-{i}">{escape_html(heading)}</h2>')
        body.append(html_body)
    body.append(runs_section(collection))
    body.append(problems_section(collection))
    return html_document(title, "\n".join(body))
