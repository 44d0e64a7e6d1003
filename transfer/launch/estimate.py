"""What a sweep will cost before it is submitted: GPU-hours per run and in total, and the disk it fills.

``tools/submit.py sweep FILE --estimate [GPU]`` prints it. For every Detectron2 run of the sweep the effective
config is built for the sweep's processes (:func:`transfer.training.config.build_config`, CUDA assumed;
nothing is read but config files and the weights' meta, no datasets), and:

- **training GPU-hours** = images the run trains on (``SOLVER.MAX_ITER`` x ``SOLVER.IMS_PER_BATCH``) x the
  GPU-seconds per image of its model on that GPU type (the cost table's seconds per iteration x reference
  GPUs / reference batch, :mod:`transfer.launch.costs`) x the factor of its mode (``finetune``: SyncBN
  everywhere, all stages trained; ``frozen``: no backward through the backbone), / 3600. The per-image
  cost does not change with the number of GPUs (the linear scaling rule keeps the images per GPU per
  iteration), so neither do the GPU-hours; the wall-clock hours are the GPU-hours / the run's processes.
- **evaluation GPU-hours** = evaluations (one per ``TEST.EVAL_PERIOD`` and one at the end) x test images x
  inference seconds per image / 3600.
- **checkpoints**: Detectron2 keeps every periodic checkpoint: ``MAX_ITER // CHECKPOINT_PERIOD + 1`` files
  (the last one is ``model_final.pth``), each holding the model's parameters and buffers and the SGD momentum
  of its trained parameters, 4 bytes per value (fp32; AMP keeps fp32 weights). Parameters are counted on the
  model itself, built on PyTorch's meta device (no memory, no weights read).
- **predictions** (``inference/<dataset>/``, rewritten at each evaluation): test images x
  ``TEST.DETECTIONS_PER_IMAGE`` x bytes per detection (``configs/costs/disk.yaml``): an upper bound, as a
  model keeps fewer detections than the cap on most images.

Runs of other kinds (pretraining, linear evaluation, MI estimation) have no figures and are listed as such.
"""
import dataclasses
import os

from pretrain.bench import format_table
from transfer.launch.costs import detector_family, load_cost_table, load_disk_table
from transfer.launch.grid import expand
from transfer.launch.resources import Resources, resolve_resources
from transfer.launch.sweep_file import load_sweep

__all__ = ["RunCost", "SweepEstimate", "count_parameters", "checkpoint_files", "evaluations", "estimate_sweep",
           "format_estimate", "print_estimate"]

GB = 1e9
BYTES_PER_VALUE = 4


@dataclasses.dataclass
class RunCost:
    """One run's estimate; None where there is no figure."""

    id: str
    kind: str
    mode: str
    train_gpu_hours: float = None
    eval_gpu_hours: float = None
    wall_hours: float = None
    checkpoint_files: int = None
    checkpoint_bytes: float = None
    prediction_bytes: float = None
    notes: list = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class SweepEstimate:
    name: str
    table: object          # the CostTable used
    disk: object           # the DiskTable used
    resources: Resources
    runs: list             # [RunCost]
    figures: dict          # model key -> Figure used
    factors: dict          # mode -> ModeFactor used

    def total(self, field):
        values = [getattr(r, field) for r in self.runs if getattr(r, field) is not None]
        return sum(values) if values else None


def count_parameters(cfg):
    """``(values in the state dict, trained parameter values)`` of the model of ``cfg``, built on the meta
    device (Detectron2's meta-architecture registry; no memory is allocated, no weights are read)."""
    import torch
    from detectron2.modeling import META_ARCH_REGISTRY

    with torch.device("meta"):
        model = META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)(cfg)
    state = sum(t.numel() for t in model.state_dict().values())
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return state, trained


