#!/usr/bin/env python
"""Frozen-vs-fine-tuned tables (and plots, and an HTML report) from the results.json under a root.

    python tools/make_table.py RESULTS_ROOT [--baseline NAME] [--format markdown|csv|latex|html]
        [--out FILE] [--tasks TASK ...] [--metrics AP,AP50,AP75|all] [--references [--reference-arch R-18]]
        [--plots DIR] [--report FILE] [--seeds-needed [DELTA]]

Per task and metric family: rows = backbones, column groups = fine-tuned | frozen, cells = mean +- sample
std over n seeds with the 95% confidence interval, [delta] vs the baseline backbone, in bold only when
beyond seed noise (paired t-test over shared seeds, else Welch's; not below 3 seeds, which the cell says).
--seeds-needed prints instead how many seeds per row a difference DELTA (default: each observed delta)
needs at the observed spread (two-sided two-sample t-test, alpha 0.05, power 0.8). See transfer/report/
and docs/artifacts.md.
When the root also holds mi.json files (tools/estimate_mi.py, or a sweep's mi evaluations), each estimate
is an MI column, and the backbones are ranked by MI with the Pearson and Kendall correlations to every
downstream metric (Lee et al. Table I); the HTML report plots each metric against MI (InfoMin Fig. 5).
Errors are one line on stderr: exit status 1 (usage errors: 2).
"""
import math
import sys

from pretrain.common.cli import ArgumentParser, one_line_errors
from transfer.report import FORMATS, OBSERVED, ReportError, make_report, parse_metrics

PROG = "make_table"
ERROR_STATUS = 1  # a bad root, baseline, task or output file (usage errors exit with 2)


def delta(text):
    """--seeds-needed's value: a number, or (no value given) the observed deltas."""
    return OBSERVED if text == OBSERVED else float(text)


def main(argv=None):
    parser = ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
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
    parser.add_argument("--seeds-needed", nargs="?", const=OBSERVED, type=delta, metavar="DELTA",
                        help="print the seeds per row needed to detect DELTA (metric points; default: each observed "
                             "delta to the baseline) at the observed spread, instead of the tables")
    args = parser.parse_args(argv)
    if args.reference_arch and not args.references:
        parser.error("--reference-arch needs --references")
    if args.seeds_needed not in (None, OBSERVED) and not (math.isfinite(args.seeds_needed) and args.seeds_needed > 0):
        parser.error(f"--seeds-needed: DELTA must be a positive number, got {args.seeds_needed:g}")
    with one_line_errors(PROG, ReportError, status=ERROR_STATUS):
        output = make_report(args.root, args.format, out=args.out, plots_dir=args.plots, html_path=args.report,
                             seeds_needed=args.seeds_needed, baseline=args.baseline, references=args.references, tasks=args.tasks,
                             metrics=parse_metrics(args.metrics), reference_arch=args.reference_arch)
    for path, reason in output.report.mi_skipped:
        print(f"{PROG}: warning: skipped {path}: {reason}", file=sys.stderr)
    if not args.out:
        sys.stdout.write(output.text)
    for path in output.plot_files + ([args.report] if args.report else []):
        print(f"{PROG}: wrote {path}", file=sys.stderr)
    skipped = output.report.collection.skipped
    if skipped:
        print(f"{PROG}: warning: skipped {len(skipped)} unusable results.json (listed under the table)",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
