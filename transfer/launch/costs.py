"""The cost table: seconds per iteration of each transfer task on each GPU type, and what its outputs weigh.

Data, with their sources, in ``configs/costs/`` (format in docs/artifacts.md):

- ``<gpu>.yaml`` (e.g. ``v100.yaml``): per model (a task's config name without its schedule suffix,
  ``coco_mask_rcnn_R_50_FPN`` for ``coco_mask_rcnn_R_50_FPN_1x`` / ``_2x`` / ``_6x``: seconds per iteration
  do not depend on the schedule's length) the training seconds per iteration of the reference hardware
  (``reference.gpus`` GPUs, ``reference.ims_per_batch`` images per iteration) and the inference seconds per
  image (one GPU, batch 1); per mode a factor from the published baseline (Detectron2's: frozen BN,
  stem and res2 frozen) to the project's mode, per detector family (``FPN``, ``C4``).
- ``disk.yaml``: images of the test sets, bytes of the saved predictions per detection.

Every figure carries ``kind`` (``published``: copied from its source; ``derived``: computed from published
figures as its source says; ``estimate``: a model of the cost, say how; ``measured``: timed by someone, say
where) and ``source``. :func:`load_cost_table` and :func:`load_disk_table` read and check them; errors
are one line (:class:`CostError`).
"""
import dataclasses
import os
import re

from pretrain.common.paths import CONFIGS_DIR
from pretrain.common.yamlio import read_yaml
from transfer.launch.resources import SubmitError

__all__ = ["COSTS_DIR", "DISK_FILE", "KINDS", "FAMILIES", "CostError", "Figure", "CostTable", "DiskTable",
           "model_key", "detector_family", "gpu_types", "load_cost_table", "load_disk_table"]

COSTS_DIR = os.path.join(CONFIGS_DIR, "costs")
DISK_FILE = "disk.yaml"
KINDS = ("published", "derived", "estimate", "measured")
FAMILIES = ("FPN", "C4")
_SCHEDULE = re.compile(r"_(\d+x|\d+k)$")


class CostError(SubmitError):
    """A cost table that is missing or malformed, or a GPU type without one; one line."""


def model_key(task):
    """The cost table's key of a task: its name without the schedule suffix (``_1x``, ``_24k``)."""
    return _SCHEDULE.sub("", task)


def detector_family(cfg):
    """``FPN`` or ``C4``: which of a mode's factors applies to a Detectron2 config."""
    return "FPN" if "fpn" in cfg.MODEL.BACKBONE.NAME.lower() else "C4"


@dataclasses.dataclass(frozen=True)
class Figure:
    """One model's figures on one GPU type."""

    key: str
    train_s_per_iter: float       # reference hardware, reference batch
    inference_s_per_image: float  # one GPU, batch 1 (None: not known)
    backbone: str                 # the backbone they were measured with (R-50, X-101-32x8d, ...)
    kind: str
    source: str


@dataclasses.dataclass(frozen=True)
class ModeFactor:
    """Multiplies a figure's training seconds per iteration for a transfer mode, per detector family."""

    factors: dict  # family -> factor
    kind: str
    source: str


@dataclasses.dataclass
class CostTable:
    """``configs/costs/<gpu>.yaml``."""

    name: str          # the file's stem: what --estimate and preflight take
    gpu: str           # the GPU's name as people write it (V100)
    path: str
    reference_gpus: int
    reference_batch: int
    source: str
    models: dict       # key -> Figure
    modes: dict        # mode -> ModeFactor

    def figure(self, task):
        """The :class:`Figure` of ``task`` (its exact name first, then :func:`model_key`), or None."""
        return self.models.get(task) or self.models.get(model_key(task))

    def mode_factor(self, mode, family):
        """``(factor, ModeFactor)`` of ``mode`` for a detector ``family``; factor 1 without an entry."""
        entry = self.modes.get(mode)
        if entry is None or family not in entry.factors:
            return 1.0, None
        return entry.factors[family], entry

    def gpu_seconds_per_image(self, figure):
        """Training GPU-seconds per image at the reference hardware."""
        return figure.train_s_per_iter * self.reference_gpus / self.reference_batch


@dataclasses.dataclass
class DiskTable:
    """``configs/costs/disk.yaml``."""

    path: str
    test_images: dict           # dataset name -> images
    bytes_per_detection: dict   # bbox, segm, keypoints, voc -> bytes (all prediction files together)
    kind: str
    source: str


