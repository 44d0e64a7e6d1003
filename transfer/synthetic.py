"""Real-format synthetic datasets: the public layouts Detectron2's builtin dataset names read.

:func:`write_synthetic` writes, under one root (use it as ``$DETECTRON2_DATASETS``)::

    coco/train2017/000000xxxxxx.jpg, coco/val2017/...          images shared by coco, keypoints, lvis
    coco/annotations/instances_{train,val}2017.json             kind "coco"
    coco/annotations/person_keypoints_{train,val}2017.json      kind "keypoints"
    lvis/lvis_v1_{train,val}.json                               kind "lvis" (images under coco/)
    VOC2007/{Annotations,JPEGImages,ImageSets/Main}/...         kind "voc" (train, val, trainval, test)
    VOC2012/{Annotations,JPEGImages,ImageSets/Main}/...         kind "voc" (train, val, trainval)
    imagenet/{train,val}/<wnid>/*.JPEG                          kind "imagenet" (pretraining, kNN monitor)
    cdp/{train,val}/*.png + labels.csv                          kind "cdp" (MI analysis; only when asked for)
    SYNTHETIC.json                                              what was written, with which parameters

The detection images show a few object classes that are easy to tell apart (a shape with its own
colour and texture each, see :data:`SHAPES`, plus front-facing stick figures for ``person``) at varied
scale and position on a noisy, smoothly varying background, so that a detector trained for a few
hundred iterations on a CPU reaches a clearly non-zero AP. Each class maps onto a real COCO, VOC
and LVIS category. Objects never share a pixel (their boxes may overlap), so every polygon is
exactly the drawn object: the image is painted from the rasterized annotation itself.

Sizes: ``num_images`` is the number of images in each training split (COCO train2017, VOC train,
LVIS train) and, for ImageNet, the number of training images per class; validation and test splits
get ``max(2, num_images // 4)`` (per class for ImageNet). The output depends only on the arguments:
the same seed gives byte-identical files, and each kind draws from its own random stream, so
writing a subset of the kinds gives the same files for those kinds.

The CDP kind (colour x digit x position, Lee et al.'s dataset for mutual-information analysis) is written
only when named in ``kinds`` (it is not one of the default :data:`KINDS`); see :func:`make_cdp`.
"""
import io
import json
import os
import shutil
import xml.etree.ElementTree as ET
import zlib
from collections import namedtuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pycocotools import mask as mask_util

KINDS = ("coco", "keypoints", "voc", "lvis", "imagenet")
OPTIONAL_KINDS = ("cdp",)  # written only when asked for
DEFAULT_NUM_IMAGES = 64
DEFAULT_IMAGE_SIZE = 192  # longest image side; each image's is drawn from [0.75, 1] x this
MIN_IMAGE_SIZE = 96
JPEG_QUALITY = 90
MARKER = "SYNTHETIC.json"


class SyntheticDataError(ValueError):
    """Bad arguments or an output folder that must not be written to, with a one-line message."""


# ------------------------------------------------------------------------------ real category tables

# The 80 COCO 2017 categories: (id, name, supercategory), ids 1..90 with COCO's gaps.
COCO_CATEGORIES = (
    (1, "person", "person"), (2, "bicycle", "vehicle"), (3, "car", "vehicle"),
    (4, "motorcycle", "vehicle"), (5, "airplane", "vehicle"), (6, "bus", "vehicle"),
    (7, "train", "vehicle"), (8, "truck", "vehicle"), (9, "boat", "vehicle"),
    (10, "traffic light", "outdoor"), (11, "fire hydrant", "outdoor"), (13, "stop sign", "outdoor"),
    (14, "parking meter", "outdoor"), (15, "bench", "outdoor"), (16, "bird", "animal"),
    (17, "cat", "animal"), (18, "dog", "animal"), (19, "horse", "animal"), (20, "sheep", "animal"),
    (21, "cow", "animal"), (22, "elephant", "animal"), (23, "bear", "animal"), (24, "zebra", "animal"),
    (25, "giraffe", "animal"), (27, "backpack", "accessory"), (28, "umbrella", "accessory"),
    (31, "handbag", "accessory"), (32, "tie", "accessory"), (33, "suitcase", "accessory"),
    (34, "frisbee", "sports"), (35, "skis", "sports"), (36, "snowboard", "sports"),
    (37, "sports ball", "sports"), (38, "kite", "sports"), (39, "baseball bat", "sports"),
    (40, "baseball glove", "sports"), (41, "skateboard", "sports"), (42, "surfboard", "sports"),
    (43, "tennis racket", "sports"), (44, "bottle", "kitchen"), (46, "wine glass", "kitchen"),
    (47, "cup", "kitchen"), (48, "fork", "kitchen"), (49, "knife", "kitchen"), (50, "spoon", "kitchen"),
    (51, "bowl", "kitchen"), (52, "banana", "food"), (53, "apple", "food"), (54, "sandwich", "food"),
    (55, "orange", "food"), (56, "broccoli", "food"), (57, "carrot", "food"), (58, "hot dog", "food"),
    (59, "pizza", "food"), (60, "donut", "food"), (61, "cake", "food"), (62, "chair", "furniture"),
    (63, "couch", "furniture"), (64, "potted plant", "furniture"), (65, "bed", "furniture"),
    (67, "dining table", "furniture"), (70, "toilet", "furniture"), (72, "tv", "electronic"),
    (73, "laptop", "electronic"), (74, "mouse", "electronic"), (75, "remote", "electronic"),
    (76, "keyboard", "electronic"), (77, "cell phone", "electronic"), (78, "microwave", "appliance"),
    (79, "oven", "appliance"), (80, "toaster", "appliance"), (81, "sink", "appliance"),
    (82, "refrigerator", "appliance"), (84, "book", "indoor"), (85, "clock", "indoor"),
    (86, "vase", "indoor"), (87, "scissors", "indoor"), (88, "teddy bear", "indoor"),
    (89, "hair drier", "indoor"), (90, "toothbrush", "indoor"),
)

COCO_KEYPOINT_NAMES = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle",
)
# COCO's skeleton: pairs of 1-based keypoint indices
COCO_SKELETON = (
    (16, 14), (14, 12), (17, 15), (15, 13), (12, 13), (6, 12), (7, 13), (6, 7), (6, 8), (7, 9),
    (8, 10), (9, 11), (2, 3), (1, 2), (1, 3), (2, 4), (3, 5), (4, 6), (5, 7),
)

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)

