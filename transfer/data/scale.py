"""Annotation files of real size, fast: COCO-train- and LVIS-train-sized json with real-looking polygons.

For benchmarks of what grows with a dataset (validation, registration, Detectron2's own loading), not
for training: the images are one small JPEG hard-linked under every listed name (:func:`link_images`),
so a folder of 118k "images" costs no disk space. Every file is in the real format, with the real
category tables (COCO's 80, LVIS v1's 1203 with their frequency groups), so Detectron2 loads it under
its builtin metadata.

Sizes as in the real training sets: :data:`COCO_TRAIN` (118,287 images, 860,001 annotations of which
about 1% crowds with uncompressed RLE) and :data:`LVIS_TRAIN` (100,170 images, 1,270,141 annotations).
A COCO-train-sized file is about 400 MB (the real one: 448 MB). The output depends only on the
arguments. Written in chunks: memory stays far below the size of the file.
"""
import io
import os

import numpy as np

from pretrain.common.fileio import atomic_path

__all__ = ["COCO_TRAIN", "LVIS_TRAIN", "make_coco_scale_json", "make_lvis_scale_json", "link_images",
           "scaled"]

COCO_TRAIN = {"images": 118287, "annotations": 860001}
LVIS_TRAIN = {"images": 100170, "annotations": 1270141}
_CHUNK = 20000


def scaled(sizes, fraction):
    """``(num_images, num_annotations)``: ``sizes`` (e.g. :data:`COCO_TRAIN`) times ``fraction``, at least 1."""
    return tuple(max(1, int(round(sizes[k] * fraction))) for k in ("images", "annotations"))


def _dumps(obj):
    import msgspec

    return msgspec.json.encode(obj, enc_hook=lambda a: a.tolist())  # numpy arrays and numbers as lists and numbers


def _image_records(rng, num_images, split):
    ids = np.sort(rng.choice(np.arange(1, max(581930, 2 * num_images)), size=num_images, replace=False))
    heights = rng.choice([360, 375, 427, 480, 500, 512, 640], size=num_images)
    widths = rng.choice([480, 500, 575, 612, 640], size=num_images)
    months, days = rng.integers(1, 13, num_images), rng.integers(1, 29, num_images)
    images = []
    for i, image_id in enumerate(ids.tolist()):
        name = f"{image_id:012d}.jpg"
        images.append({"license": int(i % 8) + 1, "file_name": name,
                       "coco_url": f"http://images.cocodataset.org/{split}/{name}",
                       "height": int(heights[i]), "width": int(widths[i]),
                       "date_captured": f"2013-{months[i]:02d}-{days[i]:02d} 12:00:00",
                       "flickr_url": "", "id": image_id})
    return images


def _polygons(rng, n, heights, widths):
    """``n`` star-shaped polygons (6 to 40 vertices, two decimals) inside images of the given sizes:
    (flat coordinate arrays, bboxes [x, y, w, h], areas)."""
    k = rng.integers(6, 41, n)
    cx, cy = rng.uniform(0.1, 0.9, n) * widths, rng.uniform(0.1, 0.9, n) * heights
    radius = rng.uniform(0.02, 0.3, n) * np.minimum(widths, heights)
    owner = np.repeat(np.arange(n), k)
    starts = np.concatenate([[0], np.cumsum(k)[:-1]])
    angle = (np.arange(owner.size) - starts[owner]) / k[owner] * 2 * np.pi + rng.uniform(0, 0.2, owner.size)
    r = radius[owner] * rng.uniform(0.6, 1.0, owner.size)
    x = np.clip(np.round(cx[owner] + r * np.cos(angle), 2), 0, widths[owner])
    y = np.clip(np.round(cy[owner] + r * np.sin(angle), 2), 0, heights[owner])
    x0, x1 = np.minimum.reduceat(x, starts), np.maximum.reduceat(x, starts)
    y0, y1 = np.minimum.reduceat(y, starts), np.maximum.reduceat(y, starts)
    bboxes = np.round(np.stack([x0, y0, x1 - x0, y1 - y0], 1), 2)
    nxt = np.arange(owner.size) + 1
    nxt[np.cumsum(k) - 1] = starts
    areas = np.round(np.abs(np.add.reduceat(x * y[nxt] - x[nxt] * y, starts)) / 2, 2)
    flat = np.stack([x, y], 1).ravel()
    return np.split(flat, 2 * np.cumsum(k)[:-1]), bboxes, areas


def _crowd_rle(rng, h, w):
    """An uncompressed RLE of about 50 runs covering an ``h`` x ``w`` image (COCO's crowd format)."""
    cuts = np.unique(rng.integers(1, h * w, size=50))
    counts = np.diff(np.concatenate([[0], cuts, [h * w]]))
    return {"counts": counts.tolist(), "size": [int(h), int(w)]}


