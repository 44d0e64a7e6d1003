"""The COCO family: the images under ``coco/{train,val}2017`` and the annotation files over them.

One set of images serves three kinds: ``coco`` (instances files), ``keypoints`` (person keypoints
files) and ``lvis`` (LVIS v1 files, whose images live under ``coco/`` as in the real layout).
"""
import os

import numpy as np

from pretrain.common.fileio import write_bytes_atomic

from transfer.data.synthetic.coco import instances_file
from transfer.data.synthetic.common import jpeg_bytes, json_bytes, random_stream
from transfer.data.synthetic.keypoints import keypoints_file
from transfer.data.synthetic.lvis import lvis_categories, lvis_file
from transfer.data.synthetic.scenes import detection_scene, empty_flags


def write_coco_family(root, kinds, n_train, n_val, seed, image_size, colours="class"):
    """Write the COCO images and the annotation files of those of coco, keypoints, lvis in ``kinds``.

    Returns ``{kind: {split: counts}}`` for each of these kinds (LVIS splits: ``train``/``val``).
    """
    id_rng = random_stream(seed, "coco", "ids")
    ids = id_rng.choice(np.arange(1, 581930), size=n_train + n_val, replace=False)
    split_ids = {"train2017": sorted(int(i) for i in ids[:n_train]),
                 "val2017": sorted(int(i) for i in ids[n_train:])}
    categories = lvis_categories() if "lvis" in kinds else None
    os.makedirs(os.path.join(root, "coco", "annotations"), exist_ok=True)
    counts = {kind: {} for kind in ("coco", "keypoints", "lvis") if kind in kinds}
    next_ann_id = 1
    for split, image_ids in split_ids.items():
        rng = random_stream(seed, "coco", split)
        folder = os.path.join(root, "coco", split)
        os.makedirs(folder, exist_ok=True)
        images, records = [], []
        for image_id, empty in zip(image_ids, empty_flags(rng, len(image_ids))):
            scene = detection_scene(rng, image_size, bool(empty), colours=colours)
            file_name = f"{image_id:012d}.jpg"
            write_bytes_atomic(os.path.join(folder, file_name), jpeg_bytes(scene.pixels(rng)))
            images.append({"license": 1, "file_name": file_name,
                           "coco_url": f"http://images.cocodataset.org/{split}/{file_name}",
                           "height": scene.h, "width": scene.w, "date_captured": _date(rng),
                           "flickr_url": "", "id": image_id})
            for obj in scene.objects:
                obj["id"] = next_ann_id
                next_ann_id += 1
            records.append(scene.objects)
        year_split = split.replace("2017", "")
        if "coco" in kinds:
            data, counts["coco"][split] = instances_file(images, records)
            write_bytes_atomic(os.path.join(root, "coco", "annotations", f"instances_{split}.json"),
                               json_bytes(data))
        if "keypoints" in kinds:
            data, counts["keypoints"][split] = keypoints_file(images, records)
            write_bytes_atomic(os.path.join(root, "coco", "annotations", f"person_keypoints_{split}.json"),
                               json_bytes(data))
        if "lvis" in kinds:
            data, counts["lvis"][year_split] = lvis_file(images, records, categories,
                                                         random_stream(seed, "lvis", split))
            os.makedirs(os.path.join(root, "lvis"), exist_ok=True)
            write_bytes_atomic(os.path.join(root, "lvis", f"lvis_v1_{year_split}.json"), json_bytes(data))
    return counts


def _date(rng):
    """A random ``date_captured`` in 2013, as COCO's images have."""
    return (f"2013-{int(rng.integers(1, 13)):02d}-{int(rng.integers(1, 29)):02d} "
            f"{int(rng.integers(0, 24)):02d}:{int(rng.integers(0, 60)):02d}:{int(rng.integers(0, 60)):02d}")
