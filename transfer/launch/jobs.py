"""The callables submitit runs: one transfer run, one pretraining run, a sweep's pretraining stage, an evaluation,
a checkpoint's conversion, a sweep's curve watcher.

A job carries everything a task needs (the final argument list, the working directory and
``DETECTRON2_DATASETS`` of the submitting process) as pickled Python values: no argument ever passes
through a shell. Each task runs the command in its own process, through the library (never a script
of ``tools/``): it reads its rank, the number of tasks and the rendezvous from the job's environment
(:func:`job_distribution`) and joins the process group (NCCL with CUDA, gloo without).

Every job follows submitit's checkpoint protocol: on SLURM's time-limit or preemption signal (USR2,
``#SBATCH --signal``) submitit calls ``checkpoint()``, which returns the same job with ``--resume``, and
requeues it; the requeued job continues from the run's last checkpoint.
"""
import contextlib
import io
import os
import re
import shlex
import signal
import sys

from pretrain.common.runs import CHECKPOINT_FINAL, RESULTS_FILE, WEIGHTS_FILE

__all__ = ["CARRIED_ENV", "Job", "TransferJob", "PretrainJob", "PretrainStageJob", "EvaluationJob",
           "LinearEvalJob", "KNNEvalJob", "MIEstimateJob", "ConvertJob", "WatchJob", "JOBS_BY_KIND", "job_distribution",
           "submitit_environment", "quiet_forked_children"]

# environment variables a job takes from the submitting process (besides what sbatch exports itself)
CARRIED_ENV = ("DETECTRON2_DATASETS",)


# ------------------------------------------------------------------------------------- the task's place

def submitit_environment():
    """submitit's ``JobEnvironment`` of the running job, or None outside a submitit job."""
    import submitit

    try:
        return submitit.JobEnvironment()
    except RuntimeError:
        return None


def job_distribution():
    """This task's place in its job, a :class:`~pretrain.common.distributed.DistInfo`.

    SLURM tasks are described by SLURM's variables (:func:`pretrain.common.distributed.env_dist_info`;
    on one node the rendezvous is 127.0.0.1). Tasks of submitit's local executor meet on 127.0.0.1 at a
    port derived from the job id, the same in every task of the job. A process outside any job, or in
    the debug executor, is rank 0 of 1.
    """
    from pretrain.common import distributed as du

    env = submitit_environment()
    cluster = env.cluster if env is not None else None
    if cluster == "slurm":
        info = du.env_dist_info()
        if info is None:
            return du.DistInfo()
        if info.local_size >= info.world_size:
            info.master_addr = "127.0.0.1"
        return info
    if cluster == "local" and env.num_tasks > 1:
        digits = re.sub(r"\D", "", str(env.job_id)) or "0"
        return du.DistInfo(env.global_rank, env.num_tasks, env.local_rank, env.num_tasks, "127.0.0.1",
                           20000 + int(digits) % 20000, "submitit")
    return du.DistInfo()


_FORK_HOOK = []


def quiet_forked_children():
    """Forked children of a task (DataLoader workers) ignore the time-limit/preemption signal.

    SLURM signals every process of a job step, workers included; a forked worker inherits submitit's
    handler and would checkpoint, requeue and exit on its own (killing the loader of the task). Only
    the task's own process answers the signal.
    """
    import submitit

    if not _FORK_HOOK:
        sig = submitit.JobEnvironment._usr_sig()
        os.register_at_fork(after_in_child=lambda: signal.signal(sig, signal.SIG_IGN))
        _FORK_HOOK.append(sig)


# ------------------------------------------------------------------------------------------ the jobs

