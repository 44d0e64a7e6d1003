"""A sweep's ledger ``ROOT/sweep.json``: every run, its job and its state (format in docs/artifacts.md).

A record holds the run's output dir, state (``pending|running|done|failed``), job id, log paths,
attempts and the last error. The ledger is rewritten atomically, under a lock (``ROOT/.sweep.lock``),
after every change. :func:`refresh` updates the states: a run whose done file (``results.json``,
``weights.pkl``, ``mi.json``) exists is done; otherwise the scheduler says whether its job is queued,
running or ended (``squeue`` on SLURM, the job's process locally).

The run folders are the truth: a run the ledger does not know yet (a new or rebuilt ledger, a grid that
grew) is *adopted* from its folder: with its done file (checked to be that run's) it is done and never
runs again; a transfer run with a checkpoint continues from it (``--resume``). A ledger that cannot be
read, or whose records lack keys, is refused in one line that says how to rebuild it from the run
folders (``submit.py sweep SWEEP.yaml --rebuild-ledger``, :func:`set_aside`).
"""
import contextlib
import datetime
import json
import os
import re

from pretrain.common.fileio import write_json_atomic
from pretrain.common.runs import LEDGER_FILE, MI_FILE, RESULTS_FILE, run_id
from transfer.launch.scheduler import job_error, job_states
from transfer.launch.sweep_fields import SweepError

__all__ = ["STATES", "LOCK_FILE", "STARTED_FILE", "Ledger", "locked", "now", "run_is_done", "will_resume", "refresh", "sweep_status",
           "format_status", "rebuild_hint", "set_aside"]

STATES = ("pending", "running", "done", "failed")
LOCK_FILE = ".sweep.lock"
# Detectron2's checkpointer names a transfer run's last checkpoint in this file of its output dir
STARTED_FILE = {"transfer": "last_checkpoint"}
# the keys every record needs, and the types their values may have (None: not yet submitted)
_RECORD_KEYS = {"id": (str,), "output_dir": (str,), "state": (str,), "cluster": (str, type(None)),
                "job_id": (str, type(None)), "job_dir": (str, type(None)), "attempts": (int,),
                "submitted": (str, type(None)), "ended": (str, type(None)), "error": (str, type(None)),
                "history": (list,)}


def now():
    """The time of a ledger entry: UTC, ISO 8601, to the second."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class Ledger:
    """``ROOT/sweep.json``: ``{"name", "sweep_file", "root", "created", "updated", "runs": [record]}``.

    A record: ``id``, ``task``, ``backbone``, ``weights``, ``mode``, ``seed``, ``output_dir``, ``state``,
    ``cluster``, ``job_id``, ``job_dir``, ``stdout``, ``stderr``, ``attempts``, ``submitted``, ``ended``,
    ``error``, ``command``, ``history`` (earlier attempts: job id, cluster, state, error) and ``adopted``
    (the run-folder file the record was adopted from, or None).
    """

    def __init__(self, root, data):
        self.root = root
        self.path = os.path.join(root, LEDGER_FILE)
        self.data = data

    @classmethod
    def load(cls, root):
        """The ledger of ``root``, checked (:func:`check_ledger`); raises :class:`SweepError` (one line)."""
        path = os.path.join(root, LEDGER_FILE)
        try:
            with open(path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            raise SweepError(f"no sweep ledger in {root} (expected {path}); submit a sweep there first") from None
        except OSError as e:
            raise SweepError(f"{path}: cannot read the ledger: {e.strerror or e}") from None
        try:
            data = json.loads(raw)
        except ValueError as e:
            kind = "empty" if not raw.strip() else f"truncated or not JSON ({e})"
            raise SweepError(f"{path}: the ledger is {kind}; {rebuild_hint(root, raw)}") from None
        check_ledger(data, path, root, raw)
        return cls(root, data)

    @classmethod
    def open(cls, root, sweep):
        """The ledger in ``root``, or a new one for ``sweep``; refuses another sweep's ledger."""
        if os.path.lexists(os.path.join(root, LEDGER_FILE)):
            ledger = cls.load(root)
            if ledger.data.get("name") != sweep.name:
                raise SweepError(f"{ledger.path} belongs to sweep {ledger.data.get('name')!r}, not {sweep.name!r}; "
                                 "use another --output-root")
            ledger.data["sweep_file"] = sweep.path
            return ledger
        return cls(root, {"version": 1, "name": sweep.name, "sweep_file": sweep.path, "root": root,
                          "created": now(), "updated": None, "runs": []})

    @property
    def runs(self):
        return self.data["runs"]

    def record(self, rid):
        return next((r for r in self.runs if r["id"] == rid), None)

    def add(self, run):
        """The record of ``run`` (a :class:`~transfer.launch.grid.Run`); a new one is adopted from the run's
        folder (:func:`adopt`): done when its done file is there, else pending."""
        record = self.record(run.id)
        if record is None:
            record = {"id": run.id, "kind": run.kind, "task": run.task, "backbone": run.backbone,
                      "weights": run.weights, "mode": run.mode, "seed": run.seed, "output_dir": run.output_dir,
                      "done_file": run.done_file, "after": list(run.after), "state": "pending",
                      "cluster": None, "job_id": None, "job_dir": None, "stdout": None, "stderr": None,
                      "attempts": 0, "submitted": None, "ended": None, "error": None, "command": None,
                      "history": [], "adopted": None}
            adopt(record, run)
            self.runs.append(record)
        return record

    def adopted(self):
        """The records taken over from their run folders as done."""
        return [r for r in self.runs if r.get("adopted") and r["state"] == "done"]

    def counts(self):
        counts = dict.fromkeys(STATES, 0)
        for record in self.runs:
            counts[record["state"]] = counts.get(record["state"], 0) + 1
        return counts

    def save(self):
        self.data["updated"] = now()
        write_json_atomic(self.path, self.data)


