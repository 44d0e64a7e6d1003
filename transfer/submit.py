"""Launching runs with submitit: on SLURM (one task per GPU across nodes), locally, or in this process.

Three clusters, one code path:

- ``slurm``: submitit's ``SlurmExecutor`` writes an sbatch script and submits it; ``srun`` starts
  ``nodes x tasks_per_node`` tasks (one per GPU, or ``tasks_per_node`` gloo processes per node on
  CPU-only clusters); each task is one process of the run.
- ``local``: submitit's ``LocalExecutor`` starts the tasks on this machine (one node).
- ``debug``: submitit's ``DebugExecutor`` runs the job in this process, now (one task).

The submitted callables (:class:`TransferJob`, :class:`PretrainJob`) carry everything a task needs
(the final argument list, the working directory and ``DETECTRON2_DATASETS`` of the submitting process)
as pickled Python values: no argument ever passes through a shell. Each task reads its rank, the
number of tasks and the first host of the job from submitit's ``JobEnvironment`` (:func:`job_distribution`)
and joins the process group (NCCL with CUDA, gloo without). Both callables implement submitit's
checkpoint protocol: on SLURM's time-limit or preemption signal (USR2, ``#SBATCH --signal``) submitit
calls ``checkpoint()``, which returns the same job with ``--resume``, and requeues it; the requeued job
continues from the run's last checkpoint.

The settings are validated in the submitting process before anything is submitted (the transfer
config and its datasets, the pretraining config and data folder); errors are one line
(:class:`SubmitError`, or the run's own ``ConfigError`` / ``DatasetError`` / ``PretrainError``).
"""
import dataclasses
import os
import re
import shlex
import signal
import subprocess
import sys

__all__ = ["CLUSTERS", "SubmitError", "Resources", "TransferJob", "PretrainJob", "job_distribution",
           "make_executor", "check_cluster", "slurm_parameters", "sbatch_script", "submitit_command",
           "submit_transfer", "submit_pretrain", "prepare_transfer", "prepare_pretrain", "resolve_resources",
           "job_states", "job_paths", "job_error", "parse_mem", "split_dist_flags", "plan_text",
           "quiet_forked_children"]

