#!/usr/bin/env python
"""How each stage's cost grows with its work: datasets, sweep submission, memory bank, MI estimate, report.

    python tools/bench_scale.py [--quick] [--only SECTION ...] [--sizes 0.1 0.5 1.0] [--runs 10 50 200]
                                [--bank 128000 1280000] [--mi-images 1000] [--results 1000]
                                [--work-dir DIR] [--no-d2-load] [--repeat N] [--threads N]

Sections: datasets (COCO/LVIS-sized annotation files: the project's check, cached and not, against
Detectron2's own load; time and peak memory), sweep (10/50/200 runs to a filled ledger), memory_bank
(neighbour search and k-means at 128k/1.28M entries), mi (the MI estimate per 1k images), report (the
report on 1000 results.json). --sizes are fractions of COCO's and LVIS's training sets. --quick: small
sizes of everything (a minute or two). --repeat N runs each dataset step N times (a fresh process each,
the rounds interleaved) and shows the median run and the spread. At full size the datasets section takes about half an hour on 2
CPU cores (Detectron2's load of a COCO-sized file alone: minutes); --work-dir keeps the generated files
for the next run. See transfer/bench/scale.py for what is timed.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pretrain.common.cli import ArgumentParser, one_line_errors  # noqa: E402

PROG = "bench_scale"


def main(argv=None):
    from transfer.bench.scale import DEFAULT_SIZES, QUICK_SIZES, SECTIONS, Sizes, run_scale_bench

    parser = ArgumentParser(prog=PROG, description=__doc__.splitlines()[0], epilog="\n".join(__doc__.splitlines()[2:]))
    parser.add_argument("--quick", action="store_true", help="small sizes of every section (a test)")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, metavar="SECTION",
                        help=f"sections to run (default all: {', '.join(SECTIONS)})")
    parser.add_argument("--sizes", type=float, nargs="+", help="fractions of COCO's and LVIS's training sets")
    parser.add_argument("--runs", type=int, nargs="+", help="sweep sizes in runs")
    parser.add_argument("--bank", type=int, nargs="+", help="memory-bank sizes in entries")
    parser.add_argument("--mi-images", type=int, nargs="+", help="images of the MI estimate")
    parser.add_argument("--results", type=int, nargs="+", help="results.json files of the report")
    parser.add_argument("--work-dir", help="keep generated data here (reused by the next run)")
    parser.add_argument("--no-d2-load", action="store_true", help="skip timing Detectron2's own dataset load")
    parser.add_argument("--repeat", type=int, default=1, metavar="N",
                        help="runs of each dataset step (median and spread shown)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads of the compute sections (0: torch's)")
    args = parser.parse_args(argv)
    base = QUICK_SIZES if args.quick else DEFAULT_SIZES
    given = {"fractions": args.sizes, "runs": args.runs, "bank": args.bank, "mi_images": args.mi_images,
             "results": args.results}
    for key, values in given.items():
        if values is not None and (not values or min(values) <= 0 or (key == "fractions" and max(values) > 10)):
            parser.error(f"--{key.replace('_', '-') if key != 'fractions' else 'sizes'}: expected positive sizes")
    if args.repeat < 1:
        parser.error("--repeat: expected a positive count")
    sizes = Sizes(**{**base.__dict__, **{k: tuple(v) for k, v in given.items() if v is not None},
                     "repeats": args.repeat})
    with one_line_errors(PROG, OSError):
        run_scale_bench(args.only or SECTIONS, sizes, work_dir=args.work_dir, d2_load=not args.no_d2_load,
                        threads=args.threads, log=lambda line: print(f"[{PROG}] {line}", file=sys.stderr, flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
