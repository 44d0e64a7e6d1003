"""LVIS v1 files (``lvis/lvis_v1_{train,val}.json``) over the synthetic COCO images."""
import importlib.util
import os
import runpy

from transfer.data.synthetic.categories import LVIS_NAME
from transfer.data.synthetic.coco import INFO, LICENSES
from transfer.data.synthetic.common import SyntheticDataError


def lvis_categories():
    """LVIS v1's 1203 categories (id, name, synonyms, synset, def, frequency) as Detectron2 ships them.

    Read from Detectron2's ``lvis_v1_categories.py`` (a plain literal) without importing Detectron2.
    """
    spec = importlib.util.find_spec("detectron2")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = os.path.join(folder, "data", "datasets", "lvis_v1_categories.py")
        if os.path.isfile(path):
            return runpy.run_path(path)["LVIS_CATEGORIES"]
    raise SyntheticDataError("kind 'lvis' needs Detectron2's LVIS v1 category list "
                             "(detectron2/data/datasets/lvis_v1_categories.py); install Detectron2 first")


def lvis_file(images, records, categories, rng):
    """``(data, counts)`` of an LVIS v1 file over the COCO images: polygons only (no crowds), federated
    image labels (negative and not-exhaustive categories drawn from ``rng``)."""
    by_name = {c["name"]: c["id"] for c in categories}
    ours = {name: by_name[lvis_name] for name, lvis_name in LVIS_NAME.items()}
    others = sorted(set(by_name.values()) - set(ours.values()))
    lvis_images, annotations = [], []
    for img, objs in zip(images, records):
        present = {ours[o["cls"]] for o in objs if not o.get("crowd")}
        # a crowd cluster is not annotated instance by instance: its category is not exhaustive
        not_exhaustive = sorted({ours[o["cls"]] for o in objs if o.get("crowd")})
        absent = [c for c in sorted(set(ours.values())) if c not in present and c not in not_exhaustive]
        negative = [c for c in absent if rng.random() < 0.8]
        negative += [int(c) for c in rng.choice(others, size=3, replace=False)]
        lvis_images.append({"id": img["id"], "coco_url": img["coco_url"], "height": img["height"],
                            "width": img["width"], "license": 1, "flickr_url": "",
                            "date_captured": img["date_captured"],
                            "not_exhaustive_category_ids": not_exhaustive,
                            "neg_category_ids": sorted(negative)})
        for obj in objs:
            if obj.get("crowd"):
                continue
            annotations.append({"id": len(annotations) + 1, "image_id": img["id"],
                                "category_id": ours[obj["cls"]], "segmentation": obj["segmentation"],
                                "area": float(obj["mask_area"]), "bbox": obj["bbox"]})
    image_count, instance_count = {}, {}
    for ann in annotations:
        instance_count[ann["category_id"]] = instance_count.get(ann["category_id"], 0) + 1
    for _, cat_id in {(a["image_id"], a["category_id"]) for a in annotations}:
        image_count[cat_id] = image_count.get(cat_id, 0) + 1
    counted = [{"id": c["id"], "name": c["name"], "synonyms": list(c["synonyms"]),
                        "synset": c["synset"], "def": c["def"], "frequency": c["frequency"],
                        "image_count": image_count.get(c["id"], 0),
                        "instance_count": instance_count.get(c["id"], 0)}
                       for c in sorted(categories, key=lambda c: c["id"])]
    info = dict(INFO, description="Synthetic LVIS v1-format data written by transfer.data.synthetic")
    data = {"info": info, "licenses": LICENSES, "images": lvis_images, "annotations": annotations,
            "categories": counted}
    return data, {"images": len(lvis_images), "annotations": len(annotations)}