CLUSTERS = ("slurm", "local", "debug")
# environment variables a job takes from the submitting process (besides what sbatch exports itself)
CARRIED_ENV = ("DETECTRON2_DATASETS",)
_SAFE_NAME = re.compile(r"[^A-Za-z0-9_.+-]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class SubmitError(ValueError):
    """Resources or arguments a job cannot be submitted with, explained in one line."""


# ------------------------------------------------------------------------------------------ resources

@dataclasses.dataclass
class Resources:
    """What a job asks the cluster for. ``tasks_per_node`` defaults to ``gpus_per_node`` (one task per
    GPU), or 1 without GPUs; on CPU-only clusters ``gpus_per_node 0`` with ``tasks_per_node N`` gives N
    gloo processes per node."""

    cluster: str = "slurm"
    nodes: int = 1
    gpus_per_node: int = 1
    tasks_per_node: int = None
    cpus_per_task: int = None
    mem: str = None  # per node: "64G", "500M", or a number of GB
    partition: str = None
    account: str = None
    qos: str = None
    constraint: str = None
    timeout_min: int = 4320
    job_dir: str = None
    job_name: str = None
    array_parallelism: int = 32  # sweeps: how many runs of one job array run at once

    _INTS = ("nodes", "gpus_per_node", "tasks_per_node", "cpus_per_task", "timeout_min", "array_parallelism")
    _STRS = ("cluster", "mem", "partition", "account", "qos", "constraint", "job_dir", "job_name")

    @classmethod
    def keys(cls):
        return [f.name for f in dataclasses.fields(cls)]

    def updated(self, values, source="resources"):
        """A copy with ``values`` (a dict; None values are skipped) applied and checked."""
        values = {k: v for k, v in (values or {}).items() if v is not None}
        unknown = sorted(set(values) - set(self.keys()))
        if unknown:
            raise SubmitError(f"{source}: unknown key(s) {', '.join(unknown)}; known: {', '.join(self.keys())}")
        for key, value in values.items():
            if key in self._INTS and (isinstance(value, bool) or not isinstance(value, int)):
                try:
                    values[key] = int(str(value))
                except ValueError:
                    raise SubmitError(f"{source}: {key} must be an integer, got {value!r}") from None
            if key in self._STRS:
                values[key] = str(value)
                no_control_characters(values[key], f"{source}: {key}")
        new = dataclasses.replace(self, **values)
        new.check(source)
        return new

    def check(self, source="resources"):
        if self.cluster not in CLUSTERS:
            raise SubmitError(f"{source}: cluster {self.cluster!r} is not one of {', '.join(CLUSTERS)}")
        for key in ("nodes", "timeout_min", "array_parallelism"):
            if getattr(self, key) < 1:
                raise SubmitError(f"{source}: {key} must be >= 1, got {getattr(self, key)}")
        for key in ("gpus_per_node", "tasks_per_node", "cpus_per_task"):
            value = getattr(self, key)
            if value is not None and value < (0 if key == "gpus_per_node" else 1):
                raise SubmitError(f"{source}: {key} must be >= {0 if key == 'gpus_per_node' else 1}, got {value}")
        if self.mem is not None:
            parse_mem(self.mem, source)
        if self.cluster != "slurm" and self.nodes != 1:
            raise SubmitError(f"{source}: --cluster {self.cluster} runs on this machine only (nodes 1), "
                              f"got nodes {self.nodes}")
        if self.cluster == "debug" and self.tasks != 1:
            raise SubmitError(f"{source}: --cluster debug runs one process in this one; use --cluster local "
                              f"for {self.tasks} tasks")

    @property
    def tasks(self):
        """Tasks (processes) per node."""
        if self.tasks_per_node is not None:
            return self.tasks_per_node
        return self.gpus_per_node if self.gpus_per_node > 0 else 1

    @property
    def world_size(self):
        return self.nodes * self.tasks


def no_control_characters(text, what):
    """Refuse newlines and other control characters in what goes into an sbatch script: each
    ``#SBATCH`` line is one line of a shell script, and a line break would start a command."""
    if _CONTROL.search(str(text)):
        raise SubmitError(f"{what}: {str(text)!r} contains a line break or another control character")
    return text


def parse_mem(value, source="--mem"):
    """``"64G"``, ``"64GB"``, ``"500M"``, ``"1.5T"`` or a number of GB -> GB (float)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)[bB]?\s*", str(value))
    if not m:
        raise SubmitError(f"{source}: memory {value!r} is not like 64G, 500M or 64 (GB)")
    factor = {"k": 1 / 1024 ** 2, "m": 1 / 1024, "g": 1, "": 1, "t": 1024}[m.group(2).lower()]
    gb = float(m.group(1)) * factor
    if gb <= 0:
        raise SubmitError(f"{source}: memory {value!r} must be positive")
    return gb


def _mem_string(gb):
    return f"{int(gb)}GB" if gb == int(gb) else f"{int(round(gb * 1024))}MB"


def job_name(text):
    """A job name made of letters, digits and ``_.+-`` only."""
    return _SAFE_NAME.sub("_", text).strip("_") or "job"


def slurm_parameters(res, name):
    """Parameters of submitit's ``SlurmExecutor`` (sbatch's names) for ``res``."""
    params = {"job_name": job_name(res.job_name or name), "time": res.timeout_min, "nodes": res.nodes,
              "ntasks_per_node": res.tasks, "array_parallelism": res.array_parallelism}
    if res.gpus_per_node > 0:
        params["gpus_per_node"] = res.gpus_per_node
    for key in ("cpus_per_task", "partition", "account", "qos", "constraint"):
        if getattr(res, key) is not None:
            params[key] = getattr(res, key)
    if res.mem is not None:
        params["mem"] = _mem_string(parse_mem(res.mem))
    return params


def submitit_command(folder, python=None):
    """The command the sbatch script runs through srun (what ``SlurmExecutor`` writes)."""
    python = shlex.quote(sys.executable) if python is None else python
    return " ".join([python, "-u -m submitit.core._submit", shlex.quote(str(folder))])


def sbatch_script(res, folder, name, count=1):
    """The sbatch script submitit writes for ``count`` runs (a job array when more than one)."""
    from submitit.slurm.slurm import _make_sbatch_string

    no_control_characters(folder, "job folder")
    params = slurm_parameters(res, name)
    if count > 1:
        params["map_count"] = count
    return _make_sbatch_string(command=submitit_command(folder), folder=folder, **params)


def check_cluster(res):
    """Fail early (one line) when ``res.cluster`` cannot run jobs from here."""
    import shutil

    if res.cluster == "slurm" and shutil.which("srun") is None:
        raise SubmitError("--cluster slurm: no SLURM here ('srun' is not on PATH); use --cluster local to run "
                          "on this machine, or --dry-run to see the sbatch script")


def make_executor(res, folder, name):
    """A submitit executor for ``res.cluster`` writing its files under ``folder`` (may contain ``%j``)."""
    if res.cluster == "slurm":
        from submitit import SlurmExecutor

        check_cluster(res)
        no_control_characters(folder, "job folder")
        executor = SlurmExecutor(folder=folder)
        executor.update_parameters(**slurm_parameters(res, name))
    elif res.cluster == "local":
        from submitit import LocalExecutor

        executor = LocalExecutor(folder=folder)
        executor.update_parameters(timeout_min=res.timeout_min, tasks_per_node=res.tasks,
                                   gpus_per_node=res.gpus_per_node, nodes=1)
    else:
        from submitit import DebugExecutor

        executor = DebugExecutor(folder=folder)
    return executor


# --------------------------------------------------------------------------------------- job callables

def job_distribution():
    """This task's place in its job: rank, world size, local rank and size, rendezvous URL.

    From submitit's ``JobEnvironment`` (SLURM or local tasks); a single process outside any job (the
    debug executor) is rank 0 of 1. The rendezvous is the job's first host (127.0.0.1 on one node) on a
    port derived from the job id, the same in every task of the job and after a requeue.
    """
    import submitit

    try:
        env = submitit.JobEnvironment()
        world, rank, local_rank = env.num_tasks, env.global_rank, env.local_rank
        nodes = max(1, env.num_nodes)
        hosts = list(env.hostnames)
        raw_id = env.raw_job_id
    except (RuntimeError, KeyError):
        return {"rank": 0, "world_size": 1, "local_rank": 0, "local_world_size": 1, "dist_url": None}
    master = "127.0.0.1" if nodes == 1 else hosts[0]
    digits = re.sub(r"\D", "", str(raw_id)) or "0"
    port = 20000 + int(digits) % 20000
    return {"rank": rank, "world_size": world, "local_rank": local_rank, "local_world_size": world // nodes,
            "dist_url": f"tcp://{master}:{port}"}


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


class _Job:
    """A checkpointable callable: runs in the submitting process's directory and datasets root."""

    module = None  # "python -m <module>" of the equivalent command line

    def __init__(self, argv, output_dir, resume=False, cwd=None, env=None):
        self.argv = [str(a) for a in argv]
        self.output_dir = output_dir
        self.resume = bool(resume)
        self.cwd = cwd or os.getcwd()
        self.env = dict(env) if env is not None else {k: os.environ[k] for k in CARRIED_ENV if k in os.environ}

    def _enter(self):
        os.chdir(self.cwd)
        os.environ.update(self.env)
        if os.environ.get("SUBMITIT_EXECUTOR") in ("slurm", "local"):  # submitit installed its signal handler
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

    def command_argv(self):
        """The equivalent command line (a list; :meth:`command` quotes it for a shell)."""
        flags = ["--resume"] if self.resume and "--resume" not in self.argv else []
        return [sys.executable, "-m", self.module, *flags, *self.argv]

    def command(self):
        return shlex.join(self.command_argv())

    def __repr__(self):
        return f"{type(self).__name__}({self.command()})"