def checkpoint_files(max_iter, period):
    """Files Detectron2's periodic checkpointer leaves (it keeps them all): one per ``period`` iterations
    and ``model_final.pth``."""
    return (max_iter // period if period > 0 else 0) + 1


def evaluations(max_iter, period):
    """Evaluations of a run: at every multiple of ``period`` before the end, and one at the end."""
    return ((max_iter - 1) // period if period > 0 else 0) + 1


def _evaluator_type(name):
    from detectron2.data import MetadataCatalog

    return getattr(MetadataCatalog.get(name), "evaluator_type", None) or "coco"


def _prediction_bytes(cfg, disk, notes):
    per_det = disk.bytes_per_detection
    total = 0.0
    for name in cfg.DATASETS.TEST:
        images = disk.test_images.get(name)
        if images is None:
            notes.append(f"test set {name}: size not in {os.path.basename(disk.path)}, predictions not counted")
            continue
        if _evaluator_type(name) == "pascal_voc":
            size = per_det["voc"]
        else:
            size = per_det["bbox"] + (per_det["segm"] if cfg.MODEL.MASK_ON else 0) + \
                (per_det["keypoints"] if cfg.MODEL.KEYPOINT_ON else 0)
        total += images * cfg.TEST.DETECTIONS_PER_IMAGE * size
    return total


def _inference_hours(cfg, figure, disk):
    if figure is None or figure.inference_s_per_image is None:
        return None
    images = sum(disk.test_images.get(name, 0) for name in cfg.DATASETS.TEST)
    return evaluations(cfg.SOLVER.MAX_ITER, cfg.TEST.EVAL_PERIOD) * images * figure.inference_s_per_image / 3600


def _arch(cfg):
    r = cfg.MODEL.RESNETS
    return f"X-{r.DEPTH}-{r.NUM_GROUPS}x{r.WIDTH_PER_GROUP}d" if r.NUM_GROUPS > 1 else f"R-{r.DEPTH}"


class _Shapes:
    """The per-(task, backbone, mode) part of an estimate, computed once for all seeds."""

    def __init__(self, res, table, disk):
        self.res, self.table, self.disk = res, table, disk
        self.params = {}
        self.figures, self.factors = {}, {}

    def cost(self, run):
        from transfer.data.datasets import register_from_config
        from transfer.training.config import build_config

        notes = []
        opts = list(run.opts)
        weights = opts[opts.index("MODEL.WEIGHTS") + 1]
        if weights and not os.path.isfile(weights):
            opts[opts.index("MODEL.WEIGHTS") + 1] = ""
            notes.append("weights not there yet: architecture from the config and overrides")
        cfg = build_config(run.config_file, opts, world_size=self.res.world_size, has_cuda=True)
        register_from_config(cfg.TRANSFER.COCO_DATASETS)
        cost = RunCost(run.id, run.kind, run.mode)
        figure = self.table.figure(run.task)
        if figure is None:
            notes.append(f"no figure for {run.task} on {self.table.gpu}")
        else:
            self.figures[figure.key] = figure
            factor, entry = self.table.mode_factor(run.mode, detector_family(cfg))
            if entry is not None:
                self.factors[run.mode] = entry
            images = cfg.SOLVER.MAX_ITER * cfg.SOLVER.IMS_PER_BATCH
            cost.train_gpu_hours = images * self.table.gpu_seconds_per_image(figure) * factor / 3600
            if _arch(cfg) != figure.backbone:
                notes.append(f"figure of {figure.backbone}, run {_arch(cfg)}")
        cost.eval_gpu_hours = _inference_hours(cfg, figure, self.disk)
        if cost.train_gpu_hours is not None:
            cost.wall_hours = (cost.train_gpu_hours + (cost.eval_gpu_hours or 0.0)) / max(1, self.res.world_size)
        key = (cfg.MODEL.dump(), run.mode)
        if key not in self.params:
            self.params[key] = count_parameters(cfg)
        state, trained = self.params[key]
        momentum = trained if cfg.SOLVER.MOMENTUM > 0 else 0
        cost.checkpoint_files = checkpoint_files(cfg.SOLVER.MAX_ITER, cfg.SOLVER.CHECKPOINT_PERIOD)
        cost.checkpoint_bytes = cost.checkpoint_files * (state + momentum) * BYTES_PER_VALUE
        cost.prediction_bytes = _prediction_bytes(cfg, self.disk, notes)
        cost.notes = notes
        return cost


def estimate_sweep(sweep_file, gpu="v100", resources=None, output_root=None, configs_dir=None, costs_dir=None):
    """The :class:`SweepEstimate` of ``sweep_file`` on GPU type ``gpu`` (a cost table of ``configs/costs/``).

    ``resources``: the command line's resource values (as for :func:`transfer.launch.sweep.run_sweep`);
    they set the processes of each run. Weights files that do not exist yet are allowed (the sweep's
    placeholders): such runs are estimated with the architecture of their config. Raises the one-line
    errors of the sweep file, the configs and the cost tables."""
    table = load_cost_table(gpu, costs_dir)
    disk = load_disk_table(costs_dir)
    sweep = load_sweep(sweep_file, configs_dir, check_weights=False)
    res = resources if isinstance(resources, Resources) else resolve_resources(
        resources, base=resolve_resources(sweep.resources, source=f"{sweep_file}: resources"))
    root = os.path.abspath(output_root or os.path.join("output", "sweeps", sweep.name))
    shapes = _Shapes(res, table, disk)
    done, runs = {}, []
    for run in expand(sweep, root):
        if run.kind != "transfer":
            runs.append(RunCost(run.id, run.kind, run.mode, notes=[f"no figures for {run.kind} runs"]))
            continue
        key = (run.task, run.backbone, run.mode)
        if key not in done:
            done[key] = shapes.cost(run)
        runs.append(dataclasses.replace(done[key], id=run.id, notes=list(done[key].notes)))
    return SweepEstimate(sweep.name, table, disk, res, runs, shapes.figures, shapes.factors)


def _num(value, digits=1):
    return "-" if value is None else f"{value:,.{digits}f}"


def format_estimate(est):
    """The estimate as text: one row per run, the totals, and where every figure comes from."""
    res = est.resources
    gpus = f"{res.nodes} node(s) x {res.gpus_per_node} GPU(s)" if res.gpus_per_node else \
        f"{res.nodes} node(s) x {res.tasks} CPU process(es) (the estimate is for {est.table.gpu} GPUs)"
    lines = [f"Cost estimate of sweep {est.name} on {est.table.gpu} ({os.path.relpath(est.table.path)}); each run "
             f"on {gpus} = {res.world_size} process(es)", ""]
    headers = ("run", "train GPU-h", "eval GPU-h", "wall h", "checkpoints GB", "predictions GB", "note")
    rows = [(r.id, _num(r.train_gpu_hours), _num(r.eval_gpu_hours, 2), _num(r.wall_hours),
             _num(None if r.checkpoint_bytes is None else r.checkpoint_bytes / GB) +
             ("" if r.checkpoint_files is None else f" ({r.checkpoint_files} files)"),
             _num(None if r.prediction_bytes is None else r.prediction_bytes / GB, 2), "; ".join(r.notes))
            for r in est.runs]
    ckpt, pred = est.total("checkpoint_bytes"), est.total("prediction_bytes")
    rows.append((f"total ({len(est.runs)} runs)", _num(est.total("train_gpu_hours")), _num(est.total("eval_gpu_hours"), 2),
                 _num(est.total("wall_hours")), _num(None if ckpt is None else ckpt / GB),
                 _num(None if pred is None else pred / GB, 2), ""))
    lines.append(format_table(headers, rows))
    train, evals = est.total("train_gpu_hours"), est.total("eval_gpu_hours")
    if train is not None:
        lines += ["", f"GPU-hours in all: {train + (evals or 0.0):,.1f} on {est.table.gpu}; disk in all: "
                      f"{((ckpt or 0.0) + (pred or 0.0)) / GB:,.1f} GB"]
    lines += ["", "Figures (configs/costs/, each with its source):"]
    for key, f in sorted(est.figures.items()):
        inference = "" if f.inference_s_per_image is None else f", {f.inference_s_per_image} s/image inference"
        lines.append(f"- {key}: {f.train_s_per_iter} s/iter on {est.table.reference_gpus} x {est.table.gpu} "
                     f"({est.table.reference_batch} images/iter, {f.backbone}){inference}; {f.kind}: {f.source}")
    for mode, entry in sorted(est.factors.items()):
        factors = ", ".join(f"{fam} x{v:.3g}" for fam, v in sorted(entry.factors.items()))
        lines.append(f"- mode {mode}: {factors}; {entry.kind}: {entry.source}")
    lines.append(f"- checkpoints: all periodic ones kept (MAX_ITER // CHECKPOINT_PERIOD + 1 files), each "
                 "parameters + buffers + SGD momentum of trained parameters, 4 bytes per value, counted on the model")
    lines.append(f"- predictions: test images x TEST.DETECTIONS_PER_IMAGE x bytes per detection, an upper bound; "
                 f"{est.disk.kind}: {est.disk.source}")
    return "\n".join(lines) + "\n"


def print_estimate(sweep_file, gpu="v100", resources=None, output_root=None, out=print):
    """``tools/submit.py sweep FILE --estimate [GPU]``: :func:`estimate_sweep`, printed."""
    est = estimate_sweep(sweep_file, gpu, resources, output_root)
    out(format_estimate(est), end="")
    return est
