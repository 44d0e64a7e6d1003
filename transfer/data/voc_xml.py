"""A full check of a PASCAL VOC split: every annotation XML of the split, as Detectron2 reads it.

Detectron2's VOC loader (``load_voc_instances``) parses every XML of a split when the trainer builds
its data loader, after the model: a malformed file, an unknown class or a missing box there ends the
run in a traceback. :func:`check_voc_split` parses each XML of the split once, before anything is
built, and reads what the loader needs (size, each object's class and box) and what VOC evaluation
needs (``parse_rec``: pose, integer truncated/difficult flags and integer box corners), and checks
that every image file exists (one directory listing, no stat per file).
"""
import os
import xml.etree.ElementTree as ET

from transfer.data.datasets import DatasetError, datasets_root

__all__ = ["read_split_ids", "check_voc_split"]

_BOX = ("xmin", "ymin", "xmax", "ymax")


def read_split_ids(dirname, split):
    """The image ids of ``ImageSets/Main/<split>.txt`` (at least 2: Detectron2 reads the file with
    ``np.loadtxt``, which returns a scalar for one line)."""
    split_file = os.path.join(dirname, "ImageSets", "Main", split + ".txt")
    if not os.path.isfile(split_file):
        raise DatasetError(f"VOC split file not found: {split_file} "
                           f"(datasets root: {datasets_root()}; set DETECTRON2_DATASETS or see README)")
    with open(split_file) as f:
        ids = f.read().split()
    if len(ids) < 2:
        raise DatasetError(f"{split_file} lists {len(ids)} image id(s); Detectron2 needs at least 2")
    return split_file, ids


def _listing(folder):
    try:
        with os.scandir(folder) as it:
            return {e.name for e in it}
    except OSError:
        return set()


def _number(text, kind):
    try:
        return kind(text.strip())
    except (AttributeError, ValueError):
        return None


def _check_xml(xml_path, class_names):
    """``(objects, evaluation problem or None)``; raises for what Detectron2's loader cannot read."""
    try:
        root = ET.parse(xml_path).getroot()
    except ET.ParseError as e:
        raise DatasetError(f"{xml_path} is not valid XML: {e}") from None
    except OSError as e:
        raise DatasetError(f"cannot read {xml_path}: {e.strerror or e}") from None
    for key in ("height", "width"):
        if _number(root.findtext(f"size/{key}"), int) is None:
            raise DatasetError(f"{xml_path}: no integer size/{key}")
    problem = None
    objects = root.findall("object")
    for obj in objects:
        name = obj.findtext("name")
        if name not in class_names:
            raise DatasetError(f"{xml_path}: unknown VOC class {name!r} (Detectron2's VOC classes: "
                               f"{', '.join(class_names)})")
        box = obj.find("bndbox")
        if box is None or any(_number(box.findtext(k), float) is None for k in _BOX):
            raise DatasetError(f"{xml_path}: an object ({name}) has no bndbox with numeric {'/'.join(_BOX)}")
        if problem is None:  # what VOC evaluation (parse_rec) reads besides
            if obj.findtext("pose") is None:
                problem = f"{xml_path}: an object ({name}) has no <pose>"
            elif any(_number(obj.findtext(k), int) is None for k in ("truncated", "difficult")):
                problem = f"{xml_path}: an object ({name}) has no integer <truncated> and <difficult>"
            elif any(_number(box.findtext(k), int) is None for k in _BOX):
                problem = f"{xml_path}: an object ({name}) has a non-integer box corner"
    return len(objects), problem


def check_voc_split(dirname, split, class_names, check_files=True):
    """Check every XML of a VOC split (and that its images exist); return the split's summary."""
    split_file, ids = read_split_ids(dirname, split)
    annotations = os.path.join(dirname, "Annotations")
    present = _listing(annotations)
    missing = [i for i in ids if i + ".xml" not in present]
    if missing:
        more = f" (and {len(missing) - 1} more of {split_file})" if len(missing) > 1 else ""
        raise DatasetError(f"VOC annotation file not found: {os.path.join(annotations, missing[0] + '.xml')}{more}")
    images = os.path.join(dirname, "JPEGImages")
    if check_files:
        present = _listing(images)
        missing = [i for i in ids if i + ".jpg" not in present]
        if missing:
            more = f" (and {len(missing) - 1} more of {split_file})" if len(missing) > 1 else f" (listed in {split_file})"
            raise DatasetError(f"image file not found: {os.path.join(images, missing[0] + '.jpg')}{more}; "
                               f"datasets root: {datasets_root()}")
    problem, with_objects = None, 0
    for image_id in ids:
        count, found = _check_xml(os.path.join(annotations, image_id + ".xml"), class_names)
        with_objects += count > 0
        problem = problem or found
    files = [os.path.join(images, i + ".jpg") for i in ids]
    step = max(1, len(files) // 8)
    return {"images": len(ids), "annotations": None, "categories": [[i, n] for i, n in enumerate(class_names)],
            "images_with_annotations": with_objects, "evaluation_problem": problem, "sample_files": files[::step][:8]}
