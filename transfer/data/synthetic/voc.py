"""PASCAL VOC: ``VOC2007`` (train, val, test) and ``VOC2012`` (train, val) with Annotations XML,
JPEGImages and ImageSets/Main split files (trainval = train + val), with real-looking image ids."""
import os
import xml.etree.ElementTree as ET

import numpy as np

from pretrain.common.fileio import write_bytes_atomic

from transfer.data.synthetic.categories import PERSON, VOC_NAME
from transfer.data.synthetic.common import jpeg_bytes, random_stream
from transfer.data.synthetic.scenes import detection_scene


def write_voc(root, n_train, n_val, seed, image_size, colours="class"):
    """Write VOC2007 (train, val, test) and VOC2012 (train, val); return ``{VOC<year>: {split: counts}}``.

    Objects smaller than 12 pixels (and a few others at random) are marked difficult, at least one per year.
    """
    counts = {}
    for year, splits in (("2007", {"train": n_train, "val": n_val, "test": n_val}),
                         ("2012", {"train": n_train, "val": n_val})):
        rng = random_stream(seed, "voc", year)
        total = sum(splits.values())
        if year == "2007":  # real ids: 000001 .. 009963, train/val/test interleaved
            names = [f"{int(i):06d}" for i in sorted(rng.choice(np.arange(1, 9964), total, replace=False))]
        else:  # real ids: 2008_000002 .. 2011_003276
            numbers = rng.choice(np.arange(4 * 6000), total, replace=False)
            names = sorted(f"{2008 + int(i) // 6000}_{int(i) % 6000 + 1:06d}" for i in numbers)
        order = rng.permutation(total)
        split_names, start = {}, 0
        for split, n in splits.items():
            split_names[split] = sorted(names[i] for i in order[start:start + n])
            start += n
        split_names["trainval"] = sorted(split_names["train"] + split_names["val"])

        scenes = {}
        for name in names:
            scenes[name] = detection_scene(rng, image_size, empty=False, crowd=False, colours=colours)
            for obj in scenes[name].objects:
                x0, y0, x1, y1 = obj["mask_box"]
                obj["difficult"] = int(min(x1 - x0, y1 - y0) + 1 < 12 or rng.random() < 0.06)
        objects = [o for s in scenes.values() for o in s.objects]
        if objects and not any(o["difficult"] for o in objects):  # every set has some difficult ones
            min(objects, key=lambda o: o["mask_area"])["difficult"] = 1

        base = os.path.join(root, f"VOC{year}")
        for sub in ("Annotations", "JPEGImages", os.path.join("ImageSets", "Main")):
            os.makedirs(os.path.join(base, sub), exist_ok=True)
        for name in names:
            scene = scenes[name]
            write_bytes_atomic(os.path.join(base, "JPEGImages", name + ".jpg"), jpeg_bytes(scene.pixels(rng)))
            write_bytes_atomic(os.path.join(base, "Annotations", name + ".xml"), _voc_xml(year, name, scene))
        counts[f"VOC{year}"] = {}
        for split in (*splits, "trainval"):
            ids = split_names[split]
            write_bytes_atomic(os.path.join(base, "ImageSets", "Main", split + ".txt"),
                               "".join(i + "\n" for i in ids).encode())
            objs = [o for i in ids for o in scenes[i].objects]
            counts[f"VOC{year}"][split] = {"images": len(ids), "annotations": len(objs),
                                          "difficult": sum(o["difficult"] for o in objs)}
    return counts


def _voc_xml(year, name, scene):
    """The Annotations XML of one image, as the VOC files lay it out (tab-indented)."""

    def sub(parent, tag, text=None):
        element = ET.SubElement(parent, tag)
        if text is not None:
            element.text = str(text)
        return element

    annotation = ET.Element("annotation")
    sub(annotation, "folder", f"VOC{year}")
    sub(annotation, "filename", name + ".jpg")
    source = sub(annotation, "source")
    sub(source, "database", f"The VOC{year} Database")
    sub(source, "annotation", f"PASCAL VOC{year}")
    sub(source, "image", "synthetic")
    size = sub(annotation, "size")
    sub(size, "width", scene.w)
    sub(size, "height", scene.h)
    sub(size, "depth", 3)
    sub(annotation, "segmented", 0)
    for obj in scene.objects:
        element = sub(annotation, "object")
        sub(element, "name", VOC_NAME[obj["cls"]])
        sub(element, "pose", "Frontal" if obj["cls"] == PERSON else "Unspecified")
        sub(element, "truncated", 0)
        sub(element, "difficult", obj["difficult"])
        box = sub(element, "bndbox")
        x0, y0, x1, y1 = obj["mask_box"]  # inclusive 0-based pixels -> VOC's inclusive 1-based
        for tag, value in (("xmin", x0 + 1), ("ymin", y0 + 1), ("xmax", x1 + 1), ("ymax", y1 + 1)):
            sub(box, tag, value)
    ET.indent(annotation, space="\t")
    return ET.tostring(annotation, encoding="utf-8") + b"\n"