class TransferJob(_Job):
    """``python -m transfer.train_net ARGV`` as one task of a job (``argv``: the final arguments,
    with the opts :func:`transfer.train_net.prepare` returned)."""

    module = "transfer.train_net"

    def __call__(self):
        self._enter()
        from detectron2.engine import default_argument_parser

        from transfer import train_net

        args = default_argument_parser().parse_args(self.argv)
        args.resume = args.resume or self.resume
        train_net.run_in_process_group(args, list(args.opts), **job_distribution())
        return os.path.join(self.output_dir, "results.json")


class PretrainJob(_Job):
    """``python -m pretrain.train ARGV`` as one task of a job; ``cfg_text`` is the config that
    :func:`pretrain.train.setup` built and checked in the submitting process (its SEED fixed)."""

    module = "pretrain.train"

    def __init__(self, argv, output_dir, cfg_text, resume=False, cwd=None, env=None):
        super().__init__(argv, output_dir, resume=resume, cwd=cwd, env=env)
        self.cfg_text = cfg_text

    def __call__(self):
        self._enter()
        from pretrain import distributed as du
        from pretrain import train

        cfg = train.load_config_text(self.cfg_text)
        d = job_distribution()
        host, port = "127.0.0.1", None
        if d["dist_url"]:
            host, port = d["dist_url"][len("tcp://"):].rsplit(":", 1)
        info = du.DistInfo(d["rank"], d["world_size"], d["local_rank"], d["local_world_size"], host,
                           int(port) if port else None, "submitit")
        train.run(cfg, num_gpus=1, resume=self.resume, dist_info=info)
        return os.path.join(self.output_dir, train.FINAL)


