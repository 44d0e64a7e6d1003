"""Dataset checks before any model is built or job submitted: everything a run will read, once.

Two layers:

- :func:`dataset_summary` checks one dataset completely and fast: every annotation of a COCO or LVIS
  file (:mod:`transfer.data.coco_json`: ids, categories against Detectron2's metadata, boxes, keypoint
  lengths, polygons), every XML of a VOC split (:mod:`transfer.data.voc_xml`), that every listed image
  exists (one directory listing per folder), and decodes a sample of 8 images. Its summary is cached
  by what it read (:mod:`transfer.data.check_cache`): an unchanged dataset is not checked again.
- :func:`check_run_data` adds what the run's config needs of its datasets: training (classes within
  ``NUM_CLASSES``, masks for ``MASK_ON``, keypoints and their flip map for ``KEYPOINT_ON``, some image
  with annotations) and evaluation (what the COCO, LVIS or VOC evaluator reads: ``area``/``iscrowd``,
  LVIS category ``frequency`` and image label lists, OKS sigmas per keypoint, VOC's integer fields).

Every problem raises :class:`~transfer.data.datasets.DatasetError` with one line naming the file.
Images that turn out unreadable during training are skipped (:mod:`transfer.data.unreadable`).
"""
import os

from transfer.data import check_cache
from transfer.data.datasets import DatasetError

__all__ = ["dataset_summary", "validate_dataset", "validate_datasets", "check_run_data"]

# COCO's keypoint OKS sigmas are 17: what COCO evaluation uses when TEST.KEYPOINT_OKS_SIGMAS is empty
_COCO_OKS_KEYPOINTS = 17


def _check_image(path):
    from PIL import Image, UnidentifiedImageError

    if not os.path.isfile(path):
        raise DatasetError(f"image file not found: {path}")
    try:
        with Image.open(path) as im:
            im.load()  # decodes: a truncated JPEG fails here (verify() would pass it)
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as e:
        raise DatasetError(f"image file is unreadable: {path} ({e})") from None


def _kind(meta):
    evaluator_type = getattr(meta, "evaluator_type", None)
    if evaluator_type == "pascal_voc" or hasattr(meta, "dirname") and hasattr(meta, "split"):
        return "voc"
    if hasattr(meta, "json_file") and hasattr(meta, "image_root"):
        return "lvis" if evaluator_type == "lvis" else "coco"
    return "other"


def _expected(meta, kind):
    """What Detectron2's metadata already fixes before loading: ``({id: name} or None, #keypoints or None)``."""
    classes = getattr(meta, "thing_classes", None)
    keypoints = getattr(meta, "keypoint_names", None)
    keypoints = len(keypoints) if keypoints else None
    if kind == "lvis":
        return ({i + 1: n for i, n in enumerate(classes)} if classes else None), keypoints
    id_map = getattr(meta, "thing_dataset_id_to_contiguous_id", None)
    if classes and id_map:
        return {int(i): classes[c] for i, c in id_map.items()}, keypoints
    return None, keypoints


def _image_folders(summary, kind, meta):
    if kind == "voc":
        return [os.path.join(meta.dirname, "JPEGImages"), os.path.join(meta.dirname, "Annotations")]
    return summary.pop("image_folders", [])


