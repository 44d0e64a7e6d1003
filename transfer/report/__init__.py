"""The last arrow of the pipeline: ``results.json`` files -> tables, plots and an HTML report.

    collection, tables = make_tables(root, baseline="supervised", references=True)
    print(render(tables, "markdown", skipped=collection.skipped))
    print(markdown_table(root, baseline="random"))            # the same, in one call
    output = make_report(root, "csv", out="t.csv", html_path="r.html")  # what tools/make_table.py does
    make_report(root, seeds_needed=0.5, baseline="random").text  # seeds per row a +-0.5 difference needs
    files = build_report(root, "output/demo", baseline="random")  # table.md, table.csv, report.html, plots/

Modules, one concept each: :mod:`~transfer.report.build` (the one assembly), :mod:`~transfer.report.runs`
(collecting results.json), :mod:`~transfer.report.mi` (mi.json: MI columns and rankings),
:mod:`~transfer.report.table` (the arithmetic), :mod:`~transfer.report.significance` (confidence intervals,
the tests of the deltas, the power analysis), :mod:`~transfer.report.power` (the seeds-needed table),
:mod:`~transfer.report.render` (markdown, CSV, LaTeX, HTML tables), :mod:`~transfer.report.plots` (PNGs),
:mod:`~transfer.report.curves` (metrics and MI against the pretraining epoch: transfer curves),
:mod:`~transfer.report.html` (the report file); published numbers come from :mod:`transfer.report.references`. The files read and written are described in
docs/artifacts.md. The report reads artifacts only: it never imports Detectron2, torch or the trainer.
"""
from transfer.report.power import OBSERVED
from transfer.report.build import (Report, ReportFiles, ReportOutput, assemble, build_report, make_report, make_tables,
                                   markdown_table, parse_metrics, table_text)
from transfer.report.render import CSV_COLUMNS, FORMATS, render
from transfer.report.runs import Collection, ReportError, Run, collect_runs
from transfer.report.table import DEFAULT_METRICS, Cell, Table, build_tables

__all__ = ["CSV_COLUMNS", "DEFAULT_METRICS", "FORMATS", "OBSERVED", "Cell", "Collection", "Report", "ReportError",
           "ReportFiles", "ReportOutput", "Run", "Table", "assemble", "build_report", "build_tables", "collect_runs", "make_report",
           "make_tables", "markdown_table", "parse_metrics", "render", "table_text"]
