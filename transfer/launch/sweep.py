"""Submitting a sweep: what is not done goes out as job arrays, and the ledger records it.

Running the same sweep again refreshes the states in the ledger (:mod:`transfer.launch.ledger`) and
submits only what is not done: runs never submitted, and failed runs (again, with ``--resume``);
pending and running jobs are never duplicated. On SLURM all runs of one submission form one job array
per resource group (transfer, pretrain, eval) with at most ``array_parallelism`` running at once;
locally, at most that many jobs run at once and ``--wait`` submits the rest as slots free up.

Runs that need a pretrained backbone wait for it: on SLURM they are submitted at once with a job
dependency on the pretraining job; locally and on the debug cluster, once the pretraining run is done.
A run the ledger does not know yet is adopted from its run folder (:func:`transfer.launch.ledger.adopt`):
finished runs are never run again, also when ``sweep.json`` was lost; ``rebuild_ledger`` sets an unreadable
ledger aside and builds a new one that way. A new ledger is refused while jobs of an earlier submission
still run from the sweep's job folder (they are not in it and would be submitted twice).

The runs of the checkpoints that pretraining runs keep for transfer curves enter as the checkpoints appear
(:mod:`transfer.launch.curves`): each submission looks for them, so does each round of ``--wait``, and so does
the curve watcher (:func:`watch_curves`, a job of its own on SLURM and locally).

The sweep file: :mod:`transfer.launch.sweep_file`; its runs: :mod:`transfer.launch.grid`.
"""
import contextlib
import dataclasses
import functools
import json
import os
import time

from pretrain.common.runs import LEDGER_FILE
from transfer.launch.curves import curve_runs, curve_templates, watch_runs, write_summary
from transfer.launch.grid import check_runs, expand, skipped_backbones
from transfer.launch.jobs import (ConvertJob, KNNEvalJob, LinearEvalJob, MIEstimateJob, PretrainStageJob, TransferJob,
                                  WatchJob)
from transfer.launch.ledger import (STARTED_FILE, STATES, Ledger, format_status, locked, now, refresh, run_is_done,
                                    set_aside, will_resume)
from transfer.launch.resources import Resources, SubmitError, resolve_resources
from transfer.launch.scheduler import check_cluster, job_paths, live_jobs_in, make_executor, plan_text, submission
from transfer.launch.sweep_fields import SweepError
from transfer.launch.submit import prepare_pretrain
from transfer.launch.sweep_file import load_sweep

__all__ = ["run_sweep", "select_runs", "count_waiting", "make_default_job", "resource_groups", "watch_curves"]

# resource flags of the command line that a curve watcher (one CPU task) does not take
_NOT_FOR_WATCHER = ("gpus_per_node", "tasks_per_node", "cpus_per_task", "mem")


def _wanted(record, retry_failed):
    return (retry_failed and record["state"] == "failed") or (record["state"] == "pending" and not record["job_id"])


def select_runs(ledger, runs, retry_failed=True, cluster=None, deps=None, ignore_deps=False):
    """The runs to submit now: never submitted, or failed (to resume) when ``retry_failed``, whose
    prerequisites are done; on SLURM also those whose prerequisites are queued or running (``deps``, a
    dict, receives ``run.id -> [job ids]`` to wait for)."""
    chosen = []
    for run in runs:
        record = ledger.add(run)
        if not _wanted(record, retry_failed):
            continue
        before = [ledger.record(rid) for rid in run.after]
        if ignore_deps or all(b is not None and b["state"] == "done" for b in before):
            chosen.append(run)
        elif cluster == "slurm" and all(b is not None and (b["state"] == "done" or (
                b["state"] in ("pending", "running") and b["job_id"])) for b in before):
            chosen.append(run)
            if deps is not None:
                deps[run.id] = [b["job_id"] for b in before if b["state"] != "done"]
    return chosen


def count_waiting(ledger, runs):
    """How many runs wait for a prerequisite that is not done."""
    n = 0
    for run in runs:
        record = ledger.record(run.id)
        if record and record["state"] != "done" and any(
                (ledger.record(rid) or {}).get("state") != "done" for rid in run.after):
            n += 1
    return n


