#!/usr/bin/env python
"""Wu et al. (2020) Table 1: InfoNCE and VINCE estimates of a known mutual information (0.02041 nats).

    python tools/vince_toy.py [--seeds 5] [--epochs 100] [--points 2000] [--percents 90,75,50,25,10,5]
        [--evaluate-on heldout|train] [--eval-draws 10] [--threads N] [--out FILE.md]

Prints Table 1 as markdown, ours (mean +- std over seeds) beside the paper's; see pretrain/evaluation/vince_toy.py for
the data, the critic and the protocol. The defaults are the paper's size (2000 points, 100 epochs, 5 seeds,
seven settings: 35 fits). Measured on 2 CPU cores shared with other jobs (one torch thread): 647 s for the
whole table (about 7 s per InfoNCE fit, 10-30 s per VINCE fit: the top-p neighbour search of every step);
``--seeds 2 --epochs 20`` takes about a minute.
"""
import argparse
import sys
import time

import torch

from pretrain.common.cli import ArgumentParser
from pretrain.common.fileio import write_text_atomic
from pretrain.evaluation.vince_toy import PERCENTS, analytic_mi, format_table, run_table

PROG = "vince_toy"


def _percents(text):
    try:
        values = tuple(int(v) for v in text.replace(",", " ").split())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of integers, e.g. 90,75,50") from None
    if not values or any(not 0 < v < 100 for v in values):
        raise argparse.ArgumentTypeError(f"percents {text!r} must be integers in 1..99")
    return values


def _positive(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be >= 1")
    return value


def main(argv=None):
    parser = ArgumentParser(prog=PROG, description=__doc__.splitlines()[0],
                            epilog="\n".join(__doc__.strip().splitlines()[4:]))
    parser.add_argument("--seeds", type=_positive, default=5, help="seeds per setting (default 5, as the paper)")
    parser.add_argument("--epochs", type=_positive, default=100, help="training epochs per fit (default 100)")
    parser.add_argument("--points", type=_positive, default=2000, help="sample size (default 2000)")
    parser.add_argument("--percents", type=_percents, default=PERCENTS,
                        help="VINCE percents (default 90,75,50,25,10,5)")
    parser.add_argument("--evaluate-on", choices=("heldout", "train"), default="heldout",
                        help="read the bound on a fresh sample (default) or on the training sample")
    parser.add_argument("--eval-draws", type=_positive, default=10, help="negative draws per point when reading")
    parser.add_argument("--threads", type=_positive, default=1, help="torch threads (default 1: tiny networks)")
    parser.add_argument("--out", metavar="FILE", help="also write the table to this file")
    args = parser.parse_args(argv)
    if args.points < 200:
        parser.error("--points must be at least 200 (100 negatives from the nearest 5%)")
    torch.set_num_threads(args.threads)
    start = time.perf_counter()

    def progress(row, seed, estimate):
        print(f"{PROG}: {row.name} seed {seed}: {estimate:.3g} nats ({time.perf_counter() - start:.0f} s)",
              file=sys.stderr, flush=True)

    rows = run_table(args.percents, seeds=args.seeds, progress=progress, n=args.points, epochs=args.epochs,
                     evaluate_on=args.evaluate_on, eval_draws=args.eval_draws)
    text = (format_table(rows, analytic_mi()) + "\n\n"
            f"{args.seeds} seeds, {args.points} points, {args.epochs} epochs, estimates read on the "
            f"{'held-out' if args.evaluate_on == 'heldout' else 'training'} sample; "
            f"{time.perf_counter() - start:.0f} s.\n")
    sys.stdout.write(text)
    if args.out:
        write_text_atomic(args.out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
