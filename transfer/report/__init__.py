"""The last arrow of the pipeline: ``results.json`` files -> tables, plots and an HTML report.

    collection, tables = make_tables(root, baseline="supervised", references=True)
    print(render(tables, "markdown", skipped=collection.skipped))
    print(markdown_table(root, baseline="random"))            # the same, in one call
    files = build_report(root, "output/demo", baseline="random")  # table.md, table.csv, report.html, plots/

Modules, one concept each: :mod:`~transfer.report.runs` (collecting results.json),
:mod:`~transfer.report.table` (the arithmetic), :mod:`~transfer.report.render` (markdown, CSV, LaTeX,
HTML tables), :mod:`~transfer.report.plots` (PNGs), :mod:`~transfer.report.html` (the report file);
published numbers come from :mod:`transfer.references`. The report reads artifacts only: it never
imports Detectron2, torch or the trainer.
"""
import os
from dataclasses import dataclass, field

from transfer.references import ReferenceError, load_references, select_references
from transfer.fileio import write_text_atomic
from transfer.report.html import report_html
from transfer.report.plots import plot_tables, write_plots
from transfer.report.render import CSV_COLUMNS, FORMATS, render
from transfer.report.runs import Collection, ReportError, Run, collect_runs
from transfer.report.table import DEFAULT_METRICS, Cell, Table, build_tables

__all__ = ["CSV_COLUMNS", "DEFAULT_METRICS", "FORMATS", "Cell", "Collection", "ReportError", "ReportFiles", "Run",
           "Table", "build_report", "build_tables", "collect_runs", "make_tables", "markdown_table", "parse_metrics",
           "render", "table_text", "write_html_report"]


def parse_metrics(text):
    """``"AP,AP50"`` or ``"AP AP50"`` -> ("AP", "AP50"); ``"all"`` -> "all"; None/"" -> the default."""
    if not text:
        return DEFAULT_METRICS
    if isinstance(text, (list, tuple)):
        text = ",".join(text)
    if text.strip().lower() == "all":
        return "all"
    return tuple(m for m in text.replace(",", " ").split() if m)


def make_tables(results_root, baseline=None, references=False, tasks=None, metrics=DEFAULT_METRICS,
                reference_arch=None, extra=None, references_dir=None):
    """(collection, tables) for the results under ``results_root``.

    Raises :class:`ReportError` (one line) for a missing root, a root without usable results, an unknown
    baseline backbone or a task with neither runs nor published numbers.
    ``extra``: optional per-backbone scalar columns ``{column: {backbone: value}}`` (e.g. an MI estimate).
    """
    collection = collect_runs(results_root)
    refs = None
    if references:
        try:
            refs = load_references(references_dir)
        except ReferenceError as e:
            raise ReportError(f"reference data: {e}") from None
    tasks = list(tasks) if tasks else None
    if tasks:
        known = set(collection.tasks())
        for task in tasks:
            if task not in known and not (refs and select_references(refs, task)):
                found = ", ".join(collection.tasks()) or "none"
                raise ReportError(f"no runs of task {task!r} under {results_root} (tasks found: {found})")
    elif not collection.runs:
        extra_msg = f"; {len(collection.skipped)} skipped as unusable, e.g. {collection.skipped[0][0]}: " \
                    f"{collection.skipped[0][1]}" if collection.skipped else ""
        raise ReportError(f"no usable results.json under {results_root}{extra_msg}")
    if baseline is not None and baseline not in collection.backbones():
        raise ReportError(f"baseline {baseline!r} has no runs under {results_root} "
                          f"(backbones: {', '.join(collection.backbones()) or 'none'})")
    tables = build_tables(collection, baseline=baseline, metrics=metrics, tasks=tasks, references=refs,
                          reference_arch=reference_arch, extra=extra)
    if not tables:
        shown = "all metrics" if metrics == "all" else ", ".join(metrics)
        raise ReportError(f"nothing to tabulate under {results_root}: no run reports {shown}")
    return collection, tables


def table_text(results_root, fmt="markdown", **kwargs):
    """The tables of ``results_root`` rendered in ``fmt`` (see :func:`make_tables` for the options)."""
    collection, tables = make_tables(results_root, **kwargs)
    return render(tables, fmt, skipped=collection.skipped)


def markdown_table(results_root, baseline=None, references=False, **kwargs):
    """The markdown tables, for printing to a terminal."""
    return table_text(results_root, "markdown", baseline=baseline, references=references, **kwargs)


def write_html_report(path, collection, tables, baseline=None, references=False, plot_metric="AP"):
    """Write the self-contained HTML report (plots embedded) to ``path``; returns the path."""
    plots = plot_tables(tables, metric=plot_metric)
    return write_text_atomic(path, report_html(collection, tables, plots, baseline=baseline, references=references))


@dataclass
class ReportFiles:
    out_dir: str
    table_md: str
    table_csv: str
    report_html: str
    plots: list = field(default_factory=list)
    markdown: str = field(default="", repr=False)  # the markdown tables (what table.md holds), for printing


def build_report(results_root, out_dir, baseline=None, references=False, tasks=None, metrics=DEFAULT_METRICS,
                 reference_arch=None, extra=None, plot_metric="AP"):
    """Write ``table.md``, ``table.csv``, ``report.html`` and ``plots/<task>.png`` under ``out_dir``.

    Returns a :class:`ReportFiles` with their paths and the markdown text. Raises :class:`ReportError`
    as :func:`make_tables` does, before anything is written.
    """
    collection, tables = make_tables(results_root, baseline=baseline, references=references, tasks=tasks,
                                     metrics=metrics, reference_arch=reference_arch, extra=extra)
    os.makedirs(out_dir, exist_ok=True)
    markdown = render(tables, "markdown", skipped=collection.skipped)
    table_md = write_text_atomic(os.path.join(out_dir, "table.md"), markdown)
    table_csv = write_text_atomic(os.path.join(out_dir, "table.csv"), render(tables, "csv"))
    plots = plot_tables(tables, metric=plot_metric)
    plot_paths = write_plots(plots, os.path.join(out_dir, "plots"))
    html_path = write_text_atomic(os.path.join(out_dir, "report.html"),
                                  report_html(collection, tables, plots, baseline=baseline, references=references))
    return ReportFiles(out_dir=out_dir, table_md=table_md, table_csv=table_csv, report_html=html_path,
                       plots=plot_paths, markdown=markdown)