class Job:
    """A checkpointable callable: runs in the submitting process's directory and datasets root.

    ``entry`` names the library module whose command the job runs (its ``main(argv)``); :meth:`command`
    is the equivalent command line (what dry runs print and the sweep ledger records).
    """

    entry = None
    resume_flag = "--resume"  # None: the command continues by itself and takes no such flag

    def __init__(self, argv, output_dir, resume=False, cwd=None, env=None):
        self.argv = [str(a) for a in argv]
        self.output_dir = output_dir
        self.resume = bool(resume)
        self.cwd = cwd or os.getcwd()
        self.env = dict(env) if env is not None else {k: os.environ[k] for k in CARRIED_ENV if k in os.environ}

    def _enter(self):
        os.chdir(self.cwd)
        os.environ.update(self.env)
        env = submitit_environment()
        if env is not None and env.cluster in ("slurm", "local"):  # submitit installed its signal handler
            quiet_forked_children()

    def resumed(self):
        """The same job, continuing from its last checkpoint."""
        new = type(self).__new__(type(self))
        new.__dict__.update(self.__dict__)
        new.resume = True
        return new

    def checkpoint(self, *args, **kwargs):
        """submitit's checkpoint protocol: called on the time-limit/preemption signal; the returned
        submission is what the requeued job runs."""
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self.resumed())

    @classmethod
    def command_line(cls, argv, resume=False):
        """The equivalent command line of a job of this class with ``argv``, quoted for a shell: the
        ``main(argv)`` of its entry module, in a fresh interpreter."""
        argv = [str(a) for a in argv]
        flags = [cls.resume_flag] if resume and cls.resume_flag and cls.resume_flag not in argv else []
        code = f"import sys; from {cls.entry} import main; sys.exit(main(sys.argv[1:]))"
        return shlex.join([sys.executable, "-c", code, *flags, *argv])

    def command(self):
        return self.command_line(self.argv, self.resume)

    def __repr__(self):
        return f"{type(self).__name__}({self.command()})"


class TransferJob(Job):
    """One task of a Detectron2 transfer run (``argv``: the final arguments, with the opts that
    :func:`transfer.training.train_net.prepare` returned in the submitting process)."""

    entry = "transfer.training.train_net"

    def __call__(self):
        self._enter()
        from detectron2.engine import default_argument_parser

        from transfer.training import train_net
        args = default_argument_parser().parse_args(self.argv)
        args.resume = args.resume or self.resume
        info = job_distribution()
        dist_url = f"tcp://{info.master_addr}:{info.master_port}" if info.world_size > 1 else None
        train_net.run_in_process_group(args, list(args.opts), rank=info.rank, world_size=info.world_size,
                                       local_rank=info.local_rank, local_world_size=info.local_size,
                                       dist_url=dist_url)
        return os.path.join(self.output_dir, RESULTS_FILE)


class PretrainJob(Job):
    """One task of a pretraining run; ``cfg_text`` is the config that :func:`pretrain.training.train.setup`
    built and checked in the submitting process (its SEED fixed)."""

    entry = "pretrain.training.train"

    def __init__(self, argv, output_dir, cfg_text, resume=False, cwd=None, env=None):
        super().__init__(argv, output_dir, resume=resume, cwd=cwd, env=env)
        self.cfg_text = cfg_text

    def __call__(self):
        self._enter()
        from pretrain.training import train
        cfg = train.load_config_text(self.cfg_text)
        train.run(cfg, num_gpus=1, resume=self.resume, dist_info=job_distribution())
        return os.path.join(self.output_dir, CHECKPOINT_FINAL)


class PretrainStageJob(PretrainJob):
    """A sweep's pretraining: always resumed when there is a checkpoint; then, on rank 0, the final
    checkpoint converted to verified Detectron2 weights (``weights.pkl``) unless ``convert`` is False."""

    def __init__(self, argv, output_dir, cfg_text, convert=True, resume=True, cwd=None, env=None):
        super().__init__(argv, output_dir, cfg_text, resume=resume, cwd=cwd, env=env)
        self.convert = bool(convert)

    @classmethod
    def command_line(cls, argv, resume=True):
        return super().command_line(argv, resume=True)

    def __call__(self):
        final = super().__call__()
        if self.convert and job_distribution().rank == 0:
            from transfer.conversion.convert import convert

            out = os.path.join(self.output_dir, WEIGHTS_FILE)
            result = convert(final, out)
            print(result.summary(), flush=True)
            return out
        return final


