#!/usr/bin/env python
"""Seconds per iteration of a transfer run: the project's trainer against Detectron2's plain DefaultTrainer.

    python tools/bench_transfer.py [--iters 20] [--warmup 5] [--rounds 3] [--mode finetune|frozen]
                                   [--threads N] [--quick]

The same effective config (Mask R-CNN R18-FPN with the tiny CPU overrides) on the same synthetic COCO
data, trainers taking turns; prints the median s/iter of both and their ratio. --quick: one short round
(a test of the table, not a measurement). See transfer/bench/trainer_overhead.py.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pretrain.common.cli import ArgumentParser, one_line_errors  # noqa: E402

PROG = "bench_transfer"


def main(argv=None):
    parser = ArgumentParser(prog=PROG, description=__doc__.splitlines()[0], epilog="\n".join(__doc__.splitlines()[2:]))
    parser.add_argument("--iters", type=int, default=20, help="timed iterations per round")
    parser.add_argument("--warmup", type=int, default=5, help="iterations left out at the start of each round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; each trains both trainers once")
    parser.add_argument("--mode", choices=("finetune", "frozen"), default="finetune")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--quick", action="store_true", help="1 round of 2 warm-up + 3 timed iterations")
    args = parser.parse_args(argv)
    if args.quick:
        args.iters, args.warmup, args.rounds = 3, 2, 1
    if args.iters < 1 or args.warmup < 1 or args.rounds < 1:
        parser.error("--iters, --warmup and --rounds must be >= 1")
    import transfer  # noqa: F401  (runtime fixes before Detectron2 is imported)
    from transfer.bench.trainer_overhead import run_trainer_bench
    from transfer.data.datasets import DatasetError
    from transfer.training.config import ConfigError

    with one_line_errors(PROG, ConfigError, DatasetError, OSError):
        run_trainer_bench(args.iters, args.warmup, args.rounds, args.mode, args.threads,
                          log=lambda line: print(f"[{PROG}] {line}", file=sys.stderr, flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
