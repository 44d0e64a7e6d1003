"""What a job asks the cluster for: :class:`Resources`, their checks, and the sbatch parameters they become.

Every value that ends up in an sbatch script is checked here: integers are integers, memory reads like
``64G``, and no value carries a line break (each ``#SBATCH`` line is one line of a shell script).
Errors are one line (:class:`SubmitError`).
"""
import dataclasses
import re

__all__ = ["CLUSTERS", "SubmitError", "Resources", "resolve_resources", "no_control_characters", "parse_mem",
           "job_name", "slurm_parameters", "split_dist_flags"]

CLUSTERS = ("slurm", "local", "debug")
_SAFE_NAME = re.compile(r"[^A-Za-z0-9_.+-]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class SubmitError(ValueError):
    """Resources or arguments a job cannot be submitted with, explained in one line."""


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


def resolve_resources(resources=None, base=None, source="command line"):
    """``Resources`` from defaults (or ``base``) updated with ``resources`` (a dict of the values a user
    gave, None for not given, or a :class:`Resources`)."""
    if isinstance(resources, Resources):
        return resources
    return (base or Resources()).updated(resources or {}, source)


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


def _mem_text(gb):
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
        params["mem"] = _mem_text(parse_mem(res.mem))
    return params


_DIST_FLAGS = {"--num-gpus": "gpus_per_node", "--num-machines": "nodes"}
_REFUSED_FLAGS = ("--machine-rank", "--dist-url")


def split_dist_flags(argv, prog):
    """Take ``--num-gpus N`` / ``--num-machines M`` out of a run's arguments: under a scheduler they are
    resources (``gpus_per_node`` / ``nodes`` unless those were given too). Returns ``(argv, implied)``."""
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
