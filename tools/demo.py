#!/usr/bin/env python
"""The whole pipeline on one CPU in minutes: synthetic data, tiny MoCo v2 pretraining, conversion,
tiny transfer (random init vs. pretrained, fine-tuned and frozen), the table and the report.

    python tools/demo.py [--out output/demo] [--quick]
"""
import argparse
import sys

from transfer.demo import FULL, QUICK, DemoError, run_demo


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="output/demo", help="output folder (default: output/demo)")
    parser.add_argument("--quick", action="store_true", help="smallest settings (seconds; numbers meaningless)")
    args = parser.parse_args(argv)
    try:
        run_demo(args.out, size=QUICK if args.quick else FULL)
    except DemoError as e:
        print(f"demo: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
