#!/usr/bin/env python
"""Check a GPU node before a sweep: CUDA, NCCL, SyncBN, AMP at real resolution, compiled ops, data, weights.

    python tools/preflight.py [--sweep SWEEP.yaml] [--gpu-type v100] [--steps 10] [--trust-pickle]
                              [--only CHECK ...]

Prints one line per check (ok, warn, skipped with the reason, FAIL) and the training step's seconds per
iteration and images per second beside the published figures of the same model and mode
(configs/costs/<gpu>.yaml; default: the table named in the GPU's name, else V100). On a machine without
CUDA it says what it cannot check and checks the rest (datasets, weights, a short CPU step). Exit status
1 when a check fails, 2 for a usage error. A few minutes on a GPU node. See transfer/runtime/preflight.py.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pretrain.common.cli import ArgumentParser, one_line_errors  # noqa: E402

PROG = "preflight"


def main(argv=None):
    parser = ArgumentParser(prog=PROG, description=__doc__.splitlines()[0], epilog="\n".join(__doc__.splitlines()[2:]))
    parser.add_argument("--sweep", metavar="SWEEP.yaml", help="also check the weights and datasets this sweep names")
    parser.add_argument("--gpu-type", help="cost table of the published figures (a file stem of configs/costs/)")
    parser.add_argument("--steps", type=int, default=10, help="timed training steps per mode (default 10)")
    parser.add_argument("--trust-pickle", action="store_true",
                        help="allow full unpickling of weights files (can run code from them; trusted files only)")
    parser.add_argument("--only", nargs="+", metavar="CHECK",
                        help="run only these checks: environment cuda nccl syncbn compiled_ops train_step weights "
                             "datasets (e.g. --only weights datasets on a login node)")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error("--steps must be >= 1")
    if args.sweep and not os.path.isfile(args.sweep):
        parser.error(f"--sweep: file not found: {args.sweep}")
    import transfer  # noqa: F401  (runtime fixes before Detectron2 is imported)
    from transfer.launch.costs import gpu_types
    from transfer.runtime.preflight import CHECKS, print_preflight

    if args.gpu_type and args.gpu_type.lower() not in gpu_types():
        parser.error(f"--gpu-type {args.gpu_type}: no cost table (known: {', '.join(gpu_types())})")
    unknown = sorted(set(args.only or ()) - set(CHECKS))
    if unknown:
        parser.error(f"--only: unknown check(s) {', '.join(unknown)}; known: {', '.join(CHECKS)}")

    with one_line_errors(PROG):
        report = print_preflight(args.sweep, args.gpu_type, args.trust_pickle, args.steps, only=args.only,
                                 log=lambda line: print(f"[{PROG}] {line}", file=sys.stderr, flush=True))
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
