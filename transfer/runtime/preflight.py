"""A preflight for a GPU node: what a sweep needs works here, and how fast (``tools/preflight.py``).

Checks, in order; each says ``ok``, ``FAIL``, ``warn`` or ``skipped`` (what cannot be checked on this
machine, and why), with one line of detail:

- ``environment``: Python, PyTorch and its CUDA build, Detectron2.
- ``cuda``: every visible GPU computes a matrix product that agrees with the CPU's.
- ``nccl``: an all-reduce over all local GPUs in spawned processes (NCCL), and its bus bandwidth
  (:mod:`transfer.runtime.preflight_dist`).
- ``syncbn``: torch's ``SyncBatchNorm`` over the local GPUs against ``BatchNorm2d`` on the same global
  batch: outputs, gradients, running statistics. Without CUDA: Detectron2's ``NaiveSyncBatchNorm`` over
  two gloo processes, what CPU runs use.
- ``compiled_ops``: Detectron2's compiled ops present, or the pure-Python build (``warn``: deformable
  convolution and rotated boxes are unavailable; every shipped config runs).
- ``train_step``: Mask R-CNN R50-FPN at real resolution (800 x 1333, 2 images per GPU) with AMP on GPU 0,
  in both transfer modes (:mod:`transfer.runtime.preflight_step`); without CUDA, a few fp32 steps of the
  tiny R18-FPN at 128 px on the CPU instead.
- ``weights``, ``datasets`` (with a sweep file): every weights file the sweep names opens with the safe
  reader (:func:`pretrain.common.safe_load.read_checkpoint`; ``--trust-pickle`` to allow full unpickling),
  and every dataset its Detectron2 runs train or test on passes the project's dataset check
  (:func:`transfer.data.validate.validate_datasets`).

Then the speed table: the measured seconds per iteration and images per second beside the published
figures of the cost table (``configs/costs/<gpu>.yaml``, :mod:`transfer.launch.costs`) for the same model
and mode. :func:`run_preflight` returns the report; its ``failed`` decides the exit status.
"""
import dataclasses
import os
import platform
import sys
import time

import torch

from pretrain.bench import format_table

__all__ = ["STATUSES", "CHECKS", "CheckResult", "SpeedRow", "Preflight", "run_preflight", "format_report", "print_preflight"]

STATUSES = ("ok", "warn", "skipped", "FAIL")
NO_CUDA = "no CUDA device visible"


@dataclasses.dataclass
class CheckResult:
    name: str
    status: str   # one of STATUSES
    detail: str
    seconds: float = 0.0


@dataclasses.dataclass
class SpeedRow:
    step: str
    device: str
    s_per_iter: float
    img_per_s: float
    peak_gb: float = None
    published: str = "-"


@dataclasses.dataclass
class Preflight:
    header: str
    checks: list = dataclasses.field(default_factory=list)
    speed: list = dataclasses.field(default_factory=list)
    notes: list = dataclasses.field(default_factory=list)

    @property
    def failed(self):
        return [c for c in self.checks if c.status == "FAIL"]


def _one_line(error):
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _run(report, name, fn):
    """Run check ``fn`` (returns (status, detail)); an exception is a FAIL with its one line."""
    start = time.perf_counter()
    try:
        status, detail = fn()
    except Exception as e:  # noqa: BLE001 - a failing check is reported, the others still run
        status, detail = "FAIL", _one_line(e)
    report.checks.append(CheckResult(name, status, detail, time.perf_counter() - start))
    return status


# ------------------------------------------------------------------------------------------ checks

def _environment():
    import detectron2

    cuda = f"CUDA {torch.version.cuda}" if torch.version.cuda else "no CUDA build"
    cudnn = f", cuDNN {torch.backends.cudnn.version()}" if torch.backends.cudnn.is_available() else ""
    return "ok", (f"Python {platform.python_version()}, torch {torch.__version__} ({cuda}{cudnn}), "
                  f"detectron2 {detectron2.__version__}, {os.cpu_count()} CPUs")


