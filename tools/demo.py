#!/usr/bin/env python
"""The whole pipeline on one CPU in minutes: synthetic data, tiny MoCo v2 pretraining, conversion,
tiny transfer (random init vs. pretrained, fine-tuned and frozen), the table and the report.

    python tools/demo.py [--out output/demo] [--quick]

A failed step is one line on stderr naming its log, exit status 1.
"""
import sys

from pretrain.common.cli import ArgumentParser, one_line_errors
from transfer.demo import FULL, QUICK, DemoError, run_demo

PROG = "demo"


def main(argv=None):
    parser = ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="output/demo", help="output folder (default: output/demo)")
    parser.add_argument("--quick", action="store_true", help="smallest settings (seconds; numbers meaningless)")
    args = parser.parse_args(argv)
    with one_line_errors(PROG, DemoError, status=1):
        run_demo(args.out, size=QUICK if args.quick else FULL)
    return 0


if __name__ == "__main__":
    sys.exit(main())
