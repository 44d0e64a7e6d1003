#!/usr/bin/env python
"""Convert an SSL ResNet checkpoint to verified Detectron2 weights (or back to a torchvision state dict).

    python tools/convert_backbone.py INPUT OUTPUT [--format auto|LAYOUT] [--ema] [--no-verify]
                                     [--trust-pickle] [--to detectron2|torchvision]

The layout and the architecture are detected from the checkpoint; see transfer/convert.py.
"""
import argparse
import sys

from transfer.convert import LAYOUTS, ConversionError, convert

PROG = "convert_backbone"


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line and exit status 1, like every other error of this tool."""

    def error(self, message):
        print(f"{PROG}: error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(1)


def main(argv=None):
    layouts = "\n".join(f"  {name:<12} {text}" for name, text in LAYOUTS.items())
    parser = _Parser(prog=PROG, description=__doc__.splitlines()[0],
                     formatter_class=argparse.RawDescriptionHelpFormatter,
                     epilog=f"layouts (--format):\n{layouts}")
    parser.add_argument("input", metavar="INPUT", help="checkpoint: .pth, .pth.tar, .pt, .pkl, .safetensors")
    parser.add_argument("output", metavar="OUTPUT", help="Detectron2 weights .pkl (.pth with --to torchvision)")
    parser.add_argument("--format", default="auto", choices=["auto", *LAYOUTS], metavar="FORMAT",
                        help="checkpoint layout: auto (default) or one of: " + ", ".join(LAYOUTS))
    parser.add_argument("--ema", action="store_true", help="convert the EMA / momentum encoder")
    parser.add_argument("--no-verify", action="store_true", help="skip the feature comparison")
    parser.add_argument("--trust-pickle", action="store_true",
                        help="allow full unpickling (can run code from the file; only for trusted files)")
    parser.add_argument("--to", default="detectron2", choices=["detectron2", "torchvision"],
                        help="output: Detectron2 weights (default) or a torchvision state dict")
    args = parser.parse_args(argv)
    try:
        result = convert(args.input, args.output, fmt=args.format, ema=args.ema, verify=not args.no_verify,
                         trust_pickle=args.trust_pickle, to=args.to)
    except ConversionError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1
    print(result.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
