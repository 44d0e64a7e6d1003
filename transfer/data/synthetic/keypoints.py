"""COCO person keypoints files (``person_keypoints_{train,val}2017.json``) over the synthetic scenes."""
from transfer.data.synthetic.categories import COCO_KEYPOINT_NAMES, COCO_SKELETON, PERSON
from transfer.data.synthetic.coco import INFO, LICENSES, coco_annotation


def keypoints_file(images, records):
    """``(data, counts)`` of a keypoints file: the people of ``records`` with their 17 keypoints each."""
    annotations = []
    for img, objs in zip(images, records):
        for obj in objs:
            if obj["cls"] != PERSON:
                continue
            ann = coco_annotation(obj, img["id"])
            keypoints = obj.get("keypoints", [0] * 3 * len(COCO_KEYPOINT_NAMES))  # crowds: none
            ann.update(num_keypoints=sum(v > 0 for v in keypoints[2::3]), keypoints=keypoints)
            annotations.append(ann)
    category = {"supercategory": "person", "id": 1, "name": "person",
                "keypoints": list(COCO_KEYPOINT_NAMES), "skeleton": [list(p) for p in COCO_SKELETON]}
    data = {"info": INFO, "licenses": LICENSES, "images": images, "annotations": annotations,
            "categories": [category]}
    counts = {"images": len(images), "annotations": len(annotations),
              "crowd": sum(a["iscrowd"] for a in annotations),
              "keypoints": sum(a["num_keypoints"] for a in annotations)}
    return data, counts