# Real ImageNet wnids (the ten Imagenette classes), one synthetic class each.
IMAGENET_WNIDS = (
    "n01440764", "n02102040", "n02979186", "n03000684", "n03028079",
    "n03394916", "n03417042", "n03425413", "n03445777", "n03888257",
)

# --------------------------------------------------------------------------------- object classes

# A class of synthetic object and the real category each detection set labels it with (None: used
# only as an ImageNet class).
Shape = namedtuple("Shape", "name colour texture coco_id voc_class lvis_name")
SHAPES = tuple(Shape(*row) for row in (
    # name        colour           texture      COCO id  VOC class     LVIS name (frequency)
    ("circle",   (225, 35, 35),   "solid",     37,      "bottle",     "beachball"),       # r
    ("square",   (35, 75, 230),   "hstripes",  72,      "tvmonitor",  "cube"),            # c
    ("triangle", (40, 185, 60),   "checker",   59,      "boat",       "pennant"),         # r
    ("cross",    (240, 215, 30),  "dstripes",  5,       "aeroplane",  "airplane"),        # f
    ("ring",     (215, 45, 205),  "solid",     60,      "bicycle",    "bagel"),           # c
    ("diamond",  (30, 210, 225),  "dots",      38,      "bird",       "kite"),            # f
    ("star",     (255, 135, 0),   "solid",     None,    None,         None),
    ("hexagon",  (240, 240, 240), "checker",   None,    None,         None),
    ("bar",      (125, 40, 205),  "dstripes",  None,   None,          None),
    ("arrow",    (25, 25, 25),    "hstripes",  None,    None,         None),
))
DETECTION_SHAPES = tuple(s for s in SHAPES if s.coco_id is not None)
PERSON = "person"  # the stick figure; COCO id 1, VOC "person", LVIS "person" (f)
_PERSON_COLOURS = {"head": (245, 200, 155), "torso": (120, 30, 160), "limb": (35, 30, 30)}

_SHAPE = {s.name: s for s in SHAPES}
_COCO_ID = {s.name: s.coco_id for s in DETECTION_SHAPES} | {PERSON: 1}
_VOC_NAME = {s.name: s.voc_class for s in DETECTION_SHAPES} | {PERSON: "person"}
_LVIS_NAME = {s.name: s.lvis_name for s in DETECTION_SHAPES} | {PERSON: "person"}


# ------------------------------------------------------------------------------------ public API

