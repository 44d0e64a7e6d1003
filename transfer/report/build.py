"""The report's one assembly: the ``results.json`` and ``mi.json`` under a root -> tables, plots, HTML.

:func:`make_report` collects the runs and the MI estimates, builds the tables (with an MI column per
estimate and the MI ranking when there are any), renders them and writes the files asked for;
``tools/make_table.py`` and :func:`build_report` (the demo's fixed set of files) both go through it.
The formats read are described in docs/artifacts.md.
"""
import os
from dataclasses import dataclass, field

from pretrain.common.fileio import write_text_atomic
from transfer.report.curves import CURVES_HEADING, collect_curves, curves_html, plot_curves, write_curve_plots
from transfer.report.html import data_uri, report_html
from transfer.report.mi import collect_mi, mi_columns, plot_mi_vs_metric, ranking, render_ranking
from transfer.report.plots import plot_tables, write_plots
from transfer.report.power import OBSERVED, TITLE as SEEDS_TITLE, render_seeds, seeds_html, seeds_rows
from transfer.report.references import ReferenceError, load_references, select_references
from transfer.report.render import render, render_html
from transfer.report.runs import ReportError, collect_runs
from transfer.report.table import DEFAULT_METRICS, build_tables

__all__ = ["Report", "ReportFiles", "ReportOutput", "assemble", "build_report", "make_report", "make_tables",
           "markdown_table", "parse_metrics", "table_text"]

MI_HEADING = "MI and downstream performance (Lee et al. Table I)"


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


@dataclass
class Report:
    """Everything the report shows, before rendering."""

    collection: object   # the runs (transfer.report.runs.Collection)
    tables: list
    baseline: str = None
    references: bool = False
    rankings: list = field(default_factory=list)    # MI rankings (transfer.report.mi.Ranking)
    mi_skipped: list = field(default_factory=list)  # [(path, reason)]: mi.json files not used
    curves: object = None  # transfer curves during pretraining (transfer.report.curves.Curves), or None
    seeds_needed: object = None  # None, or the power analysis's delta (a number, or power.OBSERVED)

    def seeds_text(self, fmt="markdown"):
        """The power analysis (:mod:`transfer.report.power`) in ``fmt``: seeds per row for ``seeds_needed``."""
        return render_seeds(seeds_rows(self.tables, self.seeds_needed), fmt)

    def text(self, fmt="markdown"):
        """The tables in ``fmt``; markdown and HTML also carry the MI ranking."""
        if fmt == "html":
            sections = [(MI_HEADING, render_ranking(self.rankings, "html"))] if self.rankings else []
            return render_html(self.tables, skipped=self.collection.skipped, sections=sections)
        text = render(self.tables, fmt, skipped=self.collection.skipped)
        if self.rankings and fmt == "markdown":
            text += f"\n## {MI_HEADING}\n\n" + render_ranking(self.rankings, "markdown") + "\n"
        return text

    def html(self, plots):
        """The self-contained HTML report; ``plots``: {task: PNG bytes} of :func:`plot_tables`."""
        sections = []
        if self.rankings:
            figures = "".join(f'<img class="plot" alt="{key}" src="{data_uri(png)}">'
                              for key, png in plot_mi_vs_metric(self.rankings).items())
            sections.append(("MI and downstream performance (Lee et al. Table I; InfoMin Fig. 5)",
                             render_ranking(self.rankings, "html") + figures))
        if self.curves is not None:
            sections.append((CURVES_HEADING, curves_html(self.curves, plot_curves(self.curves), data_uri)))
        if self.seeds_needed is not None:
            sections.append((SEEDS_TITLE, seeds_html(seeds_rows(self.tables, self.seeds_needed))))
        return report_html(self.collection, self.tables, plots, baseline=self.baseline, references=self.references,
                           sections=sections)