def _registered(name):
    """``(meta, kind)`` of a registered dataset name; unknown names raise the one-line error."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    if name not in DatasetCatalog.list():
        raise DatasetError(f"unknown dataset '{name}': not a Detectron2 builtin name and not registered "
                           "(register your own COCO-format data with TRANSFER.COCO_DATASETS)")
    meta = MetadataCatalog.get(name)
    return meta, _kind(meta)


def _cache_key(meta, kind):
    """The cache key of a dataset: what the check reads (files, sizes, modification times) and compares."""
    expected, keypoints = _expected(meta, kind)
    if kind == "voc":
        split_file = os.path.join(meta.dirname, "ImageSets", "Main", meta.split + ".txt")
        xml_dir = os.path.join(meta.dirname, "Annotations")
        stamps = [check_cache.file_stamp(split_file)]
        if stamps[0][1] >= 0:
            with open(split_file) as f:
                stamps += [check_cache.file_stamp(os.path.join(xml_dir, i + ".xml")) for i in f.read().split()]
        parts = {"classes": list(meta.thing_classes)}
    else:
        stamps = [check_cache.file_stamp(meta.json_file)]
        parts = {"image_root": os.path.abspath(meta.image_root), "expected": expected, "keypoints": keypoints}
    return check_cache.key_of({"kind": kind, "files": stamps, **parts})


def cached_summary(name):
    """The cached summary of dataset ``name`` if its files are unchanged since a check, else None."""
    meta, kind = _registered(name)
    return None if kind == "other" else check_cache.lookup(_cache_key(meta, kind))


def dataset_summary(name, use_cache=True, parsed=None):
    """Check dataset ``name`` (registered with Detectron2) and return its summary: ``images``,
    ``annotations``, ``categories`` ([[id, name], ...]) and what training and evaluation need to
    know (see :func:`check_run_data`). ``parsed``: a COCO or LVIS dataset's annotation file already
    parsed whole (:func:`transfer.data.coco_json.parse_whole`). Raises :class:`DatasetError` (one line)."""
    from detectron2.data import DatasetCatalog

    meta, kind = _registered(name)
    if kind == "other":  # other registered datasets: let Detectron2 load them; a failure names what is wrong
        try:
            return {"kind": kind, "images": len(DatasetCatalog.get(name))}
        except (OSError, ValueError, KeyError, AssertionError) as e:
            raise DatasetError(f"dataset '{name}' cannot be loaded: {e}") from None
    key = _cache_key(meta, kind)
    summary = check_cache.lookup(key) if use_cache else None
    if summary is not None:
        return summary
    summary = _check(kind, meta, parsed)
    summary["kind"] = kind
    folders = _image_folders(summary, kind, meta)
    if use_cache:
        check_cache.store(key, summary, folders)
    return summary


def _check(kind, meta, parsed=None):
    expected, keypoints = _expected(meta, kind)
    if kind == "voc":
        from transfer.data.voc_xml import check_voc_split

        summary = check_voc_split(meta.dirname, meta.split, list(meta.thing_classes))
    else:
        from transfer.data.coco_json import check_coco_json

        summary = check_coco_json(meta.json_file, meta.image_root, lvis=kind == "lvis",
                                  expected_categories=expected, expected_keypoints=keypoints, parsed=parsed)
    for path in summary["sample_files"]:
        _check_image(path)
    return summary


def validate_dataset(name):
    """Check that dataset ``name`` is registered and its files exist and parse; return #images."""
    return dataset_summary(name)["images"]


def validate_datasets(names):
    """Validate several datasets (e.g. cfg.DATASETS.TRAIN + cfg.DATASETS.TEST); return {name: #images}."""
    return {name: validate_dataset(name) for name in dict.fromkeys(names)}


# ------------------------------------------------------------------------------ what the config needs

def _model_classes(cfg):
    if cfg.MODEL.META_ARCHITECTURE == "RetinaNet":
        return "MODEL.RETINANET.NUM_CLASSES", cfg.MODEL.RETINANET.NUM_CLASSES
    return "MODEL.ROI_HEADS.NUM_CLASSES", cfg.MODEL.ROI_HEADS.NUM_CLASSES


def _source(name, summary):
    from detectron2.data import MetadataCatalog

    meta = MetadataCatalog.get(name)
    if summary.get("kind") == "voc":
        return os.path.join(meta.dirname, "ImageSets", "Main", meta.split + ".txt")
    return getattr(meta, "json_file", name)


def _num_classes(name, summary):
    from detectron2.data import MetadataCatalog

    if summary.get("kind") == "lvis":
        classes = getattr(MetadataCatalog.get(name), "thing_classes", None)
        if classes:
            return len(classes)
    return len(summary.get("categories") or [])


def _check_training(cfg, name, summary, first):
    from detectron2.data import MetadataCatalog

    key, model_classes = _model_classes(cfg)
    classes = _num_classes(name, summary)
    where = f"DATASETS.TRAIN {name} ({_source(name, summary)})"
    if classes > model_classes:
        raise DatasetError(f"{where} has {classes} categories but {key} is {model_classes}")
    if cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS and summary.get("images_with_annotations") == 0:
        raise DatasetError(f"{where}: no image has an annotation, so none is left to train on")
    if cfg.MODEL.MASK_ON and (summary["kind"] == "voc" or not summary.get("masks_all", False)):
        what = "has no masks" if summary["kind"] == "voc" else \
            f"has annotations without a usable segmentation (first: id {summary.get('first_without_mask')})"
        raise DatasetError(f"{where} {what}, but MODEL.MASK_ON is set")
    if cfg.MODEL.KEYPOINT_ON:
        count = summary.get("keypoints")
        if not count or not summary.get("keypoints_all"):
            raise DatasetError(f"{where} has annotations without keypoints, but MODEL.KEYPOINT_ON is set")
        wanted = cfg.MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS
        if count != wanted:
            raise DatasetError(f"{where} has {count} keypoints per instance but "
                               f"MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS is {wanted}")
        meta = MetadataCatalog.get(name)
        if first and not (getattr(meta, "keypoint_names", None) and getattr(meta, "keypoint_flip_map", None) is not None):
            raise DatasetError(f"{where}: Detectron2 needs keypoint_names and keypoint_flip_map in the dataset's "
                               "metadata to train keypoints (set them with MetadataCatalog.get(name).set(...))")


