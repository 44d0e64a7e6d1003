"""Submitting one transfer or pretraining run: check it here, then hand it to the scheduler.

The settings are validated in the submitting process before anything is submitted (the transfer
config and its datasets, the pretraining config and data folder); errors are one line
(:class:`~transfer.launch.resources.SubmitError`, or the run's own ``ConfigError`` / ``DatasetError`` /
``PretrainError``). How a job runs and requeues: :mod:`transfer.launch.jobs`; the clusters:
:mod:`transfer.launch.scheduler`.
"""
import os

from transfer.launch.jobs import PretrainJob, TransferJob
from transfer.launch.resources import Resources, SubmitError, split_dist_flags
from transfer.launch.scheduler import check_cluster, job_error, make_executor, plan_text, submission

__all__ = ["prepare_transfer", "prepare_pretrain", "submit_transfer", "submit_pretrain"]


def _absolute_opt(opts, key):
    opts = list(opts)
    for i in range(0, len(opts) - 1, 2):
        if opts[i] == key and opts[i + 1] and not os.path.isabs(opts[i + 1]):
            opts[i + 1] = os.path.abspath(opts[i + 1])
    return opts


def _opt(opts, key, default=None):
    value = default
    for i in range(0, len(opts) - 1, 2):
        if opts[i] == key:
            value = opts[i + 1]
    return value


def prepare_transfer(argv, res):
    """Check a transfer run in this process and return its :class:`~transfer.launch.jobs.TransferJob`
    (nothing submitted)."""
    from detectron2.engine import default_argument_parser

    from transfer.training import train_net
    args = default_argument_parser().parse_args(argv)
    opts = train_net.prepare(args, res.world_size)
    opts = _absolute_opt(opts, "OUTPUT_DIR")
    flags = ["--config-file", args.config_file] + (["--eval-only"] if args.eval_only else [])
    flags += ["--resume"] if args.resume else []
    return TransferJob(flags + opts, _opt(opts, "OUTPUT_DIR"))


def prepare_pretrain(argv, res):
    """Check a pretraining run in this process and return its :class:`~transfer.launch.jobs.PretrainJob`."""
    from pretrain.training import train
    args = train.parse_args(argv)  # also takes --resume written after the KEY VALUE pairs
    cfg = train.setup(args, world_size=res.world_size)
    if not os.path.isabs(cfg.OUTPUT_DIR):
        cfg.defrost()
        cfg.OUTPUT_DIR = os.path.abspath(cfg.OUTPUT_DIR)
        cfg.freeze()
    flags = ["--config-file", args.config_file] if args.config_file else []
    flags += ["--resume"] if args.resume else []
    # the command line of record names the drawn seed and the absolute OUTPUT_DIR, like the config
    opts = list(args.opts) + ["SEED", str(cfg.SEED), "OUTPUT_DIR", cfg.OUTPUT_DIR]
    return PretrainJob(flags + opts, cfg.OUTPUT_DIR, cfg.dump(), resume=args.resume)


def _submit_one(kind, argv, resources, dry_run=False, wait=False, out=print):
    prog = f"submit {kind}"
    argv, implied = split_dist_flags(argv, prog)
    if isinstance(resources, Resources):
        res = resources
    else:  # --num-gpus / --num-machines of the run's own arguments, unless the resource flags say otherwise
        res = Resources().updated(implied, prog).updated(resources or {}, "command line")
    job = (prepare_transfer if kind == "transfer" else prepare_pretrain)(argv, res)
    folder = os.path.abspath(res.job_dir) if res.job_dir else os.path.join(job.output_dir, "submitit")
    folder = os.path.join(folder, "%j")
    config = job.argv[job.argv.index("--config-file") + 1] if "--config-file" in job.argv else kind
    name = res.job_name or f"{kind}_{os.path.splitext(os.path.basename(config))[0]}"
    if dry_run:
        out(plan_text(res, folder, name, [job]), end="")
        return None
    check_cluster(res)
    executor = make_executor(res, folder, name)
    with submission(res, folder):  # sbatch's refusal: one line
        submitted = executor.submit(job)
    if res.cluster == "debug":
        error = submitted.exception()
        if error is not None:
            raise error
        out(f"{prog}: done: {job.output_dir}")
        return submitted
    out(f"{prog}: submitted job {submitted.job_id} ({res.cluster}, {res.nodes} node(s) x {res.tasks} task(s)); "
        f"log {submitted.paths.stdout}; output {job.output_dir}")
    if wait:
        from submitit.core.utils import FailedJobError, UncompletedJobError

        try:
            submitted.results()
        except (FailedJobError, UncompletedJobError):
            reason = job_error(folder, submitted.job_id) or "it ended without a result"
            raise SubmitError(f"job {submitted.job_id} failed: {reason} (log: {submitted.paths.stderr})") from None
        out(f"{prog}: done: {job.output_dir}")
    return submitted


def submit_transfer(argv, resources=None, dry_run=False, wait=False, out=print):
    """Validate and submit one transfer run with the arguments ``argv`` of ``transfer.training.train_net``.

    ``resources``: a :class:`~transfer.launch.resources.Resources`, or a dict of the resource values a
    user gave (the rest are defaults; ``--num-gpus``/``--num-machines`` in ``argv`` stand for
    ``gpus_per_node``/``nodes``). ``dry_run`` prints the sbatch script and the command and submits
    nothing; ``wait`` waits for the job. The debug cluster runs the job here, now. Returns the submitit
    job (None for a dry run)."""
    return _submit_one("transfer", argv, resources, dry_run, wait, out)


def submit_pretrain(argv, resources=None, dry_run=False, wait=False, out=print):
    """Validate and submit one pretraining run with the arguments ``argv`` of ``pretrain.training.train``
    (see :func:`submit_transfer`)."""
    return _submit_one("pretrain", argv, resources, dry_run, wait, out)
