"""Sweeps: a grid of transfer runs (backbone x task x mode x seed), job arrays, and their ledger.

A sweep file (``configs/sweeps/*.yaml``)::

    name: infomin_table2                 # letters, digits, _.+-
    backbones: {infomin: weights/infomin_R_50.pkl, random: ""}   # "" = random initialisation
    tasks: [coco_mask_rcnn_R_50_FPN_1x]  # config names under configs/transfer (or paths to YAML files)
    modes: [finetune, frozen]
    seeds: [0, 1]
    overrides: [KEY, VALUE, ...]         # applied to every run (optional)
    resources: {partition: gpu, gpus_per_node: 8}   # defaults for the resource flags (optional)

Every run writes to ``ROOT/<task>/<backbone>/<mode>/seed<k>/`` (its ``OUTPUT_DIR``; ``results.json``
there marks it done) and gets ``TRANSFER.BACKBONE_NAME <backbone>``, ``TRANSFER.MODE``, ``SEED`` and
``MODEL.WEIGHTS`` from the grid; ``overrides`` may not set those. The file and every run's config and
datasets are checked before anything is submitted (:class:`SweepError`, one line).

The ledger ``ROOT/sweep.json`` (DESIGN.md artifact 5) records every run: its output dir, state
(``pending|running|done|failed``), job id, log paths, attempts and the last error. It is rewritten
atomically, under a lock (``ROOT/.sweep.lock``), after every change. Running the same sweep again
refreshes the states (``squeue`` on SLURM, the job's process locally, ``results.json`` everywhere) and
submits only what is not done: runs never submitted, and failed runs (again, with ``--resume``);
pending and running jobs are never duplicated. On SLURM all runs of one submission form one job
array with at most ``array_parallelism`` running at once; locally, at most that many jobs run at
once and ``--wait`` submits the rest as slots free up.

A sweep can also pretrain its backbones and evaluate them on frozen features (linear evaluation,
mutual-information estimation): the ``pretrain`` and ``evaluations`` sections, see
:mod:`transfer.pipeline`. Runs that need a pretrained backbone wait for it (SLURM: job dependencies).
"""
import contextlib
import dataclasses
import datetime
import functools
import json
import os
import re
import time


from transfer.fileio import write_json_atomic
from transfer.yamlio import read_yaml
from transfer.submit import (Resources, SubmitError, TransferJob, check_cluster, job_error, job_paths,
                             job_states, make_executor, plan_text, resolve_resources)

__all__ = ["SweepError", "Sweep", "Run", "Ledger", "STATES", "LEDGER", "GRID_KEYS", "load_sweep", "expand",
           "check_runs", "run_sweep", "refresh", "sweep_status", "format_status", "CONFIGS_DIR"]

STATES = ("pending", "running", "done", "failed")
LEDGER = "sweep.json"
LOCK = ".sweep.lock"
MODES = ("finetune", "frozen")
SWEEP_KEYS = ("name", "backbones", "tasks", "modes", "seeds", "overrides", "resources", "pretrain", "evaluations")
GRID_KEYS = ("OUTPUT_DIR", "SEED", "TRANSFER.MODE", "MODEL.WEIGHTS", "TRANSFER.BACKBONE_NAME")
CONFIGS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "transfer")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


class SweepError(ValueError):
    """A sweep file, ledger or output root that cannot be used, explained in one line."""


# ------------------------------------------------------------------------------------------ the file

@dataclasses.dataclass
class Sweep:
    name: str
    path: str
    backbones: dict  # name -> weights path ("" = random initialisation)
    tasks: list      # config names
    modes: list
    seeds: list
    overrides: list
    resources: dict
    config_files: dict  # task -> config file
    pretrain: dict = dataclasses.field(default_factory=dict)   # name -> pipeline.PretrainSpec
    pretrain_resources: dict = dataclasses.field(default_factory=dict)
    linear: list = dataclasses.field(default_factory=list)    # [pipeline.LinearSpec]
    mi: list = dataclasses.field(default_factory=list)        # [pipeline.MISpec]
    eval_resources: dict = dataclasses.field(default_factory=dict)