def _check_evaluation(cfg, name, summary):
    from detectron2.data import MetadataCatalog

    meta = MetadataCatalog.get(name)
    evaluator = meta.get("evaluator_type", "coco")
    where = f"DATASETS.TEST {name} ({_source(name, summary)})"
    if evaluator not in ("coco", "lvis", "pascal_voc"):
        raise DatasetError(f"{where}: no evaluator for evaluator_type {evaluator!r} (coco, lvis, pascal_voc)")
    key, model_classes = _model_classes(cfg)
    classes = _num_classes(name, summary)
    if model_classes > classes:
        raise DatasetError(f"{where} has {classes} categories but {key} is {model_classes}: its evaluation "
                           f"would fail on predicted classes it does not have (set {key} {classes})")
    if evaluator == "pascal_voc":
        if summary.get("evaluation_problem"):
            raise DatasetError(f"{summary['evaluation_problem']}, which VOC evaluation reads")
        return
    needs = "LVIS evaluation" if evaluator == "lvis" else "COCO evaluation"
    if summary.get("missing_area"):
        raise DatasetError(f"{where}: {summary['missing_area']} annotations have no 'area', which {needs} needs")
    if evaluator == "lvis":
        if summary.get("lvis_frequency_missing_count"):
            raise DatasetError(
                f"{where}: {summary['lvis_frequency_missing_count']} categories (first: id "
                f"{summary['lvis_frequency_missing'][0]}) have no 'frequency' ('r', 'c' or 'f'), which LVIS "
                "evaluation needs for APr/APc/APf; use the official LVIS v1 file")
        if summary.get("lvis_image_lists_missing"):
            raise DatasetError(f"{where}: {summary['lvis_image_lists_missing']} images have no "
                               "'neg_category_ids'/'not_exhaustive_category_ids' lists, which LVIS evaluation needs")
        return
    if summary.get("missing_iscrowd"):
        raise DatasetError(f"{where}: {summary['missing_iscrowd']} annotations have no 'iscrowd', which {needs} needs")
    if cfg.MODEL.MASK_ON and not summary.get("segmentation_all", False):
        raise DatasetError(f"{where} has annotations without 'segmentation', which mask evaluation needs")
    if cfg.MODEL.KEYPOINT_ON:
        sigmas = len(cfg.TEST.KEYPOINT_OKS_SIGMAS) or _COCO_OKS_KEYPOINTS
        count = summary.get("keypoints")
        if not count or not summary.get("first_has_keypoints"):
            raise DatasetError(f"{where} has no keypoints (its first annotation), which keypoint evaluation needs")
        if count != sigmas:
            source = "TEST.KEYPOINT_OKS_SIGMAS has" if cfg.TEST.KEYPOINT_OKS_SIGMAS else "COCO's default OKS sigmas are"
            raise DatasetError(f"{where} has {count} keypoints per instance but {source} {sigmas} "
                               "(set TEST.KEYPOINT_OKS_SIGMAS, one per keypoint)")


def check_run_data(cfg, eval_only=False, use_cache=True, defer_training=False):
    """Check the datasets of a run of ``cfg`` (its training sets unless ``eval_only``, its test sets) and
    what the config needs of them; return ``{name: summary}``. Raises :class:`DatasetError` (one line).

    ``defer_training``: a COCO or LVIS training set (not also a test set) whose check is not cached is
    left out of the returned dict: the run checks it inside its own loading of the file, which parses it
    anyway (:func:`transfer.data.shared_parse.check_while_loading`)."""
    train = [] if eval_only else list(cfg.DATASETS.TRAIN)
    test = list(cfg.DATASETS.TEST)
    summaries = {}
    for name in dict.fromkeys(train + test):
        if defer_training and name not in test and _deferrable(name, use_cache):
            continue
        summaries[name] = dataset_summary(name, use_cache)
    for i, name in enumerate(train):
        if name in summaries:
            check_training_data(cfg, name, summaries[name], first=i == 0)
    for name in test:
        if summaries[name].get("kind") != "other":
            _check_evaluation(cfg, name, summaries[name])
    return summaries


def _deferrable(name, use_cache):
    """A COCO or LVIS dataset whose annotation file exists and whose check is not cached."""
    meta, kind = _registered(name)
    if kind not in ("coco", "lvis") or not os.path.isfile(meta.json_file):
        return False  # a missing file is named now, with the datasets root
    return not (use_cache and check_cache.lookup(_cache_key(meta, kind)) is not None)


def check_training_data(cfg, name, summary, first):
    """What ``cfg`` needs of training set ``name`` (``first``: the first of DATASETS.TRAIN), from its summary."""
    if summary.get("kind") != "other":
        _check_training(cfg, name, summary, first)