def make_default_job(run, resume, resources=None, poll_s=30.0, configs_dir=None):
    """The job of ``run`` (a :class:`~transfer.launch.grid.Run`); ``resources``: group -> Resources (the
    pretraining config is checked for its job's processes); ``poll_s``, ``configs_dir``: a curve watcher's."""
    if run.kind == "pretrain":
        res = (resources or {}).get("pretrain") or Resources(cluster="debug", gpus_per_node=0)
        checked = prepare_pretrain(list(run.args), res)
        return PretrainStageJob(checked.argv, checked.output_dir, checked.cfg_text, convert=run.convert)
    if run.kind == "linear":
        return LinearEvalJob(run.argv, run.output_dir, resume=resume)
    if run.kind == "knn":
        return KNNEvalJob(run.argv, run.output_dir, resume=resume)
    if run.kind == "mi":
        return MIEstimateJob(run.argv, run.output_dir, resume=resume)
    if run.kind == "convert":
        return ConvertJob(run.argv, run.output_dir)
    if run.kind == "watch":
        sweep_file, root, backbone, given = run.argv
        step = functools.partial(watch_curves, sweep_file, root, backbone, resources=json.loads(given),
                                 poll_s=poll_s, configs_dir=configs_dir)
        return WatchJob(run.argv, run.output_dir, step)
    return TransferJob(run.argv, run.output_dir, resume=resume)


def _mark_submitted(record, job, res, job_dir, command):
    if record["job_id"]:
        record["history"].append({"job_id": record["job_id"], "cluster": record["cluster"],
                                  "state": record["state"], "error": record["error"],
                                  "submitted": record["submitted"]})
    paths = job_paths(job_dir, job.job_id)
    record.update(state="pending", cluster=res.cluster, job_id=str(job.job_id), job_dir=job_dir,
                  stdout=str(paths.stdout), stderr=str(paths.stderr), attempts=record["attempts"] + 1,
                  submitted=now(), ended=None, error=None, command=command)


def _submit(ledger, runs, res, job_dir, name, make_job, live_jobs, out, deps=None):
    """Submit ``runs``: one job array (on SLURM) per resource group and set of prerequisite jobs;
    record them in the ledger (saved by the caller). ``res``: a Resources, or a dict group -> Resources."""
    if not runs:
        return []
    by_group = res if isinstance(res, dict) else {"transfer": res, "pretrain": res, "eval": res, "watch": res}
    deps = deps or {}
    groups = {}
    for run in runs:
        groups.setdefault((run.group, tuple(deps.get(run.id, ()))), []).append(run)
    done = []
    for (group, after), members in groups.items():
        tag = "" if group == "transfer" else f"_{group}"
        try:
            done += _submit_group(ledger, members, by_group[group], job_dir, name + tag, make_job, live_jobs, out,
                                  after)
        except SubmitError:
            if done:  # the groups submitted before this one are queued: the ledger must know their jobs
                ledger.save()
            raise
    return done


def _submit_group(ledger, runs, res, job_dir, name, make_job, live_jobs, out, after=()):
    resumes = [will_resume(ledger.record(run.id)) for run in runs]
    jobs = [make_job(run, resume) for run, resume in zip(runs, resumes)]
    executor = make_executor(res, job_dir, name)
    if after and res.cluster == "slurm":
        executor.update_parameters(additional_parameters={"dependency": "afterok:" + ":".join(after),
                                                          "kill_on_invalid_dep": "yes"})
    if res.cluster == "debug":
        # one after the other in this process; the ledger is saved around each run
        for run, job, resume in zip(runs, jobs, resumes):
            submitted = executor.submit(job)
            record = ledger.record(run.id)
            _mark_submitted(record, submitted, res, job_dir, run.command(resume))
            record["state"] = "running"
            ledger.save()
            error = submitted.exception()
            if error is not None:
                record["error"] = (str(error).strip().splitlines() or [type(error).__name__])[-1]
                record["error"] = f"{type(error).__name__}: {record['error']}"
            record["state"] = "done" if run_is_done(record) else "failed"
            record["ended"] = now()
            if record["state"] == "failed" and not record["error"]:
                record["error"] = f"the job ended without {run.done_file}"
            ledger.save()
        return runs
    with submission(res, job_dir):  # sbatch's refusal: one line, no temporary files left
        if len(jobs) == 1:
            submitted = [executor.submit(jobs[0])]
        else:
            with executor.batch():
                submitted = [executor.submit(job) for job in jobs]
    for run, resume, sub in zip(runs, resumes, submitted):
        _mark_submitted(ledger.record(run.id), sub, res, job_dir, run.command(resume))
        live_jobs[str(sub.job_id)] = sub
    what = f"a job array of {len(runs)}" if res.cluster == "slurm" and len(runs) > 1 else f"{len(runs)} job(s)"
    first = str(submitted[0].job_id).split("_")[0]
    out(f"sweep {ledger.data['name']}: submitted {what} ({res.cluster}, job {first})")
    return runs


