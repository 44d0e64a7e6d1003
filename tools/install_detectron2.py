#!/usr/bin/env python
"""Make Detectron2 >= 0.6 importable: no-op when present, else the pure-Python 0.6 from the registry.

    python tools/install_detectron2.py [--sdist FILE]
"""
import argparse
import sys

from transfer.d2install import InstallError, ensure_detectron2


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sdist", help="use this local pb1-detectron2-0.6 sdist instead of downloading it")
    args = parser.parse_args(argv)
    try:
        print(ensure_detectron2(sdist=args.sdist))
    except InstallError as e:
        print(f"install_detectron2: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