# ----------------------------------------------------------------------------------- preparing jobs

_DIST_FLAGS = {"--num-gpus": "gpus_per_node", "--num-machines": "nodes"}
_REFUSED_FLAGS = ("--machine-rank", "--dist-url")


def split_dist_flags(argv, prog):
    """Take ``--num-gpus N`` / ``--num-machines M`` out of a run's arguments: under a scheduler they are
    resources (``--gpus-per-node`` / ``--nodes`` unless those were given too)."""
    argv, out, implied = list(argv), [], {}
    i = 0
    while i < len(argv):
        token = argv[i]
        name, _, inline = token.partition("=")
        if name in _REFUSED_FLAGS:
            raise SubmitError(f"{prog}: {name} is set by the scheduler; drop it")
        if name in _DIST_FLAGS:
            value = inline if inline else (argv[i + 1] if i + 1 < len(argv) else "")
            try:
                implied[_DIST_FLAGS[name]] = int(value)
            except ValueError:
                raise SubmitError(f"{prog}: {name} needs an integer, got {value!r}") from None
            i += 1 if inline else 2
            continue
        out.append(token)
        i += 1
    return out, implied


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
    """Check a transfer run in this process and return its :class:`TransferJob` (nothing submitted)."""
    from detectron2.engine import default_argument_parser

    from transfer import train_net

    args = default_argument_parser().parse_args(argv)
    opts = train_net.prepare(args, res.world_size)
    opts = _absolute_opt(opts, "OUTPUT_DIR")
    flags = ["--config-file", args.config_file] + (["--eval-only"] if args.eval_only else [])
    flags += ["--resume"] if args.resume else []
    return TransferJob(flags + opts, _opt(opts, "OUTPUT_DIR"))


def prepare_pretrain(argv, res):
    """Check a pretraining run in this process and return its :class:`PretrainJob`."""
    from pretrain import train

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


def resolve_resources(resources=None, base=None, source="command line"):
    """``Resources`` from defaults (or ``base``) updated with ``resources`` (a dict of the values a user
    gave, None for not given, or a :class:`Resources`)."""
    if isinstance(resources, Resources):
        return resources
    return (base or Resources()).updated(resources or {}, source)


def plan_text(res, folder, name, jobs):
    """What a dry run prints: the sbatch script (SLURM) and the command line of every job."""
    lines = []
    if res.cluster == "slurm":
        lines += ["# sbatch script", sbatch_script(res, folder, name, count=len(jobs)).rstrip("\n"), ""]
    else:
        lines += [f"# --cluster {res.cluster}: {res.tasks} task(s) on this machine, no sbatch script", ""]
    lines.append(f"# command{'s' if len(jobs) > 1 else ''} (each task of a job runs it, as rank "
                 f"0..{res.world_size - 1} of {res.world_size})")
    for job in jobs:
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(job.env.items()))
        lines.append(f"cd {shlex.quote(job.cwd)} && {env + ' ' if env else ''}{job.command()}")
    return "\n".join(lines) + "\n"


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
    """Validate and submit ``python -m transfer.train_net ARGV``.

    ``resources``: a :class:`Resources`, or a dict of the resource values a user gave (the rest are
    defaults; ``--num-gpus``/``--num-machines`` in ``argv`` stand for ``gpus_per_node``/``nodes``).
    ``dry_run`` prints the sbatch script and the command and submits nothing; ``wait`` waits for the
    job. The debug cluster runs the job here, now. Returns the submitit job (None for a dry run)."""
    return _submit_one("transfer", argv, resources, dry_run, wait, out)


