"""Talking to the scheduler through submitit: executors, the sbatch script, what a dry run prints, job states.

Three clusters, one code path:

- ``slurm``: submitit's ``SlurmExecutor`` writes an sbatch script and submits it; ``srun`` starts
  ``nodes x tasks_per_node`` tasks (one per GPU, or ``tasks_per_node`` gloo processes per node on
  CPU-only clusters); each task is one process of the run.
- ``local``: submitit's ``LocalExecutor`` starts the tasks on this machine (one node).
- ``debug``: submitit's ``DebugExecutor`` runs the job in this process, now (one task).

A job's state is asked from the scheduler (``squeue`` on SLURM, the job's process locally); why a job
failed is read from submitit's result file without unpickling anything it names, else from its log.

Before anything is submitted to SLURM, the GPUs a job asks for are compared with the partition's
nodes (``sinfo``'s GRES); a refusal of sbatch itself becomes one line too (:func:`submission`).
"""
import contextlib
import getpass
import io
import os
import pickle
import re
import shlex
import shutil
import subprocess
import sys

from transfer.launch.resources import SubmitError, no_control_characters, slurm_parameters

__all__ = ["check_cluster", "partition_gpus", "gres_gpus", "check_partition_gpus", "submission", "live_jobs_in",
           "make_executor", "submitit_command", "sbatch_script", "plan_text", "job_paths", "job_states",
           "job_error"]


def check_cluster(res, gres=True):
    """Fail early (one line) when ``res.cluster`` cannot run jobs from here, or (``gres``) when the SLURM
    partition's nodes lack the GPUs the job asks for (:func:`check_partition_gpus`)."""
    if res.cluster == "slurm" and shutil.which("srun") is None:
        raise SubmitError("--cluster slurm: no SLURM here ('srun' is not on PATH); use --cluster local to run "
                          "on this machine, or --dry-run to see the sbatch script")
    if gres:
        check_partition_gpus(res)


# ------------------------------------------------------------------------------- partitions and GPUs

_GPU_GRES = re.compile(r"(?:^|,)gpu(?::([A-Za-z0-9_.-]+))?(?::(\d+))?")


def gres_gpus(text):
    """GPUs per node in a GRES string of ``sinfo`` (``gpu:8``, ``gpu:a100:4(S:0-1)``, ``(null)``)."""
    total = 0
    for kind_or_count, count in _GPU_GRES.findall(str(text).strip()):
        if count:
            total += int(count)
        elif kind_or_count.isdigit():
            total += int(kind_or_count)
        else:
            total += 1
    return total


def _run(argv):
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout if proc.returncode == 0 else None


def partition_gpus():
    """``(gpus, gres, default)`` from ``sinfo``: the most GPUs a node of each partition has, the GRES
    strings it reported per partition, and the default partition (or None); None when sinfo cannot be asked."""
    text = _run(["sinfo", "-h", "-a", "-o", "%P|%G"])
    if text is None:
        return None
    gpus, gres, default = {}, {}, None
    for line in text.splitlines():
        name, sep, value = line.strip().partition("|")
        if not sep or not name:
            continue
        if name.endswith("*"):
            name = default = name[:-1]
        gpus[name] = max(gpus.get(name, 0), gres_gpus(value))
        gres.setdefault(name, [])
        if value.strip() not in gres[name]:
            gres[name].append(value.strip())
    return (gpus, gres, default) if gpus else None


def check_partition_gpus(res):
    """Refuse (one line) a SLURM job asking for more GPUs per node than the nodes of its partition have,
    as ``sinfo`` reports them, before sbatch is called. Unknown partitions and a silent ``sinfo`` pass
    (sbatch's own refusal is then turned into one line by :func:`submission`)."""
    if res.cluster != "slurm" or res.gpus_per_node <= 0:
        return
    info = partition_gpus()
    if info is None:
        return
    gpus, gres, default = info
    names = [n for n in (res.partition.split(",") if res.partition else [default]) if n]
    if not names or any(n not in gpus for n in names):
        return
    most = max(gpus[n] for n in names)
    if most >= res.gpus_per_node:
        return
    where = f"--partition {res.partition}" if res.partition else f"the default partition {default}"
    found = "; ".join(f"{n}: {', '.join(gres[n])}" for n in names)
    others = [f"{n} ({g} per node)" for n, g in sorted(gpus.items()) if g >= res.gpus_per_node]
    alt = f"a --partition with GPUs: {', '.join(others)}" if others else "no partition here has that many GPUs"
    asks = f"the job asks for {res.gpus_per_node} GPU(s) per node (--gpus-per-node; 1 unless given)"
    if most == 0:
        raise SubmitError(f"{where}: its nodes have no GPUs (sinfo GRES {found}), but {asks}; pass --gpus-per-node 0 "
                          f"for a CPU-only job (--tasks-per-node N for N processes per node), or {alt}")
    raise SubmitError(f"{where}: its nodes have at most {most} GPU(s) (sinfo GRES {found}), but {asks}; pass "
                      f"--gpus-per-node {most} or fewer, or {alt}")


