#!/usr/bin/env python
"""Submit pretraining and transfer runs, and sweeps of them, with submitit (SLURM, local or debug).

    python tools/submit.py transfer [RESOURCES] --config-file configs/transfer/X.yaml [--resume] KEY VALUE ...
    python tools/submit.py pretrain [RESOURCES] --config-file configs/pretrain/X.yaml [--resume] KEY VALUE ...
    python tools/submit.py sweep SWEEP.yaml [--output-root DIR] [--wait] [RESOURCES]
    python tools/submit.py status DIR

RESOURCES: --cluster slurm|local|debug, --nodes, --gpus-per-node, --tasks-per-node, --cpus-per-task,
--mem, --partition, --account, --qos, --constraint, --timeout-min, --job-dir, --job-name,
--array-parallelism, and --dry-run (print the sbatch script and the command; submit nothing).
`transfer` and `pretrain` take the arguments of `python -m transfer.train_net` / `python -m pretrain.train`.
A sweep's ledger is DIR/sweep.json; see transfer/sweep.py for the sweep file and transfer/submit.py
for how jobs run and requeue.
"""
import argparse
import sys

PROG = "submit"


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        print(f"{self.prog}: error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(2)


def _resource_flags(parser, sweep=False):
    g = parser.add_argument_group("resources (defaults: slurm, 1 node, 1 GPU, one task per GPU, 3 days)")
    g.add_argument("--cluster", choices=["slurm", "local", "debug"],
                   help="slurm (sbatch), local (this machine) or debug (in this process)")
    g.add_argument("--nodes", type=int)
    g.add_argument("--gpus-per-node", type=int, help="one task per GPU; 0 for CPU-only jobs")
    g.add_argument("--tasks-per-node", type=int, help="processes per node (default: the GPUs, or 1)")
    g.add_argument("--cpus-per-task", type=int)
    g.add_argument("--mem", help="memory per node: 64G, 500M, or GB")
    g.add_argument("--partition")
    g.add_argument("--account")
    g.add_argument("--qos")
    g.add_argument("--constraint")
    g.add_argument("--timeout-min", type=int, help="time limit; jobs checkpoint and requeue when it is reached")
    g.add_argument("--job-dir", help="submitit's folder (scripts, logs); default: next to the outputs")
    g.add_argument("--job-name")
    g.add_argument("--array-parallelism", type=int,
                   help="runs of one job array running at once" + (" (default 32)" if sweep else ""))
    parser.add_argument("--dry-run", action="store_true",
                        help="print the sbatch script and the commands; submit nothing")


RESOURCE_KEYS = ("cluster", "nodes", "gpus_per_node", "tasks_per_node", "cpus_per_task", "mem", "partition",
                 "account", "qos", "constraint", "timeout_min", "job_dir", "job_name", "array_parallelism")


def build_parser():
    parser = _Parser(prog=PROG, description=__doc__.splitlines()[0],
                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog="\n".join(__doc__.splitlines()[2:]))
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, module in (("transfer", "transfer.train_net"), ("pretrain", "pretrain.train")):
        p = sub.add_parser(name, allow_abbrev=False, help=f"one run of python -m {module}",
                           description=f"Submit one run of python -m {module}; every argument that is not a "
                                       f"resource flag goes to it unchanged.")
        _resource_flags(p)
        p.add_argument("--wait", action="store_true", help="wait for the job to end")
    p = sub.add_parser("sweep", allow_abbrev=False, help="submit a sweep (a grid of transfer runs)")
    p.add_argument("sweep_file", metavar="SWEEP.yaml")
    p.add_argument("--output-root", metavar="DIR", help="default: ./output/sweeps/<name>")
    p.add_argument("--wait", action="store_true", help="wait until every run is done or failed, then print the table")
    p.add_argument("--poll-seconds", type=float, default=30.0, help="how often --wait asks the scheduler")
    _resource_flags(p, sweep=True)
    p = sub.add_parser("status", help="the table of a sweep's ledger")
    p.add_argument("root", metavar="DIR", help="the sweep's output root (with sweep.json)")
    return parser


def main(argv=None):
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if rest and args.command not in ("transfer", "pretrain"):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")

    from transfer.submit import SubmitError, submit_pretrain, submit_transfer
    from transfer.sweep import SweepError, format_status, run_sweep, sweep_status

    from transfer.config import ConfigError
    from transfer.datasets import DatasetError

    errors = [SubmitError, SweepError, ConfigError, DatasetError, TimeoutError, OSError]
    if args.command == "pretrain":
        from pretrain.config import ConfigError as PretrainConfigError
        from pretrain.data import DataError
        from pretrain.train import PretrainError

        errors += [PretrainError, PretrainConfigError, DataError]
    resources = {k: getattr(args, k, None) for k in RESOURCE_KEYS}
    prog = f"{PROG} {args.command}"
    try:
        if args.command in ("transfer", "pretrain"):
            submit = submit_transfer if args.command == "transfer" else submit_pretrain
            submit(rest, resources, dry_run=args.dry_run, wait=args.wait)
            return 0
        if args.command == "sweep":
            ledger = run_sweep(args.sweep_file, args.output_root, resources, dry_run=args.dry_run,
                               wait=args.wait, poll_s=args.poll_seconds)
            if ledger is not None and args.wait and ledger.counts()["failed"]:
                return 1
            return 0
        print(format_status(sweep_status(args.root)))
        return 0
    except tuple(errors) as e:  # user errors: config, datasets, weights, resources, sweep file (one line)
        message = " ".join(str(e).split()) or type(e).__name__
        print(f"{prog}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