def _task_config(task, configs_dir, where):
    if task.endswith((".yaml", ".yml")) or os.sep in task:
        path = os.path.abspath(task)
    else:
        path = os.path.join(configs_dir, task + ".yaml")
    if not os.path.isfile(path):
        known = sorted(f[:-5] for f in os.listdir(configs_dir) if f.endswith(".yaml") and not f.startswith("Base-")) \
            if os.path.isdir(configs_dir) else []
        hint = f" (e.g. {', '.join(known[:3])}, ...; see {configs_dir})" if known else ""
        raise SweepError(f"{where}: unknown task {task!r}: no config {path}{hint}")
    return path


def _task_stem(task):
    """The task name of a config name or file: the file name without .yaml (``lvis_v0.5_...`` keeps its dot)."""
    base = os.path.basename(task)
    for ext in (".yaml", ".yml"):
        if base.endswith(ext):
            return base[:-len(ext)]
    return base


def _list(data, key, where, kind):
    value = data.get(key)
    if value is None or value == []:
        raise SweepError(f"{where}: '{key}' is missing or empty (a list of {kind})")
    if not isinstance(value, list):
        value = [value]
    return value


def load_sweep(path, configs_dir=None, check_weights=True):
    """Read and check a sweep file (no config is built here; see :func:`check_runs`).

    ``check_weights`` False accepts weights files that do not exist yet (to inspect a sweep whose
    paths are placeholders)."""
    configs_dir = configs_dir or CONFIGS_DIR
    if not os.path.isfile(path):
        raise SweepError(f"sweep file not found: {path}")
    data = read_yaml(path, SweepError)
    if not isinstance(data, dict):
        raise SweepError(f"{path}: expected a mapping with keys {', '.join(SWEEP_KEYS)}")
    unknown = sorted(set(data) - set(SWEEP_KEYS))
    if unknown:
        raise SweepError(f"{path}: unknown key(s) {', '.join(map(str, unknown))}; known: {', '.join(SWEEP_KEYS)}")

    name = data.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise SweepError(f"{path}: 'name' must be letters, digits and _.+- (got {name!r})")

    from transfer.pipeline import parse_evaluations, parse_pretrain

    pretrain, pretrain_resources = parse_pretrain(data.get("pretrain"), path, lambda n: bool(_NAME.match(n)))
    linear, mi, eval_resources = parse_evaluations(data.get("evaluations"), path)
    backbones = data.get("backbones")
    if backbones is None and pretrain:
        backbones = {}
    if not isinstance(backbones, dict) or not (backbones or pretrain):
        raise SweepError(f"{path}: 'backbones' must map names to weights files (\"\" for random init)")
    both = sorted(set(map(str, backbones)) & set(pretrain))
    if both:
        raise SweepError(f"{path}: backbone {both[0]!r} is both in 'backbones' and in 'pretrain'")
    clean = {}
    for bname, weights in backbones.items():
        bname = str(bname)
        if not _NAME.match(bname):
            raise SweepError(f"{path}: backbone name {bname!r} must be letters, digits and _.+- (it names a folder)")
        if weights is None:
            weights = ""
        if not isinstance(weights, str):
            raise SweepError(f"{path}: backbone {bname}: weights must be a file path or \"\", got {weights!r}")
        if weights and check_weights and not os.path.isfile(weights):
            raise SweepError(f"{path}: backbone {bname}: weights file not found: {weights} (convert a checkpoint "
                             "with tools/convert_backbone.py and put its path in the sweep file)")
        clean[bname] = os.path.abspath(weights) if weights else ""

    evaluations = bool(linear or mi)
    if evaluations and not data.get("tasks"):
        data = {**data, "tasks": [], "modes": data.get("modes") or ["frozen"]}
    tasks = [str(t) for t in data["tasks"]] if evaluations and not data["tasks"] else \
        [str(t) for t in _list(data, "tasks", path, "config names under configs/transfer")]
    config_files = {}
    for task in tasks:
        stem = _task_stem(task)
        config_files[stem] = _task_config(task, configs_dir, path)
    tasks = list(dict.fromkeys(_task_stem(t) for t in tasks))

    modes = [str(m) for m in _list(data, "modes", path, f"modes: {', '.join(MODES)}")]
    for mode in modes:
        if mode not in MODES:
            raise SweepError(f"{path}: mode {mode!r} is not one of {', '.join(MODES)}")
    modes = list(dict.fromkeys(modes))

    seeds = _list(data, "seeds", path, "integers")
    for seed in seeds:
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise SweepError(f"{path}: seed {seed!r} must be a non-negative integer")
    seeds = list(dict.fromkeys(seeds))

    overrides = data.get("overrides") or []
    if not isinstance(overrides, list) or len(overrides) % 2:
        got = f"{len(overrides)} item(s)" if isinstance(overrides, list) else type(overrides).__name__
        raise SweepError(f"{path}: 'overrides' must be a list of KEY, VALUE pairs (got {got})")
    overrides = [_override_text(v) for v in overrides]
    for key in overrides[::2]:
        if key in GRID_KEYS:
            raise SweepError(f"{path}: overrides may not set {key}: the grid sets {', '.join(GRID_KEYS)}")

    resources = data.get("resources") or {}
    if not isinstance(resources, dict):
        raise SweepError(f"{path}: 'resources' must be a mapping of {', '.join(Resources.keys())}")
    try:
        Resources().updated(resources, f"{path}: resources")
    except SubmitError as e:
        raise SweepError(str(e)) from None
    for where, extra in (("pretrain: resources", pretrain_resources), ("evaluations: resources", eval_resources)):
        try:
            Resources().updated(extra, f"{path}: {where}")
        except SubmitError as e:
            raise SweepError(str(e)) from None
    return Sweep(name, os.path.abspath(path), clean, tasks, modes, seeds, overrides, dict(resources), config_files,
                 pretrain, pretrain_resources, linear, mi, eval_resources)