def _active(ledger, cluster):
    return sum(1 for r in ledger.runs
               if r["cluster"] == cluster and r["job_id"] and r["state"] in ("pending", "running"))


def _submit_round(ledger, runs, res, job_dir, name, make_job, live_jobs, out, retry_failed=True):
    """Submit what can go now; prerequisites first, so that (on SLURM) their dependants, selected in
    a second pass, can name their job ids. ``res``: a dict group -> Resources."""
    refresh(ledger, live_jobs)
    cluster = res["transfer"].cluster
    chosen = []
    for stage in (lambda r: not r.after, lambda r: bool(r.after)):
        deps = {}
        picked = select_runs(ledger, [r for r in runs if stage(r)], retry_failed, cluster, deps)
        if cluster == "local":  # no scheduler queues the rest: keep at most array_parallelism running
            picked = picked[:max(0, res["transfer"].array_parallelism - _active(ledger, "local"))]
        _submit(ledger, picked, res, job_dir, name, make_job, live_jobs, out, deps)
        ledger.save()
        chosen += picked
    return chosen


def _open_ledger(root, sweep, res, job_dir, rebuild=False, dry_run=False, out=print):
    """The sweep's ledger (under the root's lock unless ``dry_run``): ``rebuild`` first sets an unreadable
    one aside; a new ledger is refused while jobs of an earlier submission still run from ``job_dir``.
    ``dry_run``: the ledger as it is (or as it would be rebuilt), changing nothing on disk."""
    path = os.path.join(root, LEDGER_FILE)
    if rebuild and os.path.lexists(path):
        if dry_run:
            try:
                Ledger.load(root)
            except SweepError:
                return Ledger(root, {"name": sweep.name, "runs": []})
        moved = set_aside(root)  # refuses a ledger that loads
        out(f"sweep {sweep.name}: the unreadable ledger is kept as {moved}; a new one is built from the run folders")
    if dry_run:
        return Ledger.open(root, sweep) if os.path.lexists(path) else Ledger(root, {"name": sweep.name, "runs": []})
    if not os.path.lexists(path) and os.path.isdir(os.path.dirname(job_dir)):
        running = live_jobs_in(res, job_dir)
        if running:
            stop = "scancel" if res.cluster == "slurm" else "kill"
            raise SweepError(f"{path} is missing, but job(s) {', '.join(running)} of an earlier submission still run "
                             f"from {os.path.dirname(job_dir)}; wait for them to end (or {stop} {' '.join(running)}), "
                             "then submit again: finished runs are adopted from their folders")
    return Ledger.open(root, sweep)


def _report_adopted(ledger, known, out):
    fresh = [r for r in ledger.runs if r["id"] not in known and r.get("adopted")]
    resumed = sum(1 for r in fresh if r["adopted"] in STARTED_FILE.values())
    done = len(fresh) - resumed
    if done or resumed:
        out(f"sweep {ledger.data['name']}: adopted from their run folders: {done} finished run(s), recorded as done "
            f"(not run again)" + (f"; {resumed} with a checkpoint, continued from it" if resumed else ""))


def resource_groups(sweep, resources=None):
    """``{group: Resources}`` of a sweep's jobs from ``resources`` given on the command line (a dict: they win
    over the sweep file's ``resources``, which win over the defaults), or one :class:`Resources` for all.
    The pretrain and eval groups take their section's resources between the two; a curve watcher (watch)
    asks for one CPU task for the pretraining's time limit (or its ``curves: resources``) and takes no GPU,
    task, CPU or memory flag of the command line."""
    where = f"{sweep.path}: resources"
    if isinstance(resources, Resources):
        groups = dict.fromkeys(("transfer", "pretrain", "eval"), resources)
        groups["watch"] = dataclasses.replace(resources, gpus_per_node=0, tasks_per_node=1)
        return groups
    base = resolve_resources(sweep.resources, source=where)
    groups = {"transfer": resolve_resources(resources, base=base)}
    for group, extra in (("pretrain", sweep.pretrain_resources), ("eval", sweep.eval_resources)):
        # the command line wins over the section's resources, which win over the sweep's
        section = resolve_resources(extra, base=base, source=f"{sweep.path}: {group} resources")
        groups[group] = resolve_resources(resources, base=section)
    watcher = resolve_resources({"gpus_per_node": 0, "tasks_per_node": 1, "cpus_per_task": 1,
                                 "timeout_min": groups["pretrain"].timeout_min}, base=base)
    if sweep.curves is not None:
        watcher = resolve_resources(sweep.curves.resources, base=watcher, source=f"{sweep.path}: curves resources")
    given = {k: v for k, v in (resources or {}).items() if k not in _NOT_FOR_WATCHER}
    groups["watch"] = resolve_resources(given, base=watcher)
    return groups