@contextlib.contextmanager
def locked(root):
    """An exclusive lock on the sweep root (one submitter at a time)."""
    import fcntl

    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, LOCK_FILE), "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _done_file(record):
    return record.get("done_file") or RESULTS_FILE


def run_is_done(record):
    """Whether the run of ``record`` has left its done file."""
    return os.path.isfile(os.path.join(record["output_dir"], _done_file(record)))


def rebuild_hint(root, raw=b""):
    """How to recover from a ledger that cannot be used (the sweep file named when it can be read)."""
    sweep_file = None
    m = re.search(rb'"sweep_file"\s*:\s*("(?:[^"\\]|\\.)*")', raw or b"")
    if m:
        with contextlib.suppress(ValueError):
            sweep_file = json.loads(m.group(1))
    return (f"rebuild it from the run folders with: submit.py sweep {sweep_file or 'SWEEP.yaml'} --output-root "
            f"{root} --rebuild-ledger (finished runs are adopted as done; the old file is kept beside it)")


def check_ledger(data, path, root, raw=b""):
    """Refuse (one line naming the entry) a ledger whose structure or records the code cannot use."""
    hint = rebuild_hint(root, raw)
    if not isinstance(data, dict) or not isinstance(data.get("runs"), list):
        raise SweepError(f"{path}: not a sweep ledger (no 'runs' list); {hint}")
    if not isinstance(data.get("name"), str):
        raise SweepError(f"{path}: the ledger has no sweep 'name'; {hint}")
    seen = set()
    for i, record in enumerate(data["runs"]):
        if not isinstance(record, dict):
            raise SweepError(f"{path}: run entry {i} is not a record ({type(record).__name__}); {hint}")
        what = f"run entry {i}" + (f" ({record['id']})" if isinstance(record.get("id"), str) else "")
        missing = [k for k in _RECORD_KEYS if k not in record]
        if missing:
            raise SweepError(f"{path}: {what} lacks {', '.join(repr(k) for k in missing)}; {hint}")
        for key, types in _RECORD_KEYS.items():
            if not isinstance(record[key], types) or (key == "attempts" and isinstance(record[key], bool)):
                expected = " or ".join("null" if t is type(None) else t.__name__ for t in types)
                raise SweepError(f"{path}: {what}: {key!r} is {record[key]!r} (expected {expected}); {hint}")
        if record["state"] not in STATES:
            raise SweepError(f"{path}: {what}: state {record['state']!r} is not one of {', '.join(STATES)}; {hint}")
        if record["id"] in seen:
            raise SweepError(f"{path}: {what}: a second entry for the same run; {hint}")
        seen.add(record["id"])


def set_aside(root):
    """Move an unusable ``ROOT/sweep.json`` to ``sweep.json.broken-<UTC time>`` (kept for inspection) so
    that a new ledger is built from the run folders; returns its new path. Refuses a ledger that loads:
    it knows the jobs still queued or running, and a rebuilt one would not."""
    path = os.path.join(root, LEDGER_FILE)
    try:
        ledger = Ledger.load(root)
    except SweepError:
        pass
    else:
        raise SweepError(f"--rebuild-ledger: {path} is a valid ledger ({len(ledger.runs)} runs) and is kept: it "
                         "knows which jobs are still queued or running; only an unreadable ledger is rebuilt")
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    target = f"{path}.broken-{stamp}"
    n = 1
    while os.path.lexists(target):
        n += 1
        target = f"{path}.broken-{stamp}-{n}"
    os.replace(path, target)
    return target


def _done_problem(run, path):
    """Why the done file at ``path`` is not a finished result of ``run`` (None: it is)."""
    if os.path.getsize(path) == 0:
        return "is empty"
    if run.done_file not in (RESULTS_FILE, MI_FILE):
        return None  # a pretraining checkpoint or weights: written atomically by the run itself
    try:
        with open(path) as f:
            data = json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        return f"is not valid JSON ({e})"
    if not isinstance(data, dict):
        return "is not a JSON object"
    if run.done_file == MI_FILE:
        if data.get("backbone") != run.backbone or not isinstance(data.get("mi_nats"), (int, float)):
            return f"is not an MI estimate of backbone {run.backbone} (backbone {data.get('backbone')!r})"
        return None
    try:
        found = run_id(data["task"], data["backbone"], data["mode"], data["seed"])
    except (KeyError, TypeError, ValueError):
        return "lacks the task, backbone, mode and seed of a results record"
    if found != run.id or not isinstance(data.get("metrics"), dict):
        return f"holds the results of {found}" if found != run.id else "has no metrics"
    return None