def _cuda():
    if not torch.cuda.is_available():
        return "skipped", f"{NO_CUDA} (torch {'built with CUDA ' + torch.version.cuda if torch.version.cuda else 'without CUDA'}): cannot check the GPUs"
    names = []
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(512, 512, generator=g), torch.randn(512, 512, generator=g)
    ref = a @ b
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        got = (a.to(f"cuda:{i}") @ b.to(f"cuda:{i}")).cpu()
        err = float((got - ref).abs().max() / ref.abs().max())
        if err > 1e-2:  # TF32 matmuls differ by ~1e-3 relative; a broken device by far more
            return "FAIL", f"GPU {i} ({props.name}): matrix product differs from the CPU's by {err:.2g} (relative)"
        names.append(f"{i}: {props.name} {props.total_memory / 2**30:.0f} GiB sm_{props.major}{props.minor}")
    return "ok", f"{len(names)} GPU(s): " + "; ".join(names)


def _nccl():
    if not torch.cuda.is_available():
        return "skipped", f"{NO_CUDA}: NCCL cannot be checked"
    from transfer.runtime.preflight_dist import check_all_reduce

    n = torch.cuda.device_count()
    r = check_all_reduce(n, cuda=True)
    if not r["ok"]:
        return "FAIL", f"all-reduce over {n} GPU(s) gave {r['got']} instead of {r['expected']}"
    bandwidth = f", bus bandwidth {r['bus_gb_s']:.1f} GB/s (256 MB all-reduce)" if r["bus_gb_s"] else \
        " (one GPU: no bandwidth to measure)"
    return "ok", f"all-reduce over {n} GPU process(es) correct{bandwidth}"


def _syncbn():
    from transfer.runtime.preflight_dist import check_syncbn

    if torch.cuda.is_available():
        n = torch.cuda.device_count()
        if n < 2:
            return "skipped", "one GPU: nothing to synchronise (SyncBatchNorm is BatchNorm in one process)"
        r, what = check_syncbn(n, cuda=True), f"torch SyncBatchNorm over {n} GPUs"
    else:
        r, what = check_syncbn(2, cuda=False), "Detectron2's NaiveSyncBatchNorm over 2 gloo processes (CPU runs' " \
                                               f"SyncBN; torch SyncBatchNorm needs CUDA: {NO_CUDA}, not checked)"
    tolerance = 1e-4  # fp32 sums in another order: ~1e-6 relative; a wrong reduction is off by far more
    worst = r["max_rel_diff"]
    detail = f"{what} vs BatchNorm2d on the same global batch: largest relative difference " + \
        ", ".join(f"{k} {v:.1e}" for k, v in worst.items())
    return ("ok" if max(worst.values()) <= tolerance else "FAIL"), detail


def _compiled_ops():
    from transfer.runtime.compat import has_compiled_ops

    if has_compiled_ops():
        return "ok", "Detectron2's compiled ops are installed"
    return "warn", ("pure-Python Detectron2 (no compiled ops): deformable convolution and rotated boxes are "
                    "unavailable; every shipped config runs without them")


def _published(table, task, mode, family="FPN"):
    """``(published s/iter of the reference hardware x mode factor, text)`` from the cost table."""
    figure = table.figure(task) if table is not None else None
    if figure is None:
        return None, "-"
    factor, entry = table.mode_factor(mode, family)
    s_iter = figure.train_s_per_iter * factor
    per_gpu = table.reference_batch / table.reference_gpus / s_iter
    how = f" ({figure.kind} {figure.train_s_per_iter} x {mode} {factor:.3g}, {entry.kind})" if entry else \
        f" ({figure.kind})"
    return s_iter, (f"{s_iter:.3f} s/iter, {per_gpu:.1f} img/s per GPU on {table.reference_gpus} x {table.gpu}"
                    f"{how}")


