"""Dataset names: the builtin ones under ``$DETECTRON2_DATASETS`` and users' own COCO-format data.

Detectron2 registers its builtin datasets (``coco_2017_train``, ``voc_2007_test``, ``lvis_v1_val``, ...)
when ``detectron2.data`` is first imported, with paths under ``$DETECTRON2_DATASETS`` as set at that
moment. :func:`set_datasets_root` sets the variable and, if Detectron2 already registered the builtins
under another root, registers them again under the new one, so the order of imports does not matter.

:class:`DatasetError` is the one-line error of this module and of :mod:`transfer.data.validate`.
"""
import os
import sys

DEFAULT_ROOT = "./datasets"


class DatasetError(ValueError):
    """A dataset that is missing or malformed, with a one-line explanation.

    Raised in a DataLoader worker, it reaches the main process with the worker's traceback in its
    message (torch re-raises it so); ``str()`` gives the original line again.
    """

    def __str__(self):
        text = super().__str__()
        if "\nOriginal Traceback" in text:
            last = [line for line in text.splitlines() if line.strip()][-1]
            return last.split("DatasetError: ", 1)[-1].strip()
        return text


def datasets_root():
    """The folder the builtin dataset names read: ``$DETECTRON2_DATASETS``, else ``./datasets``."""
    return os.path.expanduser(os.environ.get("DETECTRON2_DATASETS", DEFAULT_ROOT))


def set_datasets_root(root):
    """Point the builtin dataset names at ``root`` (before or after Detectron2 was imported)."""
    root = os.path.expanduser(str(root))
    changed = os.environ.get("DETECTRON2_DATASETS") != root
    os.environ["DETECTRON2_DATASETS"] = root
    if changed and "detectron2.data.datasets.builtin" in sys.modules:
        _register_builtins(root)
    return root


def _register_builtins(root):
    """Register Detectron2's builtin datasets again under ``root``, replacing the old entries."""
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets import builtin

    original = DatasetCatalog.register

    def replace(name, func):
        if name in DatasetCatalog:
            DatasetCatalog.remove(name)
        MetadataCatalog.pop(name, None)
        original(name, func)

    DatasetCatalog.register = replace  # instance attribute shadows the method while we re-register
    try:
        for register in (builtin.register_all_coco, builtin.register_all_lvis,
                         builtin.register_all_cityscapes, builtin.register_all_cityscapes_panoptic,
                         builtin.register_all_pascal_voc, builtin.register_all_ade20k):
            register(root)
    finally:
        del DatasetCatalog.register


def register_coco_dataset(name, json_file, image_root, evaluator_type="coco"):
    """Register a user's COCO-format dataset (instances, optionally keypoints) under ``name``.

    Registering the same name again with the same files is a no-op; with other files it is an error.
    """
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets import register_coco_instances

    json_file, image_root = os.path.abspath(json_file), os.path.abspath(image_root)
    if name in DatasetCatalog.list():
        meta = MetadataCatalog.get(name)
        if getattr(meta, "json_file", None) == json_file and getattr(meta, "image_root", None) == image_root:
            return
        raise DatasetError(f"dataset name '{name}' is already registered with other files; choose another name")
    register_coco_instances(name, {}, json_file, image_root)
    MetadataCatalog.get(name).evaluator_type = evaluator_type


def register_from_config(specs):
    """Register ``[[name, json_file, image_root], ...]`` (the config key TRANSFER.COCO_DATASETS)."""
    for spec in specs:
        if not isinstance(spec, (list, tuple)) or len(spec) != 3 or not all(isinstance(s, str) for s in spec):
            raise DatasetError(
                f"TRANSFER.COCO_DATASETS entry {spec!r} must be [name, json_file, image_root]")
        register_coco_dataset(*spec)
