"""Datasets: the builtin names under ``$DETECTRON2_DATASETS``, validation, users' own COCO data.

Detectron2 registers its builtin datasets (``coco_2017_train``, ``voc_2007_test``, ``lvis_v1_val``, ...)
when ``detectron2.data`` is first imported, with paths under ``$DETECTRON2_DATASETS`` as set at that
moment. :func:`set_datasets_root` sets the variable and, if Detectron2 already registered the builtins
under another root, registers them again under the new one, so the order of imports does not matter.

:func:`validate_dataset` checks a dataset's files before any model is built or job submitted and
raises :class:`DatasetError` with one line naming the missing or broken file.
"""
import json
import os
import random
import sys
import xml.etree.ElementTree as ET


DEFAULT_ROOT = "./datasets"
_SAMPLE_IMAGES = 8


class DatasetError(ValueError):
    """A dataset that is missing or malformed, with a one-line explanation."""


def datasets_root():
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


# ----------------------------------------------------------------------------------------- validation

def _load_json(path, what):
    if not os.path.isfile(path):
        raise DatasetError(f"{what} annotation file not found: {path} "
                           f"(datasets root: {datasets_root()}; set DETECTRON2_DATASETS or see README)")
    try:
        with open(path) as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{path} is not a COCO-style annotation file (top level is not an object)")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DatasetError(f"{path} has no '{key}' list; not a COCO-style annotation file")
    if not data["images"]:
        raise DatasetError(f"{path} lists no images")
    return data


def _check_image(path):
    if not os.path.isfile(path):
        raise DatasetError(f"image file not found: {path}")
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.verify()
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise DatasetError(f"image file is unreadable: {path} ({e})") from None


def _sample(items, k):
    items = list(items)
    if len(items) <= k:
        return items
    return random.Random(0).sample(items, k)


def _check_annotations(data, path):
    image_ids = {img.get("id") for img in data["images"]}
    category_ids = {cat.get("id") for cat in data["categories"]}
    for ann in _sample(data["annotations"], 200):
        for key in ("image_id", "category_id", "bbox"):
            if key not in ann:
                raise DatasetError(f"{path}: annotation {ann.get('id')} has no '{key}'")
        if ann["image_id"] not in image_ids:
            raise DatasetError(f"{path}: annotation {ann.get('id')} refers to unknown image {ann['image_id']}")
        if ann["category_id"] not in category_ids:
            raise DatasetError(
                f"{path}: annotation {ann.get('id')} refers to unknown category {ann['category_id']}")
        bbox = ann["bbox"]
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)):
            raise DatasetError(f"{path}: annotation {ann.get('id')} has a malformed bbox {bbox!r}")


def _validate_coco(meta, lvis=False):
    data = _load_json(meta.json_file, "COCO" if not lvis else "LVIS")
    _check_annotations(data, meta.json_file)
    for img in _sample(data["images"], _SAMPLE_IMAGES):
        if lvis:
            if "coco_url" not in img:
                raise DatasetError(f"{meta.json_file}: image {img.get('id')} has no 'coco_url'")
            split_folder, file_name = img["coco_url"].split("/")[-2:]
            path = os.path.join(meta.image_root + split_folder, file_name)
        else:
            if "file_name" not in img:
                raise DatasetError(f"{meta.json_file}: image {img.get('id')} has no 'file_name'")
            path = os.path.join(meta.image_root, img["file_name"])
        _check_image(path)
    return len(data["images"])


def _validate_voc(meta):
    split_file = os.path.join(meta.dirname, "ImageSets", "Main", meta.split + ".txt")
    if not os.path.isfile(split_file):
        raise DatasetError(f"VOC split file not found: {split_file} "
                           f"(datasets root: {datasets_root()}; set DETECTRON2_DATASETS or see README)")
    with open(split_file) as f:
        ids = f.read().split()
    if len(ids) < 2:
        # Detectron2 reads split files with np.loadtxt, which returns a scalar for a single line
        raise DatasetError(f"{split_file} lists {len(ids)} image id(s); Detectron2 needs at least 2")
    for image_id in _sample(ids, _SAMPLE_IMAGES):
        xml_path = os.path.join(meta.dirname, "Annotations", image_id + ".xml")
        if not os.path.isfile(xml_path):
            raise DatasetError(f"VOC annotation file not found: {xml_path}")
        try:
            tree = ET.parse(xml_path)
        except ET.ParseError as e:
            raise DatasetError(f"{xml_path} is not valid XML: {e}") from None
        for obj in tree.findall("object"):
            name = obj.findtext("name")
            if name not in meta.thing_classes:
                raise DatasetError(f"{xml_path}: unknown VOC class '{name}'")
            if obj.find("bndbox") is None:
                raise DatasetError(f"{xml_path}: an object has no bndbox")
        _check_image(os.path.join(meta.dirname, "JPEGImages", image_id + ".jpg"))
    return len(ids)


def validate_dataset(name):
    """Check that dataset ``name`` is registered and its files exist and parse; return #images.

    Raises :class:`DatasetError` with one line naming the missing or broken file.
    """
    from detectron2.data import DatasetCatalog, MetadataCatalog

    if name not in DatasetCatalog.list():
        raise DatasetError(f"unknown dataset '{name}': not a Detectron2 builtin name and not registered "
                           "(register your own COCO-format data with TRANSFER.COCO_DATASETS)")
    meta = MetadataCatalog.get(name)
    evaluator_type = getattr(meta, "evaluator_type", None)
    if evaluator_type == "pascal_voc" or hasattr(meta, "dirname") and hasattr(meta, "split"):
        return _validate_voc(meta)
    if hasattr(meta, "json_file") and hasattr(meta, "image_root"):
        return _validate_coco(meta, lvis=evaluator_type == "lvis")
    # other registered datasets: let Detectron2 load them; a failure names what is wrong
    try:
        return len(DatasetCatalog.get(name))
    except (OSError, ValueError, KeyError, AssertionError) as e:
        raise DatasetError(f"dataset '{name}' cannot be loaded: {e}") from None


def validate_datasets(names):
    """Validate several datasets (e.g. cfg.DATASETS.TRAIN + cfg.DATASETS.TEST); return {name: #images}."""
    return {name: validate_dataset(name) for name in dict.fromkeys(names)}