def _train_step(report, table, steps):
    from transfer.runtime.preflight_step import default_config, time_step

    task = "coco_mask_rcnn_R_50_FPN_1x"
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        details = []
        for mode in ("finetune", "frozen"):
            r = time_step(default_config(), ["TRANSFER.MODE", mode], device="cuda:0", amp=True, images=2,
                          height=800, width=1333, warmup=3, iters=steps)
            published_s, published = _published(table, task, mode)
            report.speed.append(SpeedRow(f"Mask R-CNN R50-FPN {mode}, 800x1333, 2 img, AMP", f"cuda:0 {name}",
                                         r.s_per_iter, r.img_per_s, r.peak_gb, published))
            details.append(f"{mode} {r.s_per_iter:.3f} s/iter"
                           + (f" ({published_s / r.s_per_iter:.2f}x the published speed)" if published_s else ""))
        return "ok", "AMP training steps, finite losses: " + ", ".join(details)
    from transfer.training.config import TINY_OVERRIDES

    opts = [*TINY_OVERRIDES, "MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64"]
    r = time_step(default_config(), opts, device="cpu", amp=False, images=2, height=128, width=192, warmup=1,
                  iters=steps)
    report.speed.append(SpeedRow("Mask R-CNN R18-FPN tiny, 128x192, 2 img, fp32", f"cpu ({os.cpu_count()} CPUs)",
                                 r.s_per_iter, r.img_per_s, None, "- (no published CPU figure)"))
    return "ok", (f"{NO_CUDA}: AMP and the real-resolution R50-FPN step cannot be checked; a CPU fp32 step of "
                  f"the tiny R18-FPN instead: {r.s_per_iter:.3f} s/iter, finite losses")


def _weights(sweep, trust_pickle):
    from pretrain.common.safe_load import read_checkpoint

    checked = []
    for name, path in sweep.backbones.items():
        if not path:
            continue
        data = read_checkpoint(path, trust_pickle=trust_pickle)
        tensors = data.get("model", data) if isinstance(data, dict) else {}
        count = len(tensors) if isinstance(tensors, dict) else 0
        checked.append(f"{name} ({count} entries)")
    pending = sorted(sweep.pretrain)
    if not checked and not pending:
        return "ok", "no weights files (random initialisation only)"
    detail = f"{len(checked)} file(s) open safely: " + ", ".join(checked) if checked else "no weights files"
    if pending:
        detail += f"; written by the sweep's pretraining, not checked: {', '.join(pending)}"
    return "ok", detail


def _datasets(sweep, resources):
    from transfer.data.datasets import register_from_config
    from transfer.data.validate import validate_datasets
    from transfer.launch.grid import expand
    from transfer.training.config import build_config

    names, seen = {}, set()
    for run in expand(sweep, os.path.join(os.getcwd(), "output", "sweeps", sweep.name)):
        if run.kind != "transfer" or (run.task, run.mode) in seen:
            continue
        seen.add((run.task, run.mode))
        opts = list(run.opts)
        opts[opts.index("MODEL.WEIGHTS") + 1] = ""  # the datasets do not depend on the weights
        cfg = build_config(run.config_file, opts, world_size=resources.world_size, has_cuda=True)
        register_from_config(cfg.TRANSFER.COCO_DATASETS)
        names.update(dict.fromkeys([*cfg.DATASETS.TRAIN, *cfg.DATASETS.TEST]))
    if not names:
        return "ok", "the sweep has no Detectron2 runs"
    counts = validate_datasets(list(names))
    others = sorted({r.kind for r in expand(sweep, os.getcwd()) if r.kind != "transfer"})
    extra = f"; data of its {', '.join(others)} runs not checked here (submit --dry-run checks them)" if others else ""
    return "ok", ", ".join(f"{n} ({c} images)" for n, c in counts.items()) + extra


# ------------------------------------------------------------------------------------------ the report