def submit_pretrain(argv, resources=None, dry_run=False, wait=False, out=print):
    """Validate and submit ``python -m pretrain.train ARGV`` (see :func:`submit_transfer`)."""
    return _submit_one("pretrain", argv, resources, dry_run, wait, out)


# ------------------------------------------------------------------------------------- job states

# SLURM job states (squeue's %T) -> the ledger's words; anything else means the job has ended
_SLURM_PENDING = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "RESIZING", "SUSPENDED",
                  "STOPPED", "RESV_DEL_HOLD"}
_SLURM_RUNNING = {"RUNNING", "COMPLETING", "SIGNALING", "STAGE_OUT"}


def job_paths(job_dir, job_id):
    """submitit's paths (stdout, stderr, result_pickle) of task 0 of ``job_id``."""
    from submitit.core.utils import JobPaths

    return JobPaths(job_dir, job_id=str(job_id), task_id=0)


def _squeue(job_ids):
    mains = sorted({str(j).split("_")[0] for j in job_ids})
    try:
        proc = subprocess.run(["squeue", "-h", "-r", "-t", "all", "-o", "%i|%T", "-j", ",".join(mains)],
                              capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    if proc.returncode != 0:
        if "Invalid job id" in proc.stderr:
            return {}  # none of them is known any more
        return None
    states = {}
    for line in proc.stdout.splitlines():
        if "|" in line:
            jid, state = line.strip().split("|", 1)
            states[jid] = state.split()[0] if state else ""
    return states


def _local_alive(pid):
    try:
        pid = int(pid)
        os.kill(pid, 0)
    except (ValueError, OSError):
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"submitit" in f.read()  # not a zombie, not a reused pid
    except OSError:
        return True  # no /proc: trust kill(0)


def job_states(cluster, job_ids):
    """``{job_id: (word, detail)}``: word is "pending", "running", "ended" or "unknown" (the scheduler
    could not be asked); detail is the scheduler's own state name."""
    job_ids = [str(j) for j in job_ids]
    if not job_ids:
        return {}
    if cluster == "slurm":
        states = _squeue(job_ids)
        if states is None:
            return {j: ("unknown", "squeue failed") for j in job_ids}
        result = {}
        for j in job_ids:
            raw = states.get(j)
            if raw is None:
                result[j] = ("ended", "not in the queue")
            elif raw in _SLURM_PENDING:
                result[j] = ("pending", raw)
            elif raw in _SLURM_RUNNING:
                result[j] = ("running", raw)
            else:
                result[j] = ("ended", raw)
        return result
    if cluster == "local":
        return {j: (("running", "RUNNING") if _local_alive(j) else ("ended", "FINISHED")) for j in job_ids}
    return {j: ("ended", "DEBUG") for j in job_ids}  # debug jobs run to their end when submitted


class _PlainUnpickler:
    """Reads submitit's result file ``(status, text)`` without importing anything it names."""

    @staticmethod
    def load(path):
        import pickle

        class Refuse(pickle.Unpickler):
            def find_class(self, module, name):
                raise pickle.UnpicklingError(f"{module}.{name}")

        with open(path, "rb") as f:
            return Refuse(f).load()


def job_error(job_dir, job_id):
    """The last line of a job's traceback (from submitit's result file, else its stderr log), or None."""
    paths = job_paths(job_dir, job_id)
    try:
        status, payload = _PlainUnpickler.load(paths.result_pickle)
        if status == "error" and isinstance(payload, str):
            lines = [line for line in payload.strip().splitlines() if line.strip()]
            return lines[-1].strip() if lines else None
        if status == "success":
            return None
    except Exception:  # noqa: BLE001 - absent, partial or not plain: fall back to the log
        pass
    try:
        with open(paths.stderr, errors="replace") as f:
            tail = f.read()[-20000:]
    except OSError:
        return None
    for line in reversed(tail.splitlines()):
        line = line.strip()
        if re.match(r"^([\w.]+(Error|Exception|Interrupt)|srun: error|slurmstepd.*(CANCELLED|error))", line):
            return line
    return None