def split_sizes(num_images):
    """Images per split: (training splits, validation/test splits)."""
    return num_images, max(2, num_images // 4)


def write_synthetic(root, kinds=KINDS, num_images=DEFAULT_NUM_IMAGES, seed=0,
                    image_size=DEFAULT_IMAGE_SIZE, cdp_image_size=None, cdp_background=None, cdp_mix=None):
    """Write the synthetic datasets ``kinds`` under ``root``; return what was written.

    Returns ``{kind: {dataset_or_split: {"images": int, "annotations": int, ...}}}``:
    ``coco``: ``train2017``/``val2017`` with ``images``, ``annotations``, ``crowd``, ``empty_images``;
    ``keypoints``: the same splits with ``images``, ``annotations`` (persons), ``crowd``,
    ``keypoints`` (labelled keypoints, v > 0); ``voc``: ``VOC2007``/``VOC2012`` -> split ->
    ``images``, ``annotations``, ``difficult``; ``lvis``: ``train``/``val`` with ``images``,
    ``annotations``; ``imagenet``: ``train``/``val`` with ``images``, ``classes``; ``cdp``: ``train``/``val``
    with ``images``, ``classes`` (colour x digit x position combinations).

    ``cdp_image_size``, ``cdp_background`` and ``cdp_mix`` are :func:`make_cdp`'s ``image_size``,
    ``background`` and ``mix`` (defaults there); ``image_size`` does not apply to CDP.

    Raises :class:`SyntheticDataError` for bad arguments, or when ``root`` already holds one of the
    folders to write and is not a previous synthetic output (it may be real data).
    """
    kinds = _check_arguments(kinds, num_images, seed, image_size)
    num_images, seed, image_size = int(num_images), int(seed), int(image_size)
    cdp = None
    if "cdp" in kinds:
        cdp = _cdp_options(cdp_image_size, cdp_background, cdp_mix)
    elif (cdp_image_size, cdp_background, cdp_mix) != (None, None, None):
        raise SyntheticDataError("the cdp_* options apply to kind 'cdp' only; add it to the kinds")
    root = os.path.expanduser(str(root))
    _check_root(root, kinds)
    os.makedirs(root, exist_ok=True)
    marker = {"writer": "transfer.synthetic", "kinds": list(kinds), "num_images": num_images, "seed": seed,
              "image_size": image_size}
    if cdp is not None:
        marker["cdp"] = {"image_size": cdp["image_size"], "mix": cdp["mix"],
                         "background": os.path.abspath(cdp["background"]) if cdp["background"] else "generated"}
    _atomic_write(os.path.join(root, MARKER), _json_bytes(marker, indent=2))
    n_train, n_val = split_sizes(num_images)
    counts = {}
    if {"coco", "keypoints", "lvis"} & set(kinds):
        counts.update(_write_coco_family(root, kinds, n_train, n_val, seed, image_size))
    if "voc" in kinds:
        counts["voc"] = _write_voc(root, n_train, n_val, seed, image_size)
    if "imagenet" in kinds:
        counts["imagenet"] = _write_imagenet(root, n_train, n_val, seed, image_size)
    if cdp is not None:
        counts["cdp"] = _write_cdp(root, n_train, n_val, seed, **cdp)
    return {kind: counts[kind] for kind in kinds}


def _check_arguments(kinds, num_images, seed, image_size):
    if isinstance(kinds, str):
        kinds = [k.strip() for k in kinds.split(",") if k.strip()]
    kinds = tuple(dict.fromkeys(kinds))
    if not kinds:
        raise SyntheticDataError(f"no kinds given; choose from {', '.join(KINDS)}")
    for kind in kinds:
        if kind not in KINDS + OPTIONAL_KINDS:
            raise SyntheticDataError(f"unknown kind '{kind}'; choose from {', '.join(KINDS + OPTIONAL_KINDS)}")
    for name, value, low in (("num_images", num_images, 2), ("image_size", image_size, MIN_IMAGE_SIZE),
                             ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise SyntheticDataError(f"{name} must be an integer >= {low}, got {value!r}")
    return tuple(k for k in KINDS + OPTIONAL_KINDS if k in kinds)  # canonical order


def _check_root(root, kinds):
    """Refuse to write over folders that a previous synthetic run did not write."""
    if os.path.exists(root) and not os.path.isdir(root):
        raise SyntheticDataError(f"{root} exists and is not a folder; choose another root")
    if os.path.isfile(os.path.join(root, MARKER)):
        return
    folders = {"coco": ["coco"], "keypoints": ["coco"], "lvis": ["coco", "lvis"],
               "voc": ["VOC2007", "VOC2012"], "imagenet": ["imagenet"], "cdp": ["cdp"]}
    for kind in kinds:
        for folder in folders[kind]:
            path = os.path.join(root, folder)
            if os.path.exists(path):
                raise SyntheticDataError(
                    f"{path} already exists and {root} has no {MARKER}, so it may be real data; "
                    "choose an empty or new root")


# --------------------------------------------------------------------------------------- writing

def _atomic_write(path, data):
    """Write bytes to ``path`` through a temporary file in the same folder."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _json_bytes(data, indent=None):
    separators = (",", ":") if indent is None else (",", ": ")
    return json.dumps(data, indent=indent, separators=separators).encode()


def _jpeg_bytes(pixels):
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def _rng(seed, *stream):
    """An independent random stream per (seed, kind, split)."""
    return np.random.default_rng([seed] + [zlib.crc32(s.encode()) for s in stream])


# ----------------------------------------------------------------------------------- geometry

def _regular(cx, cy, radius, n, angle=0.0):
    t = angle + 2 * np.pi * np.arange(n) / n
    return np.stack([cx + radius * np.cos(t), cy + radius * np.sin(t)], 1)


def _rotated(points, cx, cy, angle):
    c, s = np.cos(angle), np.sin(angle)
    p = np.asarray(points, dtype=np.float64) - (cx, cy)
    return np.stack([cx + c * p[:, 0] - s * p[:, 1], cy + s * p[:, 0] + c * p[:, 1]], 1)


def _shape_polygons(name, cx, cy, size, rng):
    """Polygons (N x 2 arrays) of shape ``name`` centred at (cx, cy), within a circle of diameter size."""
    r = size / 2
    if name == "circle":
        return [_regular(cx, cy, r, 48)]
    if name == "ring":  # an annulus as two half-annuli: simple polygons whose union is the ring
        a0 = rng.uniform(0, np.pi)
        halves = []
        for start in (a0, a0 + np.pi):
            t = start + np.linspace(0, np.pi, 25)
            outer = np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], 1)
            inner = np.stack([cx + 0.55 * r * np.cos(t), cy + 0.55 * r * np.sin(t)], 1)[::-1]
            halves.append(np.concatenate([outer, inner]))
        return halves
    if name == "square":
        return [_regular(cx, cy, r * 0.95, 4, np.pi / 4 + rng.uniform(-0.25, 0.25))]
    if name == "triangle":
        return [_regular(cx, cy, r, 3, rng.uniform(0, 2 * np.pi))]
    if name == "hexagon":
        return [_regular(cx, cy, r, 6, rng.uniform(0, np.pi / 3))]
    if name == "diamond":
        pts = [(cx, cy - r), (cx + 0.55 * r, cy), (cx, cy + r), (cx - 0.55 * r, cy)]
        return [_rotated(pts, cx, cy, rng.uniform(-0.3, 0.3))]
    if name == "cross":
        a, b = r * 0.95, r * 0.32
        pts = [(-b, -a), (b, -a), (b, -b), (a, -b), (a, b), (b, b), (b, a), (-b, a), (-b, b), (-a, b),
               (-a, -b), (-b, -b)]
        return [_rotated(np.add(pts, (cx, cy)), cx, cy, rng.uniform(-0.35, 0.35))]
    if name == "star":
        t = rng.uniform(0, 2 * np.pi) + np.pi * np.arange(10) / 5
        radius = np.where(np.arange(10) % 2 == 0, r, 0.45 * r)
        return [np.stack([cx + radius * np.cos(t), cy + radius * np.sin(t)], 1)]
    if name == "bar":
        pts = [(cx - r, cy - 0.3 * r), (cx + r, cy - 0.3 * r), (cx + r, cy + 0.3 * r), (cx - r, cy + 0.3 * r)]
        return [_rotated(pts, cx, cy, rng.uniform(0, np.pi))]
    if name == "arrow":
        pts = [(-r, -0.2 * r), (0.2 * r, -0.2 * r), (0.2 * r, -0.6 * r), (r, 0), (0.2 * r, 0.6 * r),
               (0.2 * r, 0.2 * r), (-r, 0.2 * r)]
        return [_rotated(np.add(pts, (cx, cy)), cx, cy, rng.uniform(0, 2 * np.pi))]
    raise KeyError(name)


def _segment(p, q, width):
    """A thick line from p to q (extended by width/2 past both ends) as a 4-point polygon."""
    p, q = np.asarray(p, float), np.asarray(q, float)
    d = (q - p) / max(np.hypot(*(q - p)), 1e-6)
    n = np.array([-d[1], d[0]]) * width / 2
    p, q = p - d * width / 2, q + d * width / 2
    return np.stack([p + n, q + n, q - n, p - n])


def _stick_figure(cx, top, height, rng):
    """A front-facing stick figure: ``(parts, keypoints)``.

    ``parts`` maps head/torso/limb to polygons; ``keypoints`` is a 17 x 2 array in COCO order. The
    figure faces the viewer, so its left side is on the image's right, as for a real person.
    """
    u = height / 8
    k = {"nose": (cx, top + 0.6 * u), "left_eye": (cx + 0.22 * u, top + 0.45 * u),
         "right_eye": (cx - 0.22 * u, top + 0.45 * u), "left_ear": (cx + 0.45 * u, top + 0.6 * u),
         "right_ear": (cx - 0.45 * u, top + 0.6 * u)}
    for side, s in (("left", 1), ("right", -1)):
        shoulder = np.array([cx + s * 0.9 * u, top + 1.5 * u])
        hip = np.array([cx + s * 0.5 * u, top + 4.2 * u])
        arm = rng.uniform(-0.2, 2.4)  # angle from straight down, outwards positive
        forearm = arm + rng.uniform(-0.6, 1.2)
        thigh = rng.uniform(0.0, 0.5)
        shin = thigh + rng.uniform(-0.5, 0.3)
        elbow = shoulder + 1.3 * u * np.array([s * np.sin(arm), np.cos(arm)])
        knee = hip + 1.9 * u * np.array([s * np.sin(thigh), np.cos(thigh)])
        k.update({f"{side}_shoulder": shoulder, f"{side}_hip": hip, f"{side}_elbow": elbow,
                  f"{side}_wrist": elbow + 1.2 * u * np.array([s * np.sin(forearm), np.cos(forearm)]),
                  f"{side}_knee": knee,
                  f"{side}_ankle": knee + 1.9 * u * np.array([s * np.sin(shin), np.cos(shin)])})
    lean = rng.uniform(-0.15, 0.15)
    points = _rotated([k[name] for name in COCO_KEYPOINT_NAMES], cx, top + 4.2 * u, lean)
    k = dict(zip(COCO_KEYPOINT_NAMES, points))
    width = max(3.0, 0.4 * u)
    neck = (k["left_shoulder"] + k["right_shoulder"]) / 2
    limbs = [_segment(k["nose"], neck, width)]
    for side in ("left", "right"):
        for a, b in (("shoulder", "elbow"), ("elbow", "wrist"), ("hip", "knee"), ("knee", "ankle")):
            limbs.append(_segment(k[f"{side}_{a}"], k[f"{side}_{b}"], width))
    torso = [np.stack([k["left_shoulder"], k["right_shoulder"], k["right_hip"], k["left_hip"]])]
    head = [_regular(*k["nose"], max(0.65 * u, 2.5), 24)]
    return {"limb": limbs, "torso": torso, "head": head}, points


# ------------------------------------------------------------------------------------- painting

def _flat(polygons):
    """COCO polygons: flat [x0, y0, x1, y1, ...] lists rounded to 2 decimals, as in COCO files."""
    return [[round(float(v), 2) for v in poly.reshape(-1)] for poly in polygons]


def _points(flat_polygons):
    return [np.reshape(p, (-1, 2)) for p in flat_polygons]


def _rasterize(flat_polygons, h, w):
    """The mask pycocotools computes for these polygons (h x w bool)."""
    rle = mask_util.merge(mask_util.frPyObjects(flat_polygons, h, w))
    return mask_util.decode(rle).astype(bool)


def _inside(polygons, h, w):
    pts = np.concatenate(polygons)
    return pts[:, 0].min() >= 0.5 and pts[:, 1].min() >= 0.5 and \
        pts[:, 0].max() <= w - 0.5 and pts[:, 1].max() <= h - 0.5


def _dilate(mask):
    out = mask.copy()
    out[1:] |= mask[:-1]
    out[:-1] |= mask[1:]
    out[:, 1:] |= mask[:, :-1]
    out[:, :-1] |= mask[:, 1:]
    return out


def _background(h, w, rng):
    """A muted, smoothly varying, noisy background (float32 h x w x 3)."""
    base = rng.uniform(75, 175) + rng.uniform(-15, 15, size=3)
    blobs = rng.normal(0, 20, size=(5, 5, 1)) + rng.normal(0, 8, size=(5, 5, 3))  # mostly brightness
    blobs = np.asarray(Image.fromarray(np.clip(blobs + 128, 0, 255).astype(np.uint8)).resize(
        (w, h), Image.BILINEAR), dtype=np.float32) - 128
    yy, xx = np.mgrid[0:h, 0:w]
    gradient = (rng.uniform(-30, 30) * xx / w + rng.uniform(-30, 30) * yy / h)[..., None]
    return (base + blobs + gradient).astype(np.float32)


def _paint(canvas, mask, colour, texture, rng):
    """Fill ``mask`` with the colour modulated by the texture (random phase, period, brightness)."""
    ys, xs = np.nonzero(mask)
    period = int(rng.integers(4, 9))
    half = max(period // 2, 2)
    phase = int(rng.integers(0, period))
    if texture == "hstripes":
        shade = np.where((ys + phase) // half % 2 == 0, 1.0, 0.55)
    elif texture == "dstripes":
        shade = np.where((xs + ys + phase) // half % 2 == 0, 1.0, 0.55)
    elif texture == "checker":
        shade = np.where(((xs + phase) // half + (ys + phase) // half) % 2 == 0, 1.0, 0.5)
    elif texture == "dots":
        dist = np.hypot((xs + phase) % period - period / 2, (ys + phase) % period - period / 2)
        shade = np.where(dist < period / 3, 0.45, 1.0)
    else:  # solid
        shade = np.ones(len(ys))
    gain = rng.uniform(0.85, 1.1)
    canvas[ys, xs] = np.asarray(colour, np.float32) * (gain * shade)[:, None]


def _finish(canvas, rng):
    noisy = canvas + rng.normal(0, 6, size=canvas.shape)
    return np.clip(noisy, 0, 255).round().astype(np.uint8)


def _image_shape(rng, image_size):
    long_side = int(rng.integers(round(0.75 * image_size), image_size + 1))
    short_side = int(round(long_side * rng.uniform(0.6, 1.0)))
    return (short_side, long_side) if rng.random() < 0.7 else (long_side, short_side)  # (h, w)


# -------------------------------------------------------------------------------------- scenes

class _Scene:
    """One image: its pixels and its objects (dicts with cls, polygons or rle, bbox, area, ...)."""

    def __init__(self, h, w, rng):
        self.h, self.w = h, w
        self.canvas = _background(h, w, rng)
        self.occupied = np.zeros((h, w), bool)  # objects plus a one-pixel gap around them
        self.objects = []

    def free_mask(self, flat_polygons):
        """The mask of these polygons if they lie inside the image on free pixels, else None."""
        if not _inside(_points(flat_polygons), self.h, self.w):
            return None
        mask = _rasterize(flat_polygons, self.h, self.w)
        if mask.sum() < 12 or (mask & self.occupied).any():
            return None
        return mask

    def add(self, obj, mask):
        self.occupied |= _dilate(mask)
        obj["mask_area"] = int(mask.sum())
        ys, xs = np.nonzero(mask)
        obj["mask_box"] = (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max()))  # inclusive
        self.objects.append(obj)

    def pixels(self, rng):
        return _finish(self.canvas, rng)


def _polygon_box(polygons):
    pts = np.concatenate(polygons)
    x0, y0 = pts.min(0)
    x1, y1 = pts.max(0)
    return [round(float(x0), 2), round(float(y0), 2), round(float(x1 - x0), 2), round(float(y1 - y0), 2)]


def _add_shape(scene, name, rng, min_size, max_size):
    shape = _SHAPE[name]
    for _ in range(30):
        size = float(np.exp(rng.uniform(np.log(min_size), np.log(max_size))))
        cx = rng.uniform(size / 2 + 1, scene.w - size / 2 - 1)
        cy = rng.uniform(size / 2 + 1, scene.h - size / 2 - 1)
        flat = _flat(_shape_polygons(name, cx, cy, size, rng))
        mask = scene.free_mask(flat)
        if mask is not None:
            _paint(scene.canvas, mask, shape.colour, shape.texture, rng)
            scene.add({"cls": name, "segmentation": flat, "bbox": _polygon_box(_points(flat))}, mask)
            return True
    return False


def _add_person(scene, rng, min_height, max_height):
    for _ in range(30):
        height = rng.uniform(min_height, max_height)
        cx = rng.uniform(0.25 * height, scene.w - 0.25 * height)
        top = rng.uniform(1, max(scene.h - height - 1, 1.5))
        parts, points = _stick_figure(cx, top, height, rng)
        flat_parts = {part: _flat(polys) for part, polys in parts.items()}
        flat = flat_parts["limb"] + flat_parts["torso"] + flat_parts["head"]
        mask = scene.free_mask(flat)
        if mask is None:
            continue
        for part in ("limb", "torso", "head"):
            part_mask = _rasterize(flat_parts[part], scene.h, scene.w)
            _paint(scene.canvas, part_mask, _PERSON_COLOURS[part], "solid", rng)
        bbox = _polygon_box(_points(flat))
        scene.add({"cls": PERSON, "segmentation": flat, "bbox": bbox,
                   "keypoints": _keypoint_list(points, bbox, rng)}, mask)
        return True
    return False


def _keypoint_list(points, bbox, rng):
    """COCO keypoints [x, y, v] * 17: integer pixel indices inside the box; some v=1, some absent."""
    x0, y0, bw, bh = bbox
    out = []
    for i, (x, y) in enumerate(points):
        r = rng.random()
        if i <= 4 and r < 0.2:  # face points are often unlabelled in COCO
            out += [0, 0, 0]
            continue
        # Detectron2 reads a keypoint at pixel index x as x + 0.5, which must lie inside the box
        kx = int(np.clip(np.floor(x), np.ceil(x0 - 0.5), np.floor(x0 + bw - 0.5)))
        ky = int(np.clip(np.floor(y), np.ceil(y0 - 0.5), np.floor(y0 + bh - 0.5)))
        out += [kx, ky, 1 if r > 0.9 else 2]
    return out


def _add_crowd(scene, name, rng):
    """A cluster of small same-class objects, annotated as one crowd region (uncompressed RLE)."""
    short = min(scene.h, scene.w)
    item = rng.uniform(max(6.0, 0.05 * short), max(9.0, 0.09 * short))
    radius = min(item * rng.uniform(1.8, 2.6), short / 2 - item - 1)
    if radius < item:
        return False
    gx = rng.uniform(radius + item, scene.w - radius - item)
    gy = rng.uniform(radius + item, scene.h - radius - item)
    group = np.zeros((scene.h, scene.w), bool)
    for _ in range(int(rng.integers(4, 9))):
        cx, cy = gx + rng.uniform(-radius, radius), gy + rng.uniform(-radius, radius)
        if name == PERSON:
            parts, _ = _stick_figure(cx, cy - item, 2.5 * item, rng)
            polygons = parts["limb"] + parts["torso"] + parts["head"]
        else:
            polygons = _shape_polygons(name, cx, cy, item, rng)
        mask = scene.free_mask(_flat(polygons))
        if mask is None:
            continue
        if name == PERSON:
            for part in ("limb", "torso", "head"):
                _paint(scene.canvas, _rasterize(_flat(parts[part]), scene.h, scene.w) & mask,
                       _PERSON_COLOURS[part], "solid", rng)
        else:
            _paint(scene.canvas, mask, _SHAPE[name].colour, _SHAPE[name].texture, rng)
        group |= mask
    if group.sum() == 0:
        return False
    ys, xs = np.nonzero(group)
    x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
    scene.add({"cls": name, "crowd": True, "rle": _uncompressed_rle(group),
               "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)]}, group)
    return True


def _uncompressed_rle(mask):
    """COCO's uncompressed RLE: run lengths of the column-major mask, starting with a run of zeros."""
    flat = np.asarray(mask, np.uint8).reshape(-1, order="F")
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0] == 1:
        counts = [0] + counts
    return {"counts": [int(c) for c in counts], "size": [int(mask.shape[0]), int(mask.shape[1])]}


def _detection_scene(rng, image_size, empty, crowd=True):
    """A detection image: shapes of DETECTION_SHAPES, stick figures, sometimes a crowd cluster."""
    h, w = _image_shape(rng, image_size)
    scene = _Scene(h, w, rng)
    if not empty:
        short = min(h, w)
        classes = [s.name for s in DETECTION_SHAPES] + [PERSON]
        if crowd and rng.random() < 0.2:
            _add_crowd(scene, classes[int(rng.integers(len(classes)))], rng)
        min_height, max_height = max(40.0, 0.35 * h), 0.9 * h - 2
        for _ in range(int(rng.choice([0, 0, 1, 1, 2])) if max_height > min_height else 0):
            _add_person(scene, rng, min_height, max_height)
        for _ in range(int(rng.integers(1, 5))):
            name = DETECTION_SHAPES[int(rng.integers(len(DETECTION_SHAPES)))].name
            _add_shape(scene, name, rng, max(12.0, 0.1 * short), 0.5 * short)
    return scene


def _empty_flags(rng, n):
    """Which images of a split show no object: about one in eight, at least one when n >= 3."""
    flags = rng.random(n) < 0.12
    if n >= 3 and not flags.any():
        flags[-1] = True
    return flags


# ------------------------------------------------------------------------ COCO, keypoints, LVIS

_INFO = {"description": "Synthetic COCO-format data written by transfer.synthetic", "url": "",
         "version": "1.0", "year": 2017, "contributor": "transfer.synthetic", "date_created": "2017/09/01"}
_LICENSES = [{"url": "https://creativecommons.org/publicdomain/zero/1.0/", "id": 1,
              "name": "Public Domain (synthetic)"}]


def _write_coco_family(root, kinds, n_train, n_val, seed, image_size):
    """Images for coco/{train,val}2017 and the annotation files of coco, keypoints and lvis."""
    id_rng = _rng(seed, "coco", "ids")
    ids = id_rng.choice(np.arange(1, 581930), size=n_train + n_val, replace=False)
    split_ids = {"train2017": sorted(int(i) for i in ids[:n_train]),
                 "val2017": sorted(int(i) for i in ids[n_train:])}
    lvis_categories = _lvis_categories() if "lvis" in kinds else None
    os.makedirs(os.path.join(root, "coco", "annotations"), exist_ok=True)
    counts = {kind: {} for kind in ("coco", "keypoints", "lvis") if kind in kinds}
    next_ann_id = 1
    for split, image_ids in split_ids.items():
        rng = _rng(seed, "coco", split)
        folder = os.path.join(root, "coco", split)
        os.makedirs(folder, exist_ok=True)
        images, records = [], []
        for image_id, empty in zip(image_ids, _empty_flags(rng, len(image_ids))):
            scene = _detection_scene(rng, image_size, bool(empty))
            file_name = f"{image_id:012d}.jpg"
            _atomic_write(os.path.join(folder, file_name), _jpeg_bytes(scene.pixels(rng)))
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
            data, counts["coco"][split] = _coco_instances(images, records)
            _atomic_write(os.path.join(root, "coco", "annotations", f"instances_{split}.json"),
                          _json_bytes(data))
        if "keypoints" in kinds:
            data, counts["keypoints"][split] = _coco_keypoints(images, records)
            _atomic_write(os.path.join(root, "coco", "annotations", f"person_keypoints_{split}.json"),
                          _json_bytes(data))
        if "lvis" in kinds:
            data, counts["lvis"][year_split] = _lvis(images, records, lvis_categories,
                                                     _rng(seed, "lvis", split))
            os.makedirs(os.path.join(root, "lvis"), exist_ok=True)
            _atomic_write(os.path.join(root, "lvis", f"lvis_v1_{year_split}.json"), _json_bytes(data))
    return counts


def _date(rng):
    return (f"2013-{int(rng.integers(1, 13)):02d}-{int(rng.integers(1, 29)):02d} "
            f"{int(rng.integers(0, 24)):02d}:{int(rng.integers(0, 60)):02d}:{int(rng.integers(0, 60)):02d}")


def _coco_annotation(obj, image_id):
    crowd = obj.get("crowd", False)
    return {"segmentation": obj["rle"] if crowd else obj["segmentation"], "area": float(obj["mask_area"]),
            "iscrowd": int(crowd), "image_id": image_id, "bbox": obj["bbox"],
            "category_id": _COCO_ID[obj["cls"]], "id": obj["id"]}


def _coco_instances(images, records):
    annotations = [_coco_annotation(obj, img["id"]) for img, objs in zip(images, records) for obj in objs]
    categories = [{"supercategory": sup, "id": i, "name": name} for i, name, sup in COCO_CATEGORIES]
    data = {"info": _INFO, "licenses": _LICENSES, "images": images, "annotations": annotations,
            "categories": categories}
    counts = {"images": len(images), "annotations": len(annotations),
              "crowd": sum(a["iscrowd"] for a in annotations),
              "empty_images": sum(not objs for objs in records)}
    return data, counts


def _coco_keypoints(images, records):
    annotations = []
    for img, objs in zip(images, records):
        for obj in objs:
            if obj["cls"] != PERSON:
                continue
            ann = _coco_annotation(obj, img["id"])
            keypoints = obj.get("keypoints", [0] * 3 * len(COCO_KEYPOINT_NAMES))  # crowds: none
            ann.update(num_keypoints=sum(v > 0 for v in keypoints[2::3]), keypoints=keypoints)
            annotations.append(ann)
    category = {"supercategory": "person", "id": 1, "name": "person",
                "keypoints": list(COCO_KEYPOINT_NAMES), "skeleton": [list(p) for p in COCO_SKELETON]}
    data = {"info": _INFO, "licenses": _LICENSES, "images": images, "annotations": annotations,
            "categories": [category]}
    counts = {"images": len(images), "annotations": len(annotations),
              "crowd": sum(a["iscrowd"] for a in annotations),
              "keypoints": sum(a["num_keypoints"] for a in annotations)}
    return data, counts


def _lvis_categories():
    """LVIS v1's 1203 categories (id, name, synonyms, synset, def, frequency) as Detectron2 ships them.

    Read from Detectron2's ``lvis_v1_categories.py`` (a plain literal) without importing Detectron2.
    """
    import importlib.util
    import runpy

    spec = importlib.util.find_spec("detectron2")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = os.path.join(folder, "data", "datasets", "lvis_v1_categories.py")
        if os.path.isfile(path):
            return runpy.run_path(path)["LVIS_CATEGORIES"]
    raise SyntheticDataError("kind 'lvis' needs Detectron2's LVIS v1 category list "
                             "(detectron2/data/datasets/lvis_v1_categories.py); install Detectron2 first")


def _lvis(images, records, categories, rng):
    """An LVIS v1 file over the COCO images: polygons only (no crowds), federated image labels."""
    by_name = {c["name"]: c["id"] for c in categories}
    ours = {name: by_name[lvis_name] for name, lvis_name in _LVIS_NAME.items()}
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
    lvis_categories = [{"id": c["id"], "name": c["name"], "synonyms": list(c["synonyms"]),
                        "synset": c["synset"], "def": c["def"], "frequency": c["frequency"],
                        "image_count": image_count.get(c["id"], 0),
                        "instance_count": instance_count.get(c["id"], 0)}
                       for c in sorted(categories, key=lambda c: c["id"])]
    info = dict(_INFO, description="Synthetic LVIS v1-format data written by transfer.synthetic")
    data = {"info": info, "licenses": _LICENSES, "images": lvis_images, "annotations": annotations,
            "categories": lvis_categories}
    return data, {"images": len(lvis_images), "annotations": len(annotations)}


# ------------------------------------------------------------------------------------------ VOC

def _write_voc(root, n_train, n_val, seed, image_size):
    """VOC2007 (train, val, test) and VOC2012 (train, val); trainval = train + val."""
    counts = {}
    for year, splits in (("2007", {"train": n_train, "val": n_val, "test": n_val}),
                         ("2012", {"train": n_train, "val": n_val})):
        rng = _rng(seed, "voc", year)
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
            scenes[name] = _detection_scene(rng, image_size, empty=False, crowd=False)
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
            _atomic_write(os.path.join(base, "JPEGImages", name + ".jpg"), _jpeg_bytes(scene.pixels(rng)))
            _atomic_write(os.path.join(base, "Annotations", name + ".xml"), _voc_xml(year, name, scene))
        counts[f"VOC{year}"] = {}
        for split in (*splits, "trainval"):
            ids = split_names[split]
            _atomic_write(os.path.join(base, "ImageSets", "Main", split + ".txt"),
                          "".join(i + "\n" for i in ids).encode())
            objs = [o for i in ids for o in scenes[i].objects]
            counts[f"VOC{year}"][split] = {"images": len(ids), "annotations": len(objs),
                                          "difficult": sum(o["difficult"] for o in objs)}
    return counts


def _voc_xml(year, name, scene):
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
        sub(element, "name", _VOC_NAME[obj["cls"]])
        sub(element, "pose", "Frontal" if obj["cls"] == PERSON else "Unspecified")
        sub(element, "truncated", 0)
        sub(element, "difficult", obj["difficult"])
        box = sub(element, "bndbox")
        x0, y0, x1, y1 = obj["mask_box"]  # inclusive 0-based pixels -> VOC's inclusive 1-based
        for tag, value in (("xmin", x0 + 1), ("ymin", y0 + 1), ("xmax", x1 + 1), ("ymax", y1 + 1)):
            sub(box, tag, value)
    ET.indent(annotation, space="\t")
    return ET.tostring(annotation, encoding="utf-8") + b"\n"


# ------------------------------------------------------------------------------------- ImageNet

def _write_imagenet(root, n_train, n_val, seed, image_size):
    """imagenet/{train,val}/<wnid>/*.JPEG: one large object of the class's shape per image."""
    counts = {}
    for split, per_class in (("train", n_train), ("val", n_val)):
        rng = _rng(seed, "imagenet", split)
        folder = os.path.join(root, "imagenet", split)
        if os.path.isdir(folder):  # a previous synthetic run (checked): drop its stale images
            shutil.rmtree(folder)
        val_numbers = iter(sorted(rng.choice(np.arange(1, 50001), per_class * len(IMAGENET_WNIDS),
                                             replace=False)))
        for wnid, shape in zip(IMAGENET_WNIDS, SHAPES):
            os.makedirs(os.path.join(folder, wnid), exist_ok=True)
            numbers = sorted(rng.choice(np.arange(1, 20000), per_class, replace=False))
            for number in numbers:
                h, w = _image_shape(rng, image_size)
                scene = _Scene(h, w, rng)
                short = min(h, w)
                if not _add_shape(scene, shape.name, rng, 0.35 * short, 0.85 * short):
                    raise RuntimeError(f"could not place a {shape.name} in a {w}x{h} image")
                if split == "train":
                    file_name = f"{wnid}_{int(number)}.JPEG"
                else:
                    file_name = f"ILSVRC2012_val_{int(next(val_numbers)):08d}.JPEG"
                _atomic_write(os.path.join(folder, wnid, file_name), _jpeg_bytes(scene.pixels(rng)))
        counts[split] = {"images": per_class * len(IMAGENET_WNIDS), "classes": len(IMAGENET_WNIDS)}
    return counts


# ------------------------------------------------------------------------------------------ CDP

# Lee et al.'s CDP dataset: colour x digit x position, four values each, uniform and independent.
CDP_COLORS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "white": (255, 255, 255)}
CDP_DIGITS = ("2", "3", "4", "5")
CDP_POSITIONS = ("upper_left", "upper_right", "lower_left", "lower_right")  # quadrants, row by row
CDP_ATTRIBUTES = {"color": tuple(CDP_COLORS), "digit": CDP_DIGITS, "position": CDP_POSITIONS}
CDP_LABELS = "labels.csv"
CDP_DEFAULT_IMAGE_SIZE = 64
CDP_MIN_IMAGE_SIZE = 32
CDP_DEFAULT_MIX = 0.5
CDP_DIGIT_HEIGHT = (0.5, 0.7)  # digit height as a fraction of the quadrant side
_BACKGROUND_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp", ".tif", ".tiff")
_MAX_BAD_BACKGROUNDS = 20


