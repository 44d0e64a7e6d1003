"""The linear-evaluation command: ``tools/linear_eval.py`` and the sweep's linear jobs run :func:`main`.

    tools/linear_eval.py --config-file configs/linear/<dataset>.yaml --weights W [--out DIR] [--force]
        [--format LAYOUT] [--trust-pickle] KEY VALUE ...

Errors a user can cause (config key or value, weights file, data folder, label column, validation classes
that training lacks) end with one line and exit status 2, before anything is written.
"""
import argparse
import json
import logging
import os
import sys

from pretrain.common.cli import ArgumentParser, one_line_errors
from pretrain.common.runs import RESULTS_FILE
from pretrain.evaluation.linear.config import LinearEvalError, check_config, load_config, output_dir
from pretrain.evaluation.linear.loop import logger, run

__all__ = ["PROG", "argument_parser", "parse_args", "main"]

PROG = "linear_eval"
_FLAGS = {"--force": "force", "--trust-pickle": "trust_pickle"}
_VALUED = {"--config-file": "config_file", "--weights": "weights", "--out": "out", "--format": "format"}


def argument_parser():
    parser = ArgumentParser(prog=PROG, description="Linear evaluation on frozen features (Wu et al. 2020, B.3).",
                            epilog="KEY VALUE pairs override config keys, e.g. DATA.ROOT /data/cifar10 "
                                   "SOLVER.EPOCHS 10 AUGMENT none LINEAR.STANDARDIZE True")
    parser.add_argument("--config-file", default="", metavar="FILE", help="YAML config (configs/linear/)")
    parser.add_argument("--weights", metavar="FILE", help="checkpoint or converted Detectron2 .pkl (sets WEIGHTS)")
    parser.add_argument("--out", metavar="DIR", help="output folder (default: OUTPUT_DIR, else "
                                                     "output/linear_<name>/<backbone>/frozen/seed<k>)")
    parser.add_argument("--format", default=None, metavar="LAYOUT", help="checkpoint layout (default: FORMAT, auto)")
    parser.add_argument("--trust-pickle", action="store_true",
                        help="allow full unpickling of the weights file (only for files from a trusted source)")
    parser.add_argument("--force", action="store_true", help="run again even if results.json exists")
    parser.add_argument("opts", nargs=argparse.REMAINDER, metavar="KEY VALUE", help="config overrides")
    return parser


def parse_args(argv=None):
    """Parse; options written after the KEY VALUE pairs (``... SOLVER.EPOCHS 5 --force``) count too."""
    parser = argument_parser()
    args = parser.parse_args(argv)
    opts, rest = [], list(args.opts)
    while rest:
        item = rest.pop(0)
        name, eq, value = item.partition("=")
        if item in _FLAGS:
            setattr(args, _FLAGS[item], True)
        elif name in _VALUED:
            if not eq:
                if not rest:
                    parser.error(f"argument {name}: expected one argument")
                value = rest.pop(0)
            setattr(args, _VALUED[name], value)
        else:
            opts.append(item)
    args.opts = opts
    return args


class _StdoutHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stdout`` is at the time of the record."""

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value):
        pass


def _setup_logging():
    logger.setLevel(logging.INFO)
    logger.propagate = False
    if not any(isinstance(h, _StdoutHandler) for h in logger.handlers):
        handler = _StdoutHandler()
        handler.setFormatter(logging.Formatter("[%(asctime)s %(name)s] %(message)s", datefmt="%m/%d %H:%M:%S"))
        logger.addHandler(handler)


def main(argv=None):
    """Run the command with ``argv`` (default: ``sys.argv[1:]``); returns 0, or exits with status 2 and one
    line on stderr for a mistake the user can fix."""
    args = parse_args(argv)
    _setup_logging()
    with one_line_errors(PROG, LinearEvalError):
        opts = list(args.opts)
        if args.weights:
            opts += ["WEIGHTS", args.weights]
        cfg = load_config(args.config_file or None, opts)
        if not cfg.DATA.NAME and args.config_file:
            cfg.DATA.NAME = os.path.splitext(os.path.basename(args.config_file))[0]
        check_config(cfg)
        cfg.freeze()
        out = args.out or output_dir(cfg)
        if os.path.isfile(os.path.join(out, RESULTS_FILE)) and not args.force:
            print(f"{PROG}: {os.path.join(out, RESULTS_FILE)} exists; nothing to do (--force runs it again)")
            return 0
        record = run(cfg, out, force=args.force, fmt=args.format, trust_pickle=args.trust_pickle)
    if record is None:
        print(f"{PROG}: stopped after epoch {cfg.SOLVER.STOP_EPOCH} (SOLVER.STOP_EPOCH); run again to continue")
        return 0
    print(json.dumps({"task": record["task"], "backbone": record["backbone"], **record["metrics"]["linear"]}))
    return 0