def _resources_text(resources):
    """The resources given on the command line as JSON (what a curve watcher resolves again)."""
    if isinstance(resources, Resources):
        resources = dataclasses.asdict(resources)
    return json.dumps({k: v for k, v in (resources or {}).items() if v is not None}, sort_keys=True)


def _job_dir(res, root):
    return os.path.join(os.path.abspath(res.job_dir) if res.job_dir else os.path.join(root, "submitit"), "%j")


def run_sweep(sweep_file, output_root=None, resources=None, dry_run=False, wait=False, poll_s=30.0,
              timeout_s=None, make_job=None, check=True, configs_dir=None, out=print, rebuild_ledger=False):
    """Expand ``sweep_file``, check every run, submit what is not done, record it in the ledger.

    ``resources``: a dict of resource values given on the command line (they win over the sweep
    file's ``resources``, which win over the defaults), or a :class:`Resources`. ``output_root``
    defaults to ``./output/sweeps/<name>``. ``dry_run`` prints the sbatch script and the commands of
    what would be submitted. ``wait`` waits (polling every ``poll_s`` s, at most ``timeout_s``) until
    every run is done or failed. ``make_job(run, resume)`` builds the submitted callable (default: a
    :class:`~transfer.launch.jobs.TransferJob`). ``rebuild_ledger``: set an unreadable ``sweep.json``
    aside and build a new ledger from the run folders. Returns the ledger (None for a dry run).
    """
    sweep = load_sweep(sweep_file, configs_dir)
    groups = resource_groups(sweep, resources)
    res = groups["transfer"]
    make_job = make_job or functools.partial(make_default_job, resources=groups, poll_s=poll_s, configs_dir=configs_dir)
    root = os.path.abspath(output_root or os.path.join("output", "sweeps", sweep.name))
    runs = expand(sweep, root)
    if res.cluster != "debug":  # debug jobs run in this process: the sweep submits the curves' runs itself
        runs += watch_runs(sweep, root, _resources_text(resources))
    for backbone, reason in skipped_backbones(sweep).items():
        out(f"sweep {sweep.name}: {backbone} is left out of the Detectron2 tasks ({reason})")
    if check:
        check_runs(runs + curve_templates(sweep, root), res, groups)
    job_dir = _job_dir(res, root)
    name = res.job_name or sweep.name

    if dry_run:
        ledger = refresh(_open_ledger(root, sweep, res, job_dir, rebuild_ledger, dry_run=True, out=out))
        chosen = select_runs(ledger, runs, ignore_deps=True)
        out(f"# sweep {sweep.name}: {len(runs)} runs, {len(chosen)} to submit; ledger {ledger.path}")
        if chosen:
            jobs = [make_job(run, will_resume(ledger.record(run.id))) for run in chosen]
            out(plan_text(res, job_dir, name, jobs), end="")
        return None

    for group in sorted({run.group for run in runs}):  # every job's cluster and GPUs, before anything is written
        check_cluster(groups[group])
    # a damaged ledger, or a done file that is not its run's, is refused before anything is written (the lock too)
    select_runs(_open_ledger(root, sweep, res, job_dir, rebuild_ledger, dry_run=True, out=lambda *a, **k: None),
                runs, ignore_deps=True)
    live_jobs = {}
    with locked(root):
        ledger = _open_ledger(root, sweep, res, job_dir, rebuild_ledger, out=out)
        known = {r["id"] for r in ledger.runs}
        retry = True
        # debug: each round runs its jobs here, and the checkpoints they keep bring the curves' runs of the next
        while _submit_round(ledger, runs + curve_runs(sweep, root), groups, job_dir, name, make_job, live_jobs, out,
                            retry_failed=retry) and res.cluster == "debug" and sweep.curves is not None:
            retry = False
    _report_adopted(ledger, known, out)
    counts = ledger.counts()
    blocked = count_waiting(ledger, runs)
    out(f"sweep {sweep.name}: " + ", ".join(f"{counts[s]} {s}" for s in STATES) + f"; ledger {ledger.path}"
        + (f"; {blocked} wait for their pretraining (submitted as it finishes: --wait, or run this again)"
           if blocked and res.cluster != "slurm" else ""))
    if wait and res.cluster == "debug":
        out(format_status(ledger))
    elif wait:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            with locked(root):
                ledger = Ledger.open(root, sweep)
                now_runs = runs + curve_runs(sweep, root)
                if res.cluster == "local" or sweep.curves is not None:
                    # the runs not yet submitted, as slots free up or checkpoints appear (failures are retried
                    # by the next sweep command)
                    _submit_round(ledger, now_runs, groups, job_dir, name, make_job, live_jobs, out,
                                  retry_failed=False)
                else:
                    refresh(ledger, live_jobs)
                    ledger.save()
            ids = {run.id for run in now_runs}
            mine = [r for r in ledger.runs if r["id"] in ids]
            failed = {r["id"] for r in mine if r["state"] == "failed"}
            # a run whose prerequisite failed cannot start in this command: it counts as finished here
            stuck = {run.id for run in now_runs if any(a in failed for a in run.after)}
            if all(r["state"] in ("done", "failed") or r["id"] in stuck for r in mine):
                break
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"sweep {sweep.name}: runs still pending or running after {timeout_s} s")
            time.sleep(poll_s)
        out(format_status(ledger))
    return ledger


