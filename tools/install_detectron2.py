#!/usr/bin/env python
"""Make Detectron2 >= 0.6 importable: no-op when present, else the pure-Python 0.6 from the registry.

    python tools/install_detectron2.py [--sdist FILE]

A failure is one line on stderr, exit status 1.
"""
import sys

from pretrain.common.cli import ArgumentParser, one_line_errors
from transfer.runtime.install import InstallError, ensure_detectron2

PROG = "install_detectron2"


def main(argv=None):
    parser = ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--sdist", help="use this local pb1-detectron2-0.6 sdist instead of downloading it")
    args = parser.parse_args(argv)
    with one_line_errors(PROG, InstallError, status=1):
        print(ensure_detectron2(sdist=args.sdist))
    return 0


if __name__ == "__main__":
    sys.exit(main())