def cdp_attributes(combination):
    """(colour, digit, position) names of a combination index 0..63 (colour-major)."""
    c = int(combination)
    return tuple(CDP_COLORS)[c // 16], CDP_DIGITS[c // 4 % 4], CDP_POSITIONS[c % 4]


def make_cdp(root, num_train, num_val, seed=0, image_size=CDP_DEFAULT_IMAGE_SIZE, background=None,
             mix=CDP_DEFAULT_MIX):
    """Write the CDP dataset under ``root/cdp/{train,val}/``: PNG images and a ``labels.csv``.

    Each image shows one digit (2-5, rendered in bold with PIL's bundled font, height 50-70% of a quadrant, at a
    random place inside its quadrant) in one of four colours (red, green, blue, white) in one of the four
    quadrants. The three attributes are uniform and independent: the images of a split cycle through the
    64 combinations in random order, so each combination appears ``floor(n / 64)`` or ``ceil(n / 64)``
    times and every attribute value a quarter of the time (H = 2 bits per attribute, 6 bits for all three).

    The digit is drawn on black and a background is linearly mixed in, as Lee et al. mix ImageNet images:
    ``pixel = (1 - mix) * digit + mix * background``. Backgrounds are random crops of the images in the
    folder ``background`` (any depth, e.g. an ImageNet train folder; unreadable files are skipped) or, when
    it is None, generated textures (smooth colour fields with noise). Digits keep a margin of 1/16 of the
    image side plus one pixel from the outer edges, so a centre crop of 224/256 (the ``eval`` views) keeps
    them whole.

    ``labels.csv`` is ``file,color,digit,position`` with names: ``red``/``green``/``blue``/``white``,
    ``2``..``5``, ``upper_left``/``upper_right``/``lower_left``/``lower_right``. Returns
    ``{"train": {"images": n, "classes": 64}, "val": {...}}``. Deterministic per seed (and background
    folder content).
    """
    for name, value, low in (("num_train", num_train, 1), ("num_val", num_val, 1), ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise SyntheticDataError(f"{name} must be an integer >= {low}, got {value!r}")
    options = _cdp_options(image_size, background, mix)
    return _write_cdp(os.path.expanduser(str(root)), int(num_train), int(num_val), int(seed), **options)


def _cdp_options(image_size, background, mix):
    """Checked CDP options (defaults filled in); scans the background folder once."""
    image_size = CDP_DEFAULT_IMAGE_SIZE if image_size is None else image_size
    mix = CDP_DEFAULT_MIX if mix is None else mix
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or \
            image_size < CDP_MIN_IMAGE_SIZE:
        raise SyntheticDataError(f"cdp image size must be an integer >= {CDP_MIN_IMAGE_SIZE}, got {image_size!r}")
    if isinstance(mix, bool) or not isinstance(mix, (int, float, np.floating)) or not 0.0 <= float(mix) < 1.0:
        raise SyntheticDataError(f"cdp mix (background weight) must be a number in [0, 1), got {mix!r}")
    files = None
    if background is not None:
        background = os.path.expanduser(str(background))
        files = _background_files(background)
    return {"image_size": int(image_size), "background": background, "mix": float(mix), "files": files}


def _background_files(folder):
    if not os.path.isdir(folder):
        raise SyntheticDataError(f"cdp background folder {folder} does not exist")
    files = []
    for path, dirs, names in os.walk(folder, followlinks=True):
        dirs.sort()
        files += [os.path.join(path, n) for n in sorted(names)
                  if n.lower().endswith(_BACKGROUND_EXTENSIONS) and not n.startswith(".")]
    if not files:
        raise SyntheticDataError(f"cdp background folder {folder} has no images "
                                 f"({', '.join(_BACKGROUND_EXTENSIONS)}) at any depth")
    return files


def _digit_templates():
    """Digit masks (float32 0..1, tight boxes) rendered once with PIL's bundled font, in bold."""
    try:
        font = ImageFont.load_default(size=96)  # FreeType: Pillow's bundled scalable font
    except (TypeError, OSError, ImportError):   # no FreeType: the small bitmap font, scaled up when placed
        font = ImageFont.load_default()
    templates = {}
    for digit in CDP_DIGITS:
        # bold strokes survive the downscaling (the bitmap font has no strokes)
        bold = {"stroke_width": 3} if isinstance(font, ImageFont.FreeTypeFont) else {}
        left, top, right, bottom = font.getbbox(digit, **bold)
        canvas = Image.new("L", (right - left + 4, bottom - top + 4), 0)
        ImageDraw.Draw(canvas).text((2 - left, 2 - top), digit, fill=255, font=font,
                                    **(dict(bold, stroke_fill=255) if bold else {}))
        mask = np.asarray(canvas, dtype=np.float32) / 255.0
        ys, xs = np.nonzero(mask > 0.05)
        templates[digit] = mask[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    return templates


def _cdp_texture(size, rng):
    """A generated background: a smooth colour field with a gradient, blotches and fine noise."""
    base = _background(size, size, rng)
    cells = int(rng.integers(3, 9))
    blotches = rng.normal(0, 35, size=(cells, cells, 3))
    blotches = np.asarray(Image.fromarray(np.clip(blotches + 128, 0, 255).astype(np.uint8)).resize(
        (size, size), Image.BICUBIC), dtype=np.float32) - 128
    return np.clip(base + blotches + rng.normal(0, 8, size=base.shape), 0, 255)


def _folder_background(files, size, rng):
    """A random square crop of a random image of ``files``, resized to ``size`` (float32 size x size x 3)."""
    bad = []
    while len(bad) < _MAX_BAD_BACKGROUNDS:
        path = files[int(rng.integers(len(files)))]
        try:
            with Image.open(path) as image:
                image.draft("RGB", (4 * size, 4 * size))  # JPEG: decode reduced, never below 4x the output
                image = image.convert("RGB")
        except Exception as e:  # noqa: BLE001 - any unreadable file is skipped, whatever PIL raises
            bad.append(f"{path} ({type(e).__name__})")
            continue
        w, h = image.size
        side = max(1, int(round(min(w, h) * rng.uniform(0.4, 1.0))))
        x0, y0 = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
        crop = image.crop((x0, y0, x0 + side, y0 + side)).resize((size, size), Image.BILINEAR)
        return np.asarray(crop, dtype=np.float32)
    raise SyntheticDataError(f"{_MAX_BAD_BACKGROUNDS} unreadable background images in a row "
                             f"(last: {bad[-1]}); is the cdp background folder damaged?")


def _cdp_image(combination, templates, size, background, mix, rng):
    """(pixels uint8 size x size x 3, digit mask float32 size x size) of one CDP image."""
    color, digit, position = cdp_attributes(combination)
    q = size // 2
    outer = int(np.ceil(size / 16)) + 1   # kept free at the image border (centre crops)
    inner = 1                             # kept free at the quadrant border
    template = templates[digit]
    height = int(round(q * rng.uniform(*CDP_DIGIT_HEIGHT)))
    width = max(1, int(round(height * template.shape[1] / template.shape[0])))
    alpha = np.asarray(Image.fromarray((template * 255).astype(np.uint8)).resize((width, height), Image.BILINEAR),
                       dtype=np.float32) / 255.0
    row, col = divmod(CDP_POSITIONS.index(position), 2)
    # free ranges of the top-left corner inside the quadrant: the outer border is the image edge
    y_lo = row * q + (outer if row == 0 else inner)
    y_hi = row * q + q - height - (inner if row == 0 else outer)
    x_lo = col * q + (outer if col == 0 else inner)
    x_hi = col * q + q - width - (inner if col == 0 else outer)
    y0 = int(rng.integers(y_lo, max(y_lo, y_hi) + 1))
    x0 = int(rng.integers(x_lo, max(x_lo, x_hi) + 1))
    mask = np.zeros((size, size), np.float32)
    mask[y0:y0 + height, x0:x0 + width] = alpha
    digit_layer = mask[..., None] * np.asarray(CDP_COLORS[color], np.float32)
    pixels = (1.0 - mix) * digit_layer + mix * background
    return np.clip(pixels, 0, 255).round().astype(np.uint8), mask


def _png_bytes(pixels):
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def _write_cdp(root, n_train, n_val, seed, image_size, background, mix, files):
    templates = _digit_templates()
    counts = {}
    for split, n in (("train", n_train), ("val", n_val)):
        rng = _rng(seed, "cdp", split)
        folder = os.path.join(root, "cdp", split)
        if os.path.isdir(folder):  # a previous synthetic run (checked by the caller): drop its stale images
            shutil.rmtree(folder)
        os.makedirs(folder)
        blocks = -(-n // 64)
        combinations = np.concatenate([rng.permutation(64) for _ in range(blocks)])[:n]
        rows = ["file," + ",".join(CDP_ATTRIBUTES)]
        for i, combination in enumerate(combinations):
            if files is None:
                back = _cdp_texture(image_size, rng)
            else:
                back = _folder_background(files, image_size, rng)
            pixels, _ = _cdp_image(combination, templates, image_size, back, mix, rng)
            name = f"{i:06d}.png"
            _atomic_write(os.path.join(folder, name), _png_bytes(pixels))
            rows.append(",".join((name, *cdp_attributes(combination))))
        _atomic_write(os.path.join(folder, CDP_LABELS), ("\n".join(rows) + "\n").encode())
        counts[split] = {"images": n, "classes": 64}
    return counts