class _StderrTail(io.TextIOBase):
    """Passes everything on to ``stream`` and keeps the end of it (for the error line of a failed run)."""

    def __init__(self, stream):
        self.stream, self.tail = stream, ""

    def write(self, text):
        self.stream.write(text)
        self.tail = (self.tail + text)[-8000:]
        return len(text)

    def flush(self):
        self.stream.flush()

    def last_line(self):
        lines = [line.strip() for line in self.tail.splitlines() if line.strip()]
        return lines[-1] if lines else None


class EvaluationJob(Job):
    """A single-process frozen-feature evaluation: its command's ``main(argv)`` (a subclass's ``main``,
    importing the command lazily), in the task's process. A non-zero exit status fails the job with the
    command's last error line."""

    resume_flag = None  # evaluations continue from their own checkpoints

    def __call__(self):
        self._enter()
        tail = _StderrTail(sys.stderr)
        with contextlib.redirect_stderr(tail):
            try:
                status = self.main(list(self.argv))
            except SystemExit as e:  # usage errors of its argument parser
                status = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if status:
            raise RuntimeError(f"{self.entry} exited with status {status}: "
                               f"{tail.last_line() or 'no error message'}")
        return self.output_dir


class LinearEvalJob(EvaluationJob):
    """Linear evaluation on frozen features (writes ``results.json``)."""

    entry = "pretrain.evaluation.linear.command"

    @staticmethod
    def main(argv):
        from pretrain.evaluation.linear.command import main
        return main(argv)


class KNNEvalJob(EvaluationJob):
    """kNN evaluation on frozen features (writes ``results.json``)."""

    entry = "pretrain.evaluation.knn"

    @staticmethod
    def main(argv):
        from pretrain.evaluation.knn import main
        return main(argv)


class MIEstimateJob(EvaluationJob):
    """A post-training mutual-information estimate (writes ``mi.json``)."""

    entry = "pretrain.evaluation.mi.command"

    @staticmethod
    def main(argv):
        from pretrain.evaluation.mi.command import main
        return main(argv)


class ConvertJob(Job):
    """A pretraining checkpoint kept for transfer curves, converted to verified Detectron2 weights
    (``argv``: the checkpoint, the ``.pkl`` to write; :func:`transfer.conversion.convert.convert`)."""

    resume_flag = None  # a conversion starts over; its output appears atomically

    @classmethod
    def command_line(cls, argv, resume=False):
        code = ("import sys; from transfer.conversion.convert import convert; "
                "print(convert(sys.argv[1], sys.argv[2]).summary())")
        return shlex.join([sys.executable, "-c", code, *map(str, argv)])

    def __call__(self):
        self._enter()
        from transfer.conversion.convert import convert

        result = convert(self.argv[0], self.argv[1])
        print(result.summary(), flush=True)
        return self.argv[1]


class WatchJob(Job):
    """A sweep's curve watcher (:mod:`transfer.launch.curves`): a one-CPU job that calls ``step()`` and ends
    when it returns. ``step`` is :func:`transfer.launch.sweep.watch_curves` bound to the sweep file, the
    root, the backbone and the resources (``argv``: those four, as its command line shows them), passed in
    by the sweep that submits the job. Requeued, it starts over: the ledger holds what it has submitted."""

    resume_flag = None

    def __init__(self, argv, output_dir, step, cwd=None, env=None):
        super().__init__(argv, output_dir, cwd=cwd, env=env)
        self.step = step

    @classmethod
    def command_line(cls, argv, resume=False):
        code = ("import json, sys; from transfer.launch.sweep import watch_curves; "
                "watch_curves(*sys.argv[1:4], resources=json.loads(sys.argv[4]))")
        return shlex.join([sys.executable, "-c", code, *map(str, argv)])

    def __call__(self):
        self._enter()
        return self.step()


# the job class that runs each kind of sweep run
JOBS_BY_KIND = {"transfer": TransferJob, "pretrain": PretrainStageJob, "linear": LinearEvalJob, "knn": KNNEvalJob,
                "mi": MIEstimateJob, "convert": ConvertJob, "watch": WatchJob}