def _number(value, where, positive=True):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (positive and value <= 0):
        raise CostError(f"{where}: expected a positive number, got {value!r}")
    return float(value)


def _text(data, key, where):
    value = data.get(key)
    if not isinstance(value, str) or not value.strip():
        raise CostError(f"{where}: '{key}' must be a non-empty text")
    return value.strip()


def _kind(data, where):
    kind = _text(data, "kind", where)
    if kind not in KINDS:
        raise CostError(f"{where}: kind {kind!r} is not one of {', '.join(KINDS)}")
    return kind


def _mapping(data, key, where):
    value = data.get(key)
    if not isinstance(value, dict) or not value:
        raise CostError(f"{where}: '{key}' must be a non-empty mapping")
    return value


def gpu_types(costs_dir=None):
    """The GPU types with a cost table (file stems), sorted."""
    folder = costs_dir or COSTS_DIR
    if not os.path.isdir(folder):
        return []
    return sorted(f[:-5] for f in os.listdir(folder) if f.endswith(".yaml") and f != DISK_FILE)


def _read(path):
    if not os.path.isfile(path):
        raise CostError(f"cost table not found: {path}")
    data = read_yaml(path, CostError)
    if not isinstance(data, dict):
        raise CostError(f"{path}: expected a mapping")
    return data


def load_cost_table(gpu="v100", costs_dir=None):
    """The :class:`CostTable` of GPU type ``gpu`` (a file stem of ``configs/costs/``, any case)."""
    folder = costs_dir or COSTS_DIR
    name = str(gpu).strip().lower()
    known = gpu_types(folder)
    if name not in known:
        raise CostError(f"no cost table for GPU type {gpu!r} (known: {', '.join(known) or 'none'}; add "
                        f"{os.path.join(folder, name + '.yaml')} with measured figures, e.g. from tools/preflight.py)")
    path = os.path.join(folder, name + ".yaml")
    data = _read(path)
    reference = _mapping(data, "reference", path)
    ref_gpus = int(_number(reference.get("gpus"), f"{path}: reference.gpus"))
    ref_batch = int(_number(reference.get("ims_per_batch"), f"{path}: reference.ims_per_batch"))
    models = {}
    for key, entry in _mapping(data, "models", path).items():
        where = f"{path}: models.{key}"
        if not isinstance(entry, dict):
            raise CostError(f"{where}: expected a mapping")
        inference = entry.get("inference_s_per_image")
        models[str(key)] = Figure(
            str(key), _number(entry.get("train_s_per_iter"), f"{where}.train_s_per_iter"),
            None if inference is None else _number(inference, f"{where}.inference_s_per_image"),
            _text(entry, "backbone", where), _kind(entry, where), _text(entry, "source", where))
    modes = {}
    for mode, entry in (data.get("modes") or {}).items():
        where = f"{path}: modes.{mode}"
        if not isinstance(entry, dict):
            raise CostError(f"{where}: expected a mapping")
        factors = _mapping(entry, "factor", where)
        unknown = sorted(set(factors) - set(FAMILIES))
        if unknown:
            raise CostError(f"{where}.factor: unknown detector family {unknown[0]!r} (use {', '.join(FAMILIES)})")
        modes[str(mode)] = ModeFactor({f: _number(v, f"{where}.factor.{f}") for f, v in factors.items()},
                                      _kind(entry, where), _text(entry, "source", where))
    return CostTable(name, _text(data, "gpu", path), path, ref_gpus, ref_batch, _text(data, "source", path),
                     models, modes)


def load_disk_table(costs_dir=None):
    """The :class:`DiskTable` (``configs/costs/disk.yaml``)."""
    path = os.path.join(costs_dir or COSTS_DIR, DISK_FILE)
    data = _read(path)
    images = {str(k): int(_number(v, f"{path}: test_images.{k}")) for k, v in _mapping(data, "test_images", path).items()}
    sizes = {str(k): _number(v, f"{path}: bytes_per_detection.{k}")
             for k, v in _mapping(data, "bytes_per_detection", path).items()}
    missing = sorted({"bbox", "segm", "keypoints", "voc"} - set(sizes))
    if missing:
        raise CostError(f"{path}: bytes_per_detection has no {', '.join(missing)}")
    return DiskTable(path, images, sizes, _kind(data, path), _text(data, "source", path))