def _write(path, head, images, annotation_chunks, categories):
    """Stream the json: ``head`` keys, images, annotations (an iterable of lists), categories."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(b"{")
        for key, value in head.items():
            f.write(_dumps(key) + b":" + _dumps(value) + b",")
        f.write(b'"images":' + _dumps(images) + b',"annotations":[')
        first = True
        for chunk in annotation_chunks:
            if chunk:
                f.write((b"" if first else b",") + _dumps(chunk)[1:-1])
                first = False
        f.write(b'],"categories":' + _dumps(categories) + b"}")
    return os.path.getsize(path)


def _annotation_chunks(rng, images, num_annotations, category_ids, crowd_fraction, lvis):
    image_ids = np.array([img["id"] for img in images])
    heights = np.array([img["height"] for img in images], dtype=np.float64)
    widths = np.array([img["width"] for img in images], dtype=np.float64)
    # most images have a few objects, some many, about 1% none (COCO: 7.3 per image on average)
    weights = rng.gamma(1.2, 1.0, len(images)) * (rng.random(len(images)) > 0.01)
    weights = weights / weights.sum() if weights.sum() > 0 else np.full(len(images), 1 / len(images))
    next_id = 1
    for start in range(0, num_annotations, _CHUNK):
        n = min(_CHUNK, num_annotations - start)
        owner = rng.choice(len(images), size=n, p=weights)
        polys, bboxes, areas = _polygons(rng, n, heights[owner], widths[owner])
        cats = rng.choice(category_ids, size=n)
        crowd = rng.random(n) < crowd_fraction
        second = rng.random(n) < 0.1  # some objects in two parts: two polygons
        chunk = []
        for i in range(n):
            ann = {"segmentation": [polys[i]] if not second[i] else [polys[i][:-6], polys[i][-6:]],
                   "area": float(areas[i]), "iscrowd": 0, "image_id": int(image_ids[owner[i]]),
                   "bbox": bboxes[i], "category_id": int(cats[i]), "id": next_id}
            if lvis:
                del ann["iscrowd"]
            elif crowd[i]:
                ann["iscrowd"] = 1
                ann["segmentation"] = _crowd_rle(rng, int(heights[owner[i]]), int(widths[owner[i]]))
            chunk.append(ann)
            next_id += 1
        yield chunk


def make_coco_scale_json(path, num_images=COCO_TRAIN["images"], num_annotations=COCO_TRAIN["annotations"],
                         seed=0, image_root=None):
    """Write a COCO instances file (train2017 layout, the 80 COCO categories) of the given size.

    ``image_root``: also make every listed image exist there (:func:`link_images`). Returns
    ``{"images", "annotations", "bytes"}``.
    """
    from transfer.data.synthetic.categories import COCO_CATEGORIES

    rng = np.random.default_rng([seed, 17])
    images = _image_records(rng, num_images, "train2017")
    categories = [{"supercategory": sup, "id": i, "name": name} for i, name, sup in COCO_CATEGORIES]
    head = {"info": {"description": "COCO-train-sized file written by transfer.data.scale", "year": 2017},
            "licenses": [{"url": "", "id": i, "name": f"license {i}"} for i in range(1, 9)]}
    size = _write(path, head, images,
                  _annotation_chunks(rng, images, num_annotations, [c["id"] for c in categories], 0.01, False),
                  categories)
    if image_root:
        link_images(image_root, [img["file_name"] for img in images])
    return {"images": num_images, "annotations": num_annotations, "bytes": size}


def make_lvis_scale_json(path, num_images=LVIS_TRAIN["images"], num_annotations=LVIS_TRAIN["annotations"],
                         seed=0, image_root=None):
    """Write an LVIS v1 file (1203 categories with frequency, federated image labels) of the given size.

    ``image_root``: the folder of the COCO ``train2017`` images (LVIS reads them through ``coco_url``);
    every listed image is made to exist there. Returns ``{"images", "annotations", "bytes"}``.
    """
    from transfer.data.synthetic.lvis import lvis_categories

    rng = np.random.default_rng([seed, 1203])
    images = _image_records(rng, num_images, "train2017")
    cats = sorted(lvis_categories(), key=lambda c: c["id"])
    ids = np.array([c["id"] for c in cats])
    for img in images:
        img["neg_category_ids"] = sorted(int(c) for c in rng.choice(ids, size=int(rng.integers(0, 12)),
                                                                     replace=False))
        img["not_exhaustive_category_ids"] = sorted(int(c) for c in rng.choice(ids, size=int(rng.integers(0, 3)),
                                                                                replace=False))
        del img["file_name"]  # LVIS v1 images are named by coco_url only
    categories = [{"id": c["id"], "name": c["name"], "synonyms": list(c["synonyms"]), "synset": c["synset"],
                   "def": c["def"], "frequency": c["frequency"], "image_count": 0, "instance_count": 0}
                  for c in cats]
    head = {"info": {"description": "LVIS-train-sized file written by transfer.data.scale", "year": 2020},
            "licenses": [{"url": "", "id": i, "name": f"license {i}"} for i in range(1, 9)]}
    size = _write(path, head, images, _annotation_chunks(rng, images, num_annotations, ids, 0.0, True), categories)
    if image_root:
        link_images(image_root, [img["coco_url"].rsplit("/", 1)[1] for img in images])
    return {"images": num_images, "annotations": num_annotations, "bytes": size}


def _tiny_jpeg():
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (32, 24), (120, 90, 60)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def link_images(folder, file_names):
    """Make every name in ``file_names`` exist in ``folder``: one small real JPEG, hard-linked (copied
    where the file system has no hard links). Existing files are left alone."""
    os.makedirs(folder, exist_ok=True)
    source = os.path.join(folder, ".scale_source.jpg")
    if not os.path.isfile(source):
        with atomic_path(source) as tmp, open(tmp, "wb") as f:
            f.write(_tiny_jpeg())
    present = set(os.listdir(folder))
    for name in file_names:
        if name in present:
            continue
        target = os.path.join(folder, name)
        try:
            os.link(source, target)
        except OSError:
            with open(source, "rb") as src, open(target, "wb") as dst:
                dst.write(src.read())
    return len(file_names)