def _override_text(value):
    """YAML gives numbers, booleans and lists; the command line is text (Detectron2 parses it)."""
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, (list, tuple)):
        return "(" + ",".join(_override_text(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    return str(value)


# ------------------------------------------------------------------------------------------ the grid

@dataclasses.dataclass(frozen=True)
class Run:
    id: str  # "<task>/<backbone>/<mode>/seed<k>", the output dir relative to the root
    task: str
    backbone: str
    weights: str
    mode: str
    seed: int
    config_file: str
    output_dir: str
    overrides: tuple = ()
    kind: str = "transfer"       # transfer | pretrain | linear | mi
    after: tuple = ()            # ids of the runs this one needs (its pretraining)
    args: tuple = ()             # the command's arguments (kinds other than transfer)
    done_file: str = "results.json"   # in output_dir: its presence marks the run done
    convert: bool = True         # pretrain: convert the final checkpoint to weights.pkl

    @property
    def group(self):
        """Which resources the run's job asks for: transfer, pretrain or eval."""
        return {"transfer": "transfer", "pretrain": "pretrain"}.get(self.kind, "eval")

    @property
    def opts(self):
        return [*self.overrides, "MODEL.WEIGHTS", self.weights, "TRANSFER.BACKBONE_NAME", self.backbone,
                "TRANSFER.MODE", self.mode, "SEED", str(self.seed), "OUTPUT_DIR", self.output_dir]

    @property
    def argv(self):
        """The run's command-line arguments (``python -m transfer.train_net`` ones for transfer runs)."""
        if self.kind != "transfer":
            return list(self.args)
        return ["--config-file", self.config_file, *self.opts]

    def command(self, resume=False):
        """The equivalent shell command (quoted)."""
        import shlex
        import sys

        from transfer.pipeline import ESTIMATE_MI

        if self.kind == "transfer":
            return TransferJob(self.argv, self.output_dir, resume=resume).command()
        head = {"pretrain": ["-m", "pretrain.train", "--resume"],  # a pretraining stage always resumes
                "linear": ["-m", "pretrain.linear_eval"], "mi": [ESTIMATE_MI]}[self.kind]
        return shlex.join([sys.executable, *head, *self.argv])


def _all_backbones(sweep, root):
    """name -> (weights, after): the given backbones, then the pretrained ones (weights they will have)."""
    out = {name: (weights, ()) for name, weights in sweep.backbones.items()}
    for name, spec in sweep.pretrain.items():
        out[name] = (spec.weights(root), (f"pretrain/{name}",))
    return out


def expand(sweep, root):
    """Every run: pretraining first, then the Detectron2 grid in the order task, backbone, mode, seed,
    then the frozen-feature evaluations."""
    from transfer.pipeline import FINAL_CHECKPOINT, WEIGHTS_FILE, pretrain_output

    root = os.path.abspath(root)
    runs = []
    for name, spec in sweep.pretrain.items():
        out = pretrain_output(root, name)
        runs.append(Run(f"pretrain/{name}", "pretrain", name, "", "pretrain", 0, spec.config, out,
                        kind="pretrain", args=("--config-file", spec.config, *spec.overrides, "OUTPUT_DIR", out),
                        done_file=WEIGHTS_FILE if spec.rgb_backbone else FINAL_CHECKPOINT,
                        convert=spec.rgb_backbone))
    backbones = _all_backbones(sweep, root)
    for task in sweep.tasks:
        for backbone, (weights, after) in backbones.items():
            if backbone in sweep.pretrain and not sweep.pretrain[backbone].rgb_backbone:
                continue  # CMC and the like: no RGB ResNet for Detectron2 (see pipeline.parse_pretrain)
            for mode in sweep.modes:
                for seed in sweep.seeds:
                    rid = f"{task}/{backbone}/{mode}/seed{seed}"
                    runs.append(Run(rid, task, backbone, weights, mode, seed, sweep.config_files[task],
                                    os.path.join(root, *rid.split("/")), tuple(sweep.overrides), after=after))
    for spec in sweep.linear:
        task = f"linear_{spec.name}"
        for backbone, (weights, after) in backbones.items():
            if not weights:
                continue  # random initialisation: nothing to load for a frozen evaluation
            for seed in sweep.seeds:
                rid = f"{task}/{backbone}/frozen/seed{seed}"
                out = os.path.join(root, *rid.split("/"))
                args = ("--config-file", spec.config, "--weights", weights, "--out", out, *spec.overrides,
                        "DATA.NAME", spec.name, "BACKBONE_NAME", backbone, "SEED", str(seed))
                runs.append(Run(rid, task, backbone, weights, "frozen", seed, spec.config, out, kind="linear",
                                after=after, args=args))
    for spec in sweep.mi:
        task = f"mi_{spec.name}"
        for backbone, (weights, after) in backbones.items():
            if not weights or (spec.views == "pretrain" and backbone not in sweep.pretrain):
                continue
            rid = f"{task}/{backbone}"
            out = os.path.join(root, *rid.split("/"))
            args = ("--weights", weights, *spec.args(pretrain_output(root, backbone)), "--out", out,
                    "--backbone-name", backbone)
            runs.append(Run(rid, task, backbone, weights, "frozen", 0, "", out, kind="mi", after=after, args=args,
                            done_file="mi.json"))
    return runs


def skipped_backbones(sweep):
    """Pretrained backbones left out of the Detectron2 tasks, with the reason (for the user)."""
    return {name: f"MODEL.METHOD {spec.method}: not one RGB ResNet, so no Detectron2 weights"
            for name, spec in sweep.pretrain.items() if not spec.rgb_backbone and sweep.tasks}


def check_runs(runs, res, group_resources=None):
    """Build the config of every (task, backbone, mode) for the job's processes and check the datasets
    they name, and every pretraining config and its data, before anything is submitted. Raises
    ConfigError/DatasetError/PretrainError/SweepError (one line). ``group_resources``: the resources of
    the pretrain and eval jobs (default ``res``)."""
    from transfer.config import build_config
    from transfer.datasets import register_from_config, validate_datasets

    group_resources = group_resources or {}
    names, seen = {}, set()
    for run in runs:
        if run.kind == "pretrain":
            _check_pretrain(run, group_resources.get("pretrain", res))
            continue
        if run.kind == "linear":
            _check_linear(run)
            continue
        if run.kind == "mi":
            data = run.args[run.args.index("--data") + 1]
            if not os.path.isdir(data):
                raise SweepError(f"{run.id}: MI data folder not found: {data}")
            continue
        key = (run.task, run.backbone, run.mode)
        if key in seen:
            continue
        seen.add(key)
        opts = list(run.opts)
        if run.after:  # the weights do not exist yet: check the config with a random initialisation
            opts[opts.index("MODEL.WEIGHTS") + 1] = ""
        cfg = build_config(run.config_file, opts, world_size=res.world_size, has_cuda=res.gpus_per_node > 0)
        register_from_config(cfg.TRANSFER.COCO_DATASETS)
        names.update(dict.fromkeys([*cfg.DATASETS.TRAIN, *cfg.DATASETS.TEST]))
    validate_datasets(list(names))


def _check_pretrain(run, res):
    """The pretraining config and its data folder, for the job's processes (pretrain.train.setup)."""
    from pretrain import train

    train.setup(train.argument_parser().parse_args(list(run.args)), world_size=res.world_size)


def _check_linear(run):
    """The linear-evaluation config, its overrides and data folders (pretrain.linear_eval's own checks);
    weights that a pretraining run will write are not there yet, so only they are taken on trust."""
    from pretrain import linear_eval

    args = linear_eval.parse_args(list(run.args))
    try:
        cfg = linear_eval.load_config(args.config_file, list(args.opts) + [
            "WEIGHTS", args.weights if os.path.exists(args.weights) or not run.after else os.devnull])
        linear_eval.check_config(cfg)
    except linear_eval.LinearEvalError as e:
        raise SweepError(f"{run.id}: {e}") from None


# ---------------------------------------------------------------------------------------- the ledger

def _now():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class Ledger:
    """``ROOT/sweep.json``: ``{"name", "sweep_file", "root", "created", "updated", "runs": [record]}``.

    A record: ``id``, ``task``, ``backbone``, ``weights``, ``mode``, ``seed``, ``output_dir``, ``state``,
    ``cluster``, ``job_id``, ``job_dir``, ``stdout``, ``stderr``, ``attempts``, ``submitted``, ``ended``,
    ``error``, ``command`` and ``history`` (earlier attempts: job id, cluster, state, error).
    """

    def __init__(self, root, data):
        self.root = root
        self.path = os.path.join(root, LEDGER)
        self.data = data

    @classmethod
    def load(cls, root):
        path = os.path.join(root, LEDGER)
        try:
            with open(path) as f:
                data = json.load(f)
        except FileNotFoundError:
            raise SweepError(f"no sweep ledger in {root} (expected {path}); submit a sweep there first") from None
        except (ValueError, OSError) as e:
            raise SweepError(f"{path}: cannot read the ledger: {e}") from None
        if not isinstance(data, dict) or not isinstance(data.get("runs"), list):
            raise SweepError(f"{path}: not a sweep ledger (no 'runs' list)")
        return cls(root, data)

    @classmethod
    def open(cls, root, sweep):
        """The ledger in ``root``, or a new one for ``sweep``; refuses another sweep's ledger."""
        if os.path.isfile(os.path.join(root, LEDGER)):
            ledger = cls.load(root)
            if ledger.data.get("name") != sweep.name:
                raise SweepError(f"{ledger.path} belongs to sweep {ledger.data.get('name')!r}, not {sweep.name!r}; "
                                 "use another --output-root")
            ledger.data["sweep_file"] = sweep.path
            return ledger
        return cls(root, {"version": 1, "name": sweep.name, "sweep_file": sweep.path, "root": root,
                          "created": _now(), "updated": None, "runs": []})

    @property
    def runs(self):
        return self.data["runs"]

    def record(self, rid):
        return next((r for r in self.runs if r["id"] == rid), None)

    def add(self, run):
        record = self.record(run.id)
        if record is None:
            record = {"id": run.id, "kind": run.kind, "task": run.task, "backbone": run.backbone,
                      "weights": run.weights, "mode": run.mode, "seed": run.seed, "output_dir": run.output_dir,
                      "done_file": run.done_file, "after": list(run.after), "state": "pending",
                      "cluster": None, "job_id": None, "job_dir": None, "stdout": None, "stderr": None,
                      "attempts": 0, "submitted": None, "ended": None, "error": None, "command": None,
                      "history": []}
            self.runs.append(record)
        return record

    def counts(self):
        counts = dict.fromkeys(STATES, 0)
        for record in self.runs:
            counts[record["state"]] = counts.get(record["state"], 0) + 1
        return counts

    def save(self):
        self.data["updated"] = _now()
        write_json_atomic(self.path, self.data)


@contextlib.contextmanager
def locked(root):
    """An exclusive lock on the sweep root (one submitter at a time)."""
    import fcntl

    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, LOCK), "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _results_exist(record):
    return os.path.isfile(os.path.join(record["output_dir"], record.get("done_file") or "results.json"))


def refresh(ledger, live_jobs=None):
    """Update every record's state from ``results.json`` and the scheduler; returns the ledger.

    A run with ``results.json`` is done. A submitted run whose job is queued or running is pending or
    running; one whose job has ended without ``results.json`` failed (with the job's last error line).
    When the scheduler cannot be asked, or reports a transient state (PREEMPTED while it requeues), the
    recorded state stays. ``live_jobs``: submitit jobs of this process by id (polled, so that local
    jobs that ended are reaped).
    """
    for job in (live_jobs or {}).values():
        with contextlib.suppress(Exception):
            job.done()
    by_cluster = {}
    for record in ledger.runs:
        if record["job_id"] and record["state"] in ("pending", "running") and not _results_exist(record):
            by_cluster.setdefault(record["cluster"], []).append(record["job_id"])
    states = {}
    for cluster, ids in by_cluster.items():
        states[cluster] = job_states(cluster, ids)
    for record in ledger.runs:
        if _results_exist(record):
            if record["state"] != "done":
                record["state"], record["error"] = "done", None
                record["ended"] = record["ended"] or _now()
            continue
        if not record["job_id"]:
            if record["state"] != "failed":
                record["state"] = "pending"  # not submitted yet
            continue
        if record["state"] not in ("pending", "running"):
            if record["state"] == "done":  # results.json was removed: run it again
                record["state"] = "failed"
                record["error"] = f"{record.get('done_file') or 'results.json'} is gone"
            continue
        word, detail = states.get(record["cluster"], {}).get(record["job_id"], ("unknown", ""))
        if word in ("pending", "running"):
            record["state"] = word
        elif word == "ended" and detail != "PREEMPTED":
            record["state"] = "failed"
            record["ended"] = _now()
            reason = job_error(record["job_dir"], record["job_id"]) if record["job_dir"] else None
            done_file = record.get("done_file") or "results.json"
            record["error"] = reason or f"job {record['job_id']} ended ({detail}) without {done_file}"
    return ledger


# ------------------------------------------------------------------------------------------ submitting

def _wanted(record, retry_failed):
    return (retry_failed and record["state"] == "failed") or (record["state"] == "pending" and not record["job_id"])


def _select(ledger, runs, retry_failed=True, cluster=None, deps=None, ignore_deps=False):
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


def waiting(ledger, runs):
    """How many runs wait for a prerequisite that is not done."""
    n = 0
    for run in runs:
        record = ledger.record(run.id)
        if record and record["state"] != "done" and any(
                (ledger.record(rid) or {}).get("state") != "done" for rid in run.after):
            n += 1
    return n


def _default_make_job(run, resume, resources=None):
    from transfer.pipeline import ESTIMATE_MI, CommandJob, PretrainStageJob
    from transfer.submit import prepare_pretrain

    if run.kind == "pretrain":
        res = (resources or {}).get("pretrain") or Resources(cluster="debug", gpus_per_node=0)
        checked = prepare_pretrain(list(run.args), res)
        return PretrainStageJob(checked.argv, checked.output_dir, checked.cfg_text, convert=run.convert)
    if run.kind == "linear":
        return CommandJob("pretrain.linear_eval", run.argv, run.output_dir, resume=resume)
    if run.kind == "mi":
        return CommandJob(ESTIMATE_MI, run.argv, run.output_dir, resume=resume)
    return TransferJob(run.argv, run.output_dir, resume=resume)


def _mark_submitted(record, job, res, job_dir, command):
    if record["job_id"]:
        record["history"].append({"job_id": record["job_id"], "cluster": record["cluster"],
                                  "state": record["state"], "error": record["error"],
                                  "submitted": record["submitted"]})
    paths = job_paths(job_dir, job.job_id)
    record.update(state="pending", cluster=res.cluster, job_id=str(job.job_id), job_dir=job_dir,
                  stdout=str(paths.stdout), stderr=str(paths.stderr), attempts=record["attempts"] + 1,
                  submitted=_now(), ended=None, error=None, command=command)


def _submit(ledger, runs, res, job_dir, name, make_job, live_jobs, out, deps=None):
    """Submit ``runs``: one job array (on SLURM) per resource group and set of prerequisite jobs;
    record them in the ledger (saved by the caller). ``res``: a Resources, or a dict group -> Resources."""
    if not runs:
        return []
    by_group = res if isinstance(res, dict) else {"transfer": res, "pretrain": res, "eval": res}
    deps = deps or {}
    groups = {}
    for run in runs:
        groups.setdefault((run.group, tuple(deps.get(run.id, ()))), []).append(run)
    done = []
    for (group, after), members in groups.items():
        tag = "" if group == "transfer" else f"_{group}"
        done += _submit_group(ledger, members, by_group[group], job_dir, name + tag, make_job, live_jobs, out, after)
    return done


def _submit_group(ledger, runs, res, job_dir, name, make_job, live_jobs, out, after=()):
    resumes = [ledger.record(run.id)["attempts"] > 0 for run in runs]
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
            record["state"] = "done" if _results_exist(record) else "failed"
            record["ended"] = _now()
            if record["state"] == "failed" and not record["error"]:
                record["error"] = f"the job ended without {run.done_file}"
            ledger.save()
        return runs
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
        picked = _select(ledger, [r for r in runs if stage(r)], retry_failed, cluster, deps)
        if cluster == "local":  # no scheduler queues the rest: keep at most array_parallelism running
            picked = picked[:max(0, res["transfer"].array_parallelism - _active(ledger, "local"))]
        _submit(ledger, picked, res, job_dir, name, make_job, live_jobs, out, deps)
        ledger.save()
        chosen += picked
    return chosen


def run_sweep(sweep_file, output_root=None, resources=None, dry_run=False, wait=False, poll_s=30.0,
              timeout_s=None, make_job=None, check=True, configs_dir=None, out=print):
    """Expand ``sweep_file``, check every run, submit what is not done, record it in the ledger.

    ``resources``: a dict of resource values given on the command line (they win over the sweep
    file's ``resources``, which win over the defaults), or a :class:`Resources`. ``output_root``
    defaults to ``./output/sweeps/<name>``. ``dry_run`` prints the sbatch script and the commands of
    what would be submitted. ``wait`` waits (polling every ``poll_s`` s, at most ``timeout_s``) until
    every run is done or failed. ``make_job(run, resume)`` builds the submitted callable (default: a
    :class:`~transfer.submit.TransferJob`). Returns the ledger (None for a dry run).
    """
    sweep = load_sweep(sweep_file, configs_dir)
    where = f"{sweep_file}: resources"
    res = resources if isinstance(resources, Resources) else \
        resolve_resources(resources, base=resolve_resources(sweep.resources, source=where))
    groups = {"transfer": res}
    for group, extra in (("pretrain", sweep.pretrain_resources), ("eval", sweep.eval_resources)):
        if isinstance(resources, Resources):
            groups[group] = resources
        else:  # the command line wins over the section's resources, which win over the sweep's
            base = resolve_resources(extra, base=resolve_resources(sweep.resources, source=where),
                                     source=f"{sweep_file}: {group} resources")
            groups[group] = resolve_resources(resources, base=base)
    make_job = make_job or functools.partial(_default_make_job, resources=groups)
    root = os.path.abspath(output_root or os.path.join("output", "sweeps", sweep.name))
    runs = expand(sweep, root)
    for backbone, reason in skipped_backbones(sweep).items():
        out(f"sweep {sweep.name}: {backbone} is left out of the Detectron2 tasks ({reason})")
    if check:
        check_runs(runs, res, groups)
    job_dir = os.path.join(os.path.abspath(res.job_dir) if res.job_dir else os.path.join(root, "submitit"), "%j")
    name = res.job_name or sweep.name

    if dry_run:
        if os.path.isfile(os.path.join(root, LEDGER)):
            ledger = refresh(Ledger.open(root, sweep))
        else:
            ledger = Ledger(root, {"name": sweep.name, "runs": []})
        chosen = _select(ledger, runs, ignore_deps=True)
        out(f"# sweep {sweep.name}: {len(runs)} runs, {len(chosen)} to submit; ledger {ledger.path}")
        if chosen:
            jobs = [make_job(run, ledger.record(run.id)["attempts"] > 0) for run in chosen]
            out(plan_text(res, job_dir, name, jobs), end="")
        return None

    check_cluster(res)
    live_jobs = {}
    with locked(root):
        ledger = Ledger.open(root, sweep)
        _submit_round(ledger, runs, groups, job_dir, name, make_job, live_jobs, out)
    counts = ledger.counts()
    blocked = waiting(ledger, runs)
    out(f"sweep {sweep.name}: " + ", ".join(f"{counts[s]} {s}" for s in STATES) + f"; ledger {ledger.path}"
        + (f"; {blocked} wait for their pretraining (submitted as it finishes: --wait, or run this again)"
           if blocked and res.cluster != "slurm" else ""))
    if wait and res.cluster == "debug":
        out(format_status(ledger))
    elif wait:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        ids = {run.id for run in runs}
        while True:
            with locked(root):
                ledger = Ledger.open(root, sweep)
                if res.cluster == "local":
                    # the runs not yet submitted, as slots free up (failures are retried by the next sweep command)
                    _submit_round(ledger, runs, groups, job_dir, name, make_job, live_jobs, out, retry_failed=False)
                else:
                    refresh(ledger, live_jobs)
                    ledger.save()
            mine = [r for r in ledger.runs if r["id"] in ids]
            failed = {r["id"] for r in mine if r["state"] == "failed"}
            # a run whose prerequisite failed cannot start in this command: it counts as finished here
            stuck = {run.id for run in runs if any(a in failed for a in run.after)}
            if all(r["state"] in ("done", "failed") or r["id"] in stuck for r in mine):
                break
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"sweep {sweep.name}: runs still pending or running after {timeout_s} s")
            time.sleep(poll_s)
        out(format_status(ledger))
    return ledger


def sweep_status(root, save=True):
    """The ledger of ``root`` with refreshed states (written back when ``save`` and possible)."""
    root = os.path.abspath(root)
    if not os.path.isfile(os.path.join(root, LEDGER)):
        raise SweepError(f"no sweep ledger in {root} (expected {os.path.join(root, LEDGER)})")
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

