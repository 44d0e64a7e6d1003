#!/usr/bin/env python
"""Frozen-vs-fine-tuned tables (and plots, and an HTML report) from the results.json under a root.

    python tools/make_table.py RESULTS_ROOT [--baseline NAME] [--format markdown|csv|latex|html]
        [--out FILE] [--tasks TASK ...] [--metrics AP,AP50,AP75|all] [--references [--reference-arch R-18]]
        [--plots DIR] [--report FILE]

Per task and metric family: rows = backbones, column groups = fine-tuned | frozen, cells = mean +- sample
std over seeds (n when > 1), [delta] vs the baseline backbone. See transfer/report/.
When the root also holds mi.json files (tools/estimate_mi.py, or a sweep's mi evaluations), each estimate
is an MI column, and the backbones are ranked by MI with the Pearson and Kendall correlations to every
downstream metric (Lee et al. Table I); the HTML report plots each metric against MI (InfoMin Fig. 5).
"""
import argparse
import os
import sys

from transfer.report import FORMATS, ReportError, make_tables, parse_metrics, render
from transfer.fileio import write_text_atomic
from transfer.report.html import data_uri, report_html
from transfer.report.mi import collect_mi, mi_columns, plot_mi_vs_metric, ranking, render_ranking
from transfer.report.plots import plot_tables, write_plots

PROG = "make_table"


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line and exit status 1, like every other error of this tool."""

    def error(self, message):
        print(f"{PROG}: error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(1)


def main(argv=None):
    parser = _Parser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("root", metavar="RESULTS_ROOT", help="folder searched (at any depth) for results.json")
    parser.add_argument("--baseline", metavar="NAME", help="backbone the deltas are taken against (e.g. supervised)")
    parser.add_argument("--format", default="markdown", choices=FORMATS, help="output format (default: markdown)")
    parser.add_argument("--out", metavar="FILE", help="write the table here instead of stdout")
    parser.add_argument("--tasks", nargs="+", metavar="TASK", help="only these tasks (config stems)")
    parser.add_argument("--metrics", metavar="LIST", help="metrics to show, e.g. AP,AP50,AP75 (default) or all")
    parser.add_argument("--references", action="store_true",
                        help="add the papers' numbers (configs/references/) as rows marked published")
    parser.add_argument("--reference-arch", metavar="ARCH",
                        help="architecture of the published rows to show, e.g. R-18 (default: the runs' "
                             "architecture from their config.yaml, else the task's)")
    parser.add_argument("--plots", metavar="DIR", help="also write one PNG per task (delta vs baseline) here")
    parser.add_argument("--report", metavar="FILE", help="also write the self-contained HTML report here")
    args = parser.parse_args(argv)
    if args.reference_arch and not args.references:
        parser.error("--reference-arch needs --references")
    try:
        mi_records, mi_skipped = collect_mi(args.root) if os.path.isdir(args.root) else ([], [])
        collection, tables = make_tables(args.root, baseline=args.baseline, references=args.references,
                                         tasks=args.tasks, metrics=parse_metrics(args.metrics),
                                         reference_arch=args.reference_arch, extra=mi_columns(mi_records) or None)
        text = render(tables, args.format, skipped=collection.skipped)
        rankings = ranking(mi_records, collection) if mi_records else []
        if rankings and args.format in ("markdown", "html"):
            text += "\n## MI and downstream performance (Lee et al. Table I)\n\n" if args.format == "markdown" else ""
            text += render_ranking(rankings, args.format) + "\n"
        for path, reason in mi_skipped:
            print(f"{PROG}: warning: skipped {path}: {reason}", file=sys.stderr)
        plots = plot_tables(tables) if (args.plots or args.report) else {}
        if args.out:
            write_text_atomic(args.out, text)
        else:
            sys.stdout.write(text)
        if args.plots:
            for path in write_plots(plots, args.plots):
                print(f"{PROG}: wrote {path}", file=sys.stderr)
        if args.report:
            sections = []
            if rankings:
                mi_plots = plot_mi_vs_metric(rankings)
                figures = "".join(f'<img class="plot" alt="{key}" src="{data_uri(png)}">' for key, png in mi_plots.items())
                sections.append(("MI and downstream performance (Lee et al. Table I; InfoMin Fig. 5)",
                                 render_ranking(rankings, "html") + figures))
            write_text_atomic(args.report, report_html(collection, tables, plots, baseline=args.baseline,
                                                       references=args.references, sections=sections))
            print(f"{PROG}: wrote {args.report}", file=sys.stderr)
    except ReportError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"{PROG}: error: cannot write {e.filename or ''}: {e.strerror or e}", file=sys.stderr)
        return 1
    if collection.skipped:
        print(f"{PROG}: warning: skipped {len(collection.skipped)} unusable results.json (listed under the table)",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