def adopt(record, run):
    """Take a run that the ledger did not know from its folder: with its done file it is done (raises
    :class:`SweepError` when that file is not this run's finished result: it is never overwritten); a
    transfer run with a checkpoint stays pending and will resume from it."""
    path = os.path.join(run.output_dir, run.done_file)
    if os.path.isfile(path):
        problem = _done_problem(run, path)
        if problem:
            raise SweepError(f"{path} {problem}: not a finished result of run {run.id}, and it is never "
                             "overwritten; move it away to run it again (or use another --output-root)")
        ended = datetime.datetime.fromtimestamp(os.path.getmtime(path), datetime.timezone.utc)
        record.update(state="done", adopted=run.done_file, ended=ended.strftime("%Y-%m-%dT%H:%M:%SZ"))
        return record
    started = STARTED_FILE.get(run.kind)
    if started and os.path.isfile(os.path.join(run.output_dir, started)):
        record["adopted"] = started
    return record


def will_resume(record):
    """Whether the next job of ``record`` continues from the run's checkpoint: it ran before, or it was
    adopted from a folder holding a checkpoint."""
    return record["attempts"] > 0 or record.get("adopted") in STARTED_FILE.values()


def refresh(ledger, live_jobs=None):
    """Update every record's state from its done file and the scheduler; returns the ledger.

    A run with its done file is done. A submitted run whose job is queued or running is pending or
    running; one whose job has ended without it failed (with the job's last error line). When the
    scheduler cannot be asked, or reports a transient state (PREEMPTED while it requeues), the recorded
    state stays. ``live_jobs``: submitit jobs of this process by id (polled, so that local jobs that
    ended are reaped).
    """
    for job in (live_jobs or {}).values():
        with contextlib.suppress(Exception):
            job.done()
    by_cluster = {}
    for record in ledger.runs:
        if record["job_id"] and record["state"] in ("pending", "running") and not run_is_done(record):
            by_cluster.setdefault(record["cluster"], []).append(record["job_id"])
    states = {cluster: job_states(cluster, ids) for cluster, ids in by_cluster.items()}
    for record in ledger.runs:
        if run_is_done(record):
            if record["state"] != "done":
                record["state"], record["error"] = "done", None
                record["ended"] = record["ended"] or now()
            continue
        if not record["job_id"]:
            if record["state"] != "failed":
                record["state"] = "pending"  # not submitted yet
            continue
        if record["state"] not in ("pending", "running"):
            if record["state"] == "done":  # the done file was removed: run it again
                record["state"] = "failed"
                record["error"] = f"{_done_file(record)} is gone"
            continue
        word, detail = states.get(record["cluster"], {}).get(record["job_id"], ("unknown", ""))
        if word in ("pending", "running"):
            record["state"] = word
        elif word == "ended" and detail != "PREEMPTED":
            record["state"] = "failed"
            record["ended"] = now()
            reason = job_error(record["job_dir"], record["job_id"]) if record["job_dir"] else None
            record["error"] = reason or f"job {record['job_id']} ended ({detail}) without {_done_file(record)}"
    return ledger


def sweep_status(root, save=True):
    """The ledger of ``root`` with refreshed states (written back when ``save`` and possible)."""
    root = os.path.abspath(root)
    if not os.path.isfile(os.path.join(root, LEDGER_FILE)):
        raise SweepError(f"no sweep ledger in {root} (expected {os.path.join(root, LEDGER_FILE)})")
    if not save:
        return refresh(Ledger.load(root))
    try:
        with locked(root):
            ledger = refresh(Ledger.load(root))
            ledger.save()
    except PermissionError:
        ledger = refresh(Ledger.load(root))
    return ledger


def format_status(ledger):
    """A table of the ledger: state, job id and attempts per run; failures with their log path."""
    runs = ledger.runs
    counts = ledger.counts()
    lines = [f"sweep {ledger.data.get('name')}: {len(runs)} runs: "
             + ", ".join(f"{counts[s]} {s}" for s in STATES) + f" ({ledger.path})"]
    if runs:
        width = max(len("RUN"), *(len(r["id"]) for r in runs))
        jw = max(len("JOB"), *(len(str(r["job_id"] or "-")) for r in runs))
        lines.append(f"{'RUN':<{width}}  {'STATE':<8}  {'JOB':<{jw}}  TRIES")
        for r in runs:
            lines.append(f"{r['id']:<{width}}  {r['state']:<8}  {str(r['job_id'] or '-'):<{jw}}  {r['attempts']}")
    failed = [r for r in runs if r["state"] == "failed"]
    if failed:
        lines.append("failed:")
        for r in failed:
            log = r.get("stderr") or "-"
            lines.append(f"  {r['id']}: {r.get('error') or 'unknown error'} (log: {log})")
    return "\n".join(lines)
