#!/usr/bin/env python
"""Convert an SSL ResNet checkpoint to verified Detectron2 weights (or back to a torchvision state dict).

    python tools/convert_backbone.py INPUT OUTPUT [--format auto|LAYOUT] [--ema] [--no-verify]
                                     [--trust-pickle] [--to detectron2|torchvision]

The layout and the architecture are detected from the checkpoint (pretrain/checkpoints/); the conversion
and its verification are transfer/conversion/. Errors are one line on stderr, exit status 2.
"""
import sys

from pretrain.checkpoints.errors import ConversionError
from pretrain.checkpoints.layouts import LAYOUTS
from pretrain.common.cli import ArgumentParser, one_line_errors
from transfer.conversion.convert import convert

PROG = "convert_backbone"


def main(argv=None):
    layouts = "\n".join(f"  {name:<12} {text}" for name, text in LAYOUTS.items())
    parser = ArgumentParser(prog=PROG, description=__doc__.splitlines()[0],
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
    with one_line_errors(PROG, ConversionError):
        result = convert(args.input, args.output, fmt=args.format, ema=args.ema, verify=not args.no_verify,
                         trust_pickle=args.trust_pickle, to=args.to)
    print(result.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