def assemble(results_root, baseline=None, references=False, tasks=None, metrics=DEFAULT_METRICS,
             reference_arch=None, extra=None):
    """The :class:`Report` of ``results_root``: runs, tables, and the MI columns and rankings of its mi.json
    files. ``extra`` columns are added after the MI ones. Raises :class:`ReportError` as :func:`make_tables`."""
    mi_records, mi_skipped = collect_mi(results_root) if os.path.isdir(results_root) else ([], [])
    columns = {**mi_columns(mi_records), **(extra or {})}
    collection, tables = make_tables(results_root, baseline=baseline, references=references, tasks=tasks,
                                     metrics=metrics, reference_arch=reference_arch, extra=columns or None)
    rankings = ranking(mi_records, collection) if mi_records else []
    return Report(collection, tables, baseline=baseline, references=references, rankings=rankings,
                  mi_skipped=mi_skipped, curves=collect_curves(collection, mi_records))


@dataclass
class ReportOutput:
    """What :func:`make_report` produced."""

    report: Report
    text: str                                     # the tables in the requested format
    written: list = field(default_factory=list)   # paths of the files written, in order
    plot_files: list = field(default_factory=list)  # those of them that are plots


def make_report(results_root, fmt="markdown", out=None, table_files=(), plots_dir=None, html_path=None,
                plot_metric="AP", seeds_needed=None, **options):
    """Assemble the report of ``results_root`` and write the files asked for.

    ``fmt``: the format of the returned text, also written to ``out`` when given; ``table_files``: more
    ``(path, format)`` renderings to write; ``plots_dir``: one PNG per task there; ``html_path``: the
    self-contained HTML report. ``seeds_needed``: a difference (metric points) or ``"observed"`` (each
    delta to the baseline): the returned text is then the power analysis (seeds per row needed) instead
    of the tables, and the HTML report gets it as a section. ``options`` are those of :func:`assemble`.
    Raises :class:`ReportError` (one line) for a bad root or option, before anything is written, and for a
    file that cannot be written.
    """
    report = assemble(results_root, **options)
    if seeds_needed is not None:
        if seeds_needed == OBSERVED and options.get("baseline") is None:
            raise ReportError("--seeds-needed without a DELTA uses the deltas to the baseline: give --baseline "
                              "or a DELTA")
        report.seeds_needed = seeds_needed
    text = report.seeds_text(fmt) if seeds_needed is not None else report.text(fmt)
    renderings = ([(out, fmt)] if out else []) + list(table_files)
    written, plot_files = [], []
    try:
        for path, path_fmt in renderings:
            written.append(write_text_atomic(path, text if path_fmt == fmt else report.text(path_fmt)))
        plots = plot_tables(report.tables, metric=plot_metric) if (plots_dir or html_path) else {}
        if plots_dir:
            plot_files = write_plots(plots, plots_dir) + write_curve_plots(plot_curves(report.curves), plots_dir)
            written.extend(plot_files)
        if html_path:
            written.append(write_text_atomic(html_path, report.html(plots)))
    except OSError as e:
        raise ReportError(f"cannot write {e.filename or ''}: {e.strerror or e}") from None
    return ReportOutput(report, text, written, plot_files)


@dataclass
class ReportFiles:
    """The files of :func:`build_report`."""

    out_dir: str
    table_md: str
    table_csv: str
    report_html: str
    plots: list = field(default_factory=list)
    markdown: str = field(default="", repr=False)  # the markdown tables (what table.md holds), for printing


def build_report(results_root, out_dir, plot_metric="AP", **options):
    """Write ``table.md``, ``table.csv``, ``report.html`` and ``plots/<task>.png`` under ``out_dir``.

    ``options`` are those of :func:`assemble` (baseline, references, tasks, metrics, reference_arch, extra).
    Returns a :class:`ReportFiles` with their paths and the markdown text; raises :class:`ReportError` as
    :func:`make_report` does.
    """
    table_md, table_csv = os.path.join(out_dir, "table.md"), os.path.join(out_dir, "table.csv")
    plots_dir, html_path = os.path.join(out_dir, "plots"), os.path.join(out_dir, "report.html")
    output = make_report(results_root, "markdown", out=table_md, table_files=[(table_csv, "csv")],
                         plots_dir=plots_dir, html_path=html_path, plot_metric=plot_metric, **options)
    return ReportFiles(out_dir=out_dir, table_md=table_md, table_csv=table_csv, report_html=html_path,
                       plots=output.plot_files, markdown=output.text)