# ------------------------------------------------------------------------------------ submitting

_TEMPORARY = re.compile(r"^([0-9a-f]{32}\.pkl|\.submission_file_[0-9a-f]{32}\.sh)$")


def _job_root(folder):
    """The folder submitit writes its temporary files to: ``folder`` up to its first ``%j`` component."""
    from submitit.core.utils import JobPaths

    return str(JobPaths.get_first_id_independent_folder(folder))


def _sbatch_reason(error):
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    picked = [line for line in lines if "error" in line.lower()] or lines or ["sbatch failed without a message"]
    return re.sub(r"^sbatch:\s*error:\s*", "", picked[-1])


@contextlib.contextmanager
def submission(res, folder):
    """Wrap the submission of jobs to ``res.cluster``: when sbatch refuses them (submitit's
    ``FailedJobError``), the temporary files submitit wrote under ``folder`` are removed and the refusal
    is one :class:`SubmitError` line, with what to pass for a GPU request the partition cannot satisfy.
    submitit's own echo of sbatch's error output is not printed (the line says it)."""
    if res.cluster != "slurm":
        yield
        return
    from submitit.core.utils import FailedJobError

    base = os.path.abspath(_job_root(folder))
    before = set(os.listdir(base)) if os.path.isdir(base) else set()
    top = None  # the outermost folder that submitit will create (base and its missing parents)
    probe = base
    while not os.path.isdir(probe) and os.path.dirname(probe) != probe:
        top, probe = probe, os.path.dirname(probe)
    echo = io.StringIO()
    try:
        with contextlib.redirect_stderr(echo):
            yield
    except FailedJobError as e:
        with contextlib.suppress(OSError):
            for name in set(os.listdir(base)) - before:
                if _TEMPORARY.match(name):
                    os.unlink(os.path.join(base, name))
            gone = base
            while top is not None and not os.listdir(gone):  # the folders created for it, when left empty
                os.rmdir(gone)
                if gone == top:
                    break
                gone = os.path.dirname(gone)
        reason = _sbatch_reason(e)
        hint = ""
        if "gres" in reason.lower() or "generic resource" in reason.lower():
            where = f"--partition {res.partition}" if res.partition else "the default partition"
            hint = (f"; the job asks for {res.gpus_per_node} GPU(s) per node on {where}: pass --gpus-per-node 0 for "
                    "a CPU-only job, or a --partition whose nodes have GPUs (sinfo -o '%P %G' lists them)")
        elif "partition" in reason.lower():
            hint = "; sinfo lists the partitions you can use"
        raise SubmitError(f"sbatch refused the job: {reason}{hint}") from None
    except BaseException:
        sys.stderr.write(echo.getvalue())
        raise
    else:
        sys.stderr.write(echo.getvalue())  # whatever else was said while submitting


def live_jobs_in(res, folder):
    """Ids of this user's jobs on ``res.cluster`` still queued or running whose files are under ``folder``
    (a sweep's job folder): SLURM jobs whose sbatch script lies there (``squeue``), local jobs whose
    process runs from there. None when SLURM cannot be asked."""
    base = os.path.abspath(_job_root(folder))
    if res.cluster == "slurm":
        try:
            user = getpass.getuser()
        except (KeyError, OSError):
            return None
        text = _run(["squeue", "-h", "-u", user, "-o", "%i|%o"])
        if text is None:
            return None
        ids = []
        for line in text.splitlines():
            jid, _, command = line.strip().partition("|")
            if command.startswith(base + os.sep):
                ids.append(jid)
        return ids
    if res.cluster == "local" and os.path.isdir("/proc"):
        ids = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            with contextlib.suppress(OSError):
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    argv = [a.decode(errors="replace") for a in f.read().split(b"\0")]
                # submitit's local job controller: python -m submitit.local._local JOB_FOLDER
                if "submitit.local._local" in argv and any(a.startswith(base + os.sep) for a in argv):
                    ids.append(pid)
        return ids
    return []


def make_executor(res, folder, name):
    """A submitit executor for ``res.cluster`` writing its files under ``folder`` (may contain ``%j``)."""
    if res.cluster == "slurm":
        from submitit import SlurmExecutor

        check_cluster(res, gres=False)
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


class _RefuseClasses(pickle.Unpickler):
    """Reads submitit's result file ``(status, text)`` without importing anything it names."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"{module}.{name}")


def job_error(job_dir, job_id):
    """The last line of a job's traceback (from submitit's result file, else its stderr log), or None."""
    paths = job_paths(job_dir, job_id)
    try:
        with open(paths.result_pickle, "rb") as f:
            status, payload = _RefuseClasses(f).load()
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
