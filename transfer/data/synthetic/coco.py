"""COCO instances files (``instances_{train,val}2017.json``) over the synthetic scenes, and the pieces of
the COCO format that the keypoints and LVIS files share (info, licenses, one annotation)."""
from transfer.data.synthetic.categories import COCO_CATEGORIES, COCO_ID

INFO = {"description": "Synthetic COCO-format data written by transfer.data.synthetic", "url": "",
        "version": "1.0", "year": 2017, "contributor": "transfer.data.synthetic", "date_created": "2017/09/01"}
LICENSES = [{"url": "https://creativecommons.org/publicdomain/zero/1.0/", "id": 1,
             "name": "Public Domain (synthetic)"}]


def coco_annotation(obj, image_id):
    """The COCO annotation of a scene object (polygons, or uncompressed RLE for a crowd)."""
    crowd = obj.get("crowd", False)
    return {"segmentation": obj["rle"] if crowd else obj["segmentation"], "area": float(obj["mask_area"]),
            "iscrowd": int(crowd), "image_id": image_id, "bbox": obj["bbox"],
            "category_id": COCO_ID[obj["cls"]], "id": obj["id"]}


def instances_file(images, records):
    """``(data, counts)`` of an instances file: all 80 categories, every object of ``records`` (per image)."""
    annotations = [coco_annotation(obj, img["id"]) for img, objs in zip(images, records) for obj in objs]
    categories = [{"supercategory": sup, "id": i, "name": name} for i, name, sup in COCO_CATEGORIES]
    data = {"info": INFO, "licenses": LICENSES, "images": images, "annotations": annotations,
            "categories": categories}
    counts = {"images": len(images), "annotations": len(annotations),
              "crowd": sum(a["iscrowd"] for a in annotations),
              "empty_images": sum(not objs for objs in records)}
    return data, counts