def _table(gpu_type, notes):
    from transfer.launch.costs import CostError, gpu_types, load_cost_table

    name = gpu_type
    if name is None and torch.cuda.is_available():
        device = torch.cuda.get_device_name(0).lower()
        name = next((t for t in gpu_types() if t in device), None)
        if name is None:
            notes.append(f"no cost table for {torch.cuda.get_device_name(0)}: published figures of V100 shown "
                         "(add configs/costs/<gpu>.yaml with this preflight's figures)")
    try:
        return load_cost_table(name or "v100")
    except CostError as e:
        notes.append(f"cost table: {e}")
        return None


CHECKS = ("environment", "cuda", "nccl", "syncbn", "compiled_ops", "train_step", "weights", "datasets")


def run_preflight(sweep_file=None, gpu_type=None, trust_pickle=False, steps=10, only=None, log=None):
    """Run the checks (see the module docstring); returns a :class:`Preflight`. ``sweep_file``: also check
    the weights and datasets it names; ``gpu_type``: the cost table of the published figures (default: the
    one named in GPU 0's name, else V100); ``steps``: timed training steps per mode; ``only``: the names of
    the checks to run (default all of :data:`CHECKS`)."""
    unknown = sorted(set(only or ()) - set(CHECKS))
    if unknown:
        raise ValueError(f"unknown check(s) {', '.join(unknown)}; known: {', '.join(CHECKS)}")
    report = Preflight(f"preflight on {platform.node() or 'this machine'}: {sys.executable}")
    table = _table(gpu_type, report.notes)

    def step(name, fn):
        if only and name not in only:
            return None
        if log:
            log(f"{name} ...")
        return _run(report, name, fn)

    step("environment", _environment)
    step("cuda", _cuda)
    step("nccl", _nccl)
    step("syncbn", _syncbn)
    step("compiled_ops", _compiled_ops)
    step("train_step", lambda: _train_step(report, table, steps))
    if sweep_file:
        from transfer.launch.resources import resolve_resources
        from transfer.launch.sweep_file import load_sweep

        try:
            sweep = load_sweep(sweep_file, check_weights=False)
            resources = resolve_resources(sweep.resources, source=f"{sweep_file}: resources")
        except Exception as e:  # noqa: BLE001 - the sweep file itself is the failing check
            report.checks.append(CheckResult("sweep", "FAIL", _one_line(e)))
            return report
        step("weights", lambda: _weights(sweep, trust_pickle))
        step("datasets", lambda: _datasets(sweep, resources))
    else:
        for name in ("weights", "datasets"):
            if not only or name in only:
                report.checks.append(CheckResult(name, "skipped", "no sweep file given (--sweep FILE)"))
    return report


def format_report(report):
    """The report as text: the checks, the speed table beside the published figures, the verdict."""
    lines = [report.header, ""]
    lines.append(format_table(("check", "status", "seconds", "detail"),
                              [(c.name, c.status, f"{c.seconds:.1f}", c.detail) for c in report.checks]))
    if report.speed:
        lines += ["", "Speed (the model's training step on a fixed batch; loading not included):"]
        lines.append(format_table(("step", "device", "s/iter", "img/s", "peak GB", "published (same model and mode)"),
                                  [(s.step, s.device, f"{s.s_per_iter:.4f}", f"{s.img_per_s:.2f}",
                                    "-" if s.peak_gb is None else f"{s.peak_gb:.1f}", s.published)
                                   for s in report.speed]))
    for note in report.notes:
        lines.append(f"note: {note}")
    counts = {s: sum(c.status == s for c in report.checks) for s in STATUSES}
    verdict = "FAILED" if report.failed else "passed"
    lines += ["", f"preflight {verdict}: " + ", ".join(f"{counts[s]} {s}" for s in STATUSES)]
    return "\n".join(lines) + "\n"


def print_preflight(sweep_file=None, gpu_type=None, trust_pickle=False, steps=10, only=None, out=print, log=None):
    """``tools/preflight.py``: :func:`run_preflight`, printed; returns the :class:`Preflight`."""
    report = run_preflight(sweep_file, gpu_type, trust_pickle, steps, only=only, log=log)
    out(format_report(report), end="")
    return report