# ------------------------------------------------------------------------------------ the curve watcher

@contextlib.contextmanager
def _outside_slurm_job():
    """Without this job's ``SLURM_*`` variables (``SLURM_CONF`` aside) while submitting from inside a job: a job
    inherits the submitter's environment, and stale values (``SLURM_MEM_PER_CPU`` next to the new job's
    ``SLURM_MEM_PER_NODE``, task counts) make its ``srun`` fail or misread its shape."""
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("SLURM_") and k != "SLURM_CONF"}
    try:
        yield
    finally:
        os.environ.update(saved)


def _unsubmitted(ledger, runs):
    """Runs that are neither done nor submitted and could still go (no prerequisite has failed)."""
    failed = {r["id"] for r in ledger.runs if r["state"] == "failed"}
    left = []
    for run in runs:
        record = ledger.record(run.id)
        if record and record["state"] != "done" and not record["job_id"] and not any(a in failed for a in run.after):
            left.append(run)
    return left


def watch_curves(sweep_file, root, backbone, resources=None, poll_s=30.0, configs_dir=None, out=print):
    """The curve watcher of ``pretrain/<backbone>`` (:mod:`transfer.launch.curves`; the job of the ledger's
    ``pretrain/<backbone>/curves``): every ``poll_s`` s, under the ledger's lock, submit the runs of the
    checkpoints the pretraining run has kept, as ``submit.py sweep`` does (``resources``: the command line's,
    resolved as the sweep did). Returns once the pretraining run has ended and every run of its checkpoints is
    submitted or done (or waits on a failed conversion): the path of ``curves.json`` when the pretraining is
    done, else None (it failed; the next ``submit.py sweep`` resubmits both)."""
    sweep = load_sweep(sweep_file, configs_dir)
    groups = resource_groups(sweep, resources)
    make_job = functools.partial(make_default_job, resources=groups, poll_s=poll_s, configs_dir=configs_dir)
    root = os.path.abspath(root)
    job_dir, name = _job_dir(groups["transfer"], root), groups["transfer"].job_name or sweep.name
    live_jobs, seen = {}, None
    while True:
        with locked(root):
            if not os.path.lexists(os.path.join(root, LEDGER_FILE)):  # never a new ledger: it follows a sweep's
                raise SweepError(f"{root}: no sweep ledger ({LEDGER_FILE}); a curve watcher follows a submitted sweep")
            ledger = Ledger.open(root, sweep)
            refresh(ledger, live_jobs)
            record = ledger.record(f"pretrain/{backbone}")
            # the state is read before the checkpoints are listed: none written before the end is missed
            ended = record is None or record["state"] in ("done", "failed")
            done = record is not None and record["state"] == "done"
            runs = curve_runs(sweep, root, [backbone])
            with _outside_slurm_job():
                _submit_round(ledger, runs, groups, job_dir, name, make_job, live_jobs, out, retry_failed=False)
            left = _unsubmitted(ledger, runs)
        if (len(runs), len(left)) != seen:
            seen = (len(runs), len(left))
            out(f"curves of {backbone}: {len(runs)} run(s) of {len({r.backbone for r in runs})} checkpoint(s), "
                f"{len(left)} not submitted yet", flush=True)
        if ended and not left:
            return write_summary(sweep, root, backbone, runs) if done else None
        time.sleep(poll_s)
