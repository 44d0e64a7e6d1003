#!/usr/bin/env python
"""Submit pretraining and transfer runs, and sweeps of them, with submitit (SLURM, local or debug).

    python tools/submit.py transfer [RESOURCES] --config-file configs/transfer/X.yaml [--resume] KEY VALUE ...
    python tools/submit.py pretrain [RESOURCES] --config-file configs/pretrain/X.yaml [--resume] KEY VALUE ...
    python tools/submit.py sweep SWEEP.yaml [--output-root DIR] [--wait] [--rebuild-ledger] [--estimate [GPU]]
                            [RESOURCES]
    python tools/submit.py status DIR

RESOURCES: --cluster slurm|local|debug, --nodes, --gpus-per-node, --tasks-per-node, --cpus-per-task,
--mem, --partition, --account, --qos, --constraint, --timeout-min, --job-dir, --job-name,
--array-parallelism, and --dry-run (print the sbatch script and the command; submit nothing).
`transfer` and `pretrain` take the arguments of a transfer run / a pretraining run.
A sweep's ledger is DIR/sweep.json; runs it does not know are adopted from their folders (results.json
there: done, never run again). --rebuild-ledger sets an unreadable sweep.json aside (sweep.json.broken-TIME)
and builds a new one that way. See transfer/launch/sweep_file.py for the sweep file and
transfer/launch/jobs.py for how jobs run and requeue.
"""
import sys

from pretrain.common.cli import ArgumentParser, one_line_errors

PROG = "submit"
RESOURCE_KEYS = ("cluster", "nodes", "gpus_per_node", "tasks_per_node", "cpus_per_task", "mem", "partition",
                 "account", "qos", "constraint", "timeout_min", "job_dir", "job_name", "array_parallelism")


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


def build_parser():
    parser = ArgumentParser(prog=PROG, description=__doc__.splitlines()[0],
                            epilog="\n".join(__doc__.splitlines()[2:]))
    sub = parser.add_subparsers(dest="command", required=True, parser_class=ArgumentParser)
    for name, what in (("transfer", "a Detectron2 transfer run"), ("pretrain", "a pretraining run")):
        p = sub.add_parser(name, allow_abbrev=False, help=f"one run: {what}",
                           description=f"Submit {what}; every argument that is not a resource flag goes to it "
                                       f"unchanged.")
        _resource_flags(p)
        p.add_argument("--wait", action="store_true", help="wait for the job to end")
    p = sub.add_parser("sweep", allow_abbrev=False, help="submit a sweep (a grid of transfer runs)")
    p.add_argument("sweep_file", metavar="SWEEP.yaml")
    p.add_argument("--output-root", metavar="DIR", help="default: ./output/sweeps/<name>")
    p.add_argument("--wait", action="store_true", help="wait until every run is done or failed, then print the table")
    p.add_argument("--poll-seconds", type=float, default=30.0, help="how often --wait asks the scheduler")
    p.add_argument("--rebuild-ledger", action="store_true",
                   help="set an unreadable DIR/sweep.json aside and build a new ledger from the run folders "
                        "(finished runs are adopted as done)")
    p.add_argument("--estimate", nargs="?", const="v100", metavar="GPU",
                   help="print the GPU-hours and disk the sweep will take, from configs/costs/GPU.yaml "
                        "(default v100); submit nothing")
    _resource_flags(p, sweep=True)
    p = sub.add_parser("status", help="the table of a sweep's ledger")
    p.add_argument("root", metavar="DIR", help="the sweep's output root (with sweep.json)")
    return parser


def _user_errors():
    """What a user can fix (config, datasets, weights, resources, sweep file): one line, exit status 2."""
    from pretrain.config import ConfigError as PretrainConfigError
    from pretrain.data.images import DataError
    from pretrain.training.checks import PretrainError
    from transfer.data.datasets import DatasetError
    from transfer.launch.resources import SubmitError
    from transfer.launch.sweep_fields import SweepError
    from transfer.training.config import ConfigError

    return (SubmitError, SweepError, ConfigError, DatasetError, PretrainError, PretrainConfigError, DataError,
            TimeoutError, OSError)


def main(argv=None):
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if rest and args.command not in ("transfer", "pretrain"):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    resources = {k: getattr(args, k, None) for k in RESOURCE_KEYS}
    with one_line_errors(f"{PROG} {args.command}", *_user_errors()):
        if args.command == "transfer":
            from transfer.launch.submit import submit_transfer
            submit_transfer(rest, resources, dry_run=args.dry_run, wait=args.wait)
        elif args.command == "pretrain":
            from transfer.launch.submit import submit_pretrain
            submit_pretrain(rest, resources, dry_run=args.dry_run, wait=args.wait)
        elif args.command == "sweep" and args.estimate:
            from transfer.launch.estimate import print_estimate
            print_estimate(args.sweep_file, args.estimate, resources, output_root=args.output_root)
        elif args.command == "sweep":
            from transfer.launch.sweep import run_sweep
            ledger = run_sweep(args.sweep_file, args.output_root, resources, dry_run=args.dry_run,
                               wait=args.wait, poll_s=args.poll_seconds, rebuild_ledger=args.rebuild_ledger)
            if ledger is not None and args.wait and ledger.counts()["failed"]:
                return 1
        else:
            from transfer.launch.ledger import format_status, sweep_status
            print(format_status(sweep_status(args.root)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
