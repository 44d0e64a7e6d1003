"""Drawing primitives of the synthetic images: shape and stick-figure polygons, their masks, and pixels.

Polygons are N x 2 float arrays; "COCO polygons" are the flat ``[x0, y0, x1, y1, ...]`` lists that
annotation files hold. Masks are computed by pycocotools from the COCO polygons, so a painted object
is exactly its annotation. Every random choice comes from the ``rng`` passed in.
"""
import numpy as np
from PIL import Image
from pycocotools import mask as mask_util

from transfer.data.synthetic.categories import COCO_KEYPOINT_NAMES


# ----------------------------------------------------------------------------------- geometry

def _regular(cx, cy, radius, n, angle=0.0):
    """The n corners of a regular polygon around (cx, cy)."""
    t = angle + 2 * np.pi * np.arange(n) / n
    return np.stack([cx + radius * np.cos(t), cy + radius * np.sin(t)], 1)


def _rotated(points, cx, cy, angle):
    """``points`` rotated by ``angle`` (radians) about (cx, cy)."""
    c, s = np.cos(angle), np.sin(angle)
    p = np.asarray(points, dtype=np.float64) - (cx, cy)
    return np.stack([cx + c * p[:, 0] - s * p[:, 1], cy + s * p[:, 0] + c * p[:, 1]], 1)


def shape_polygons(name, cx, cy, size, rng):
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


def stick_figure(cx, top, height, rng):
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

def coco_polygons(polygons):
    """COCO polygons: flat [x0, y0, x1, y1, ...] lists rounded to 2 decimals, as in COCO files."""
    return [[round(float(v), 2) for v in poly.reshape(-1)] for poly in polygons]


def polygon_points(flat_polygons):
    """COCO polygons back as N x 2 arrays."""
    return [np.reshape(p, (-1, 2)) for p in flat_polygons]


def rasterize(flat_polygons, h, w):
    """The mask pycocotools computes for these polygons (h x w bool)."""
    rle = mask_util.merge(mask_util.frPyObjects(flat_polygons, h, w))
    return mask_util.decode(rle).astype(bool)


def inside_image(polygons, h, w):
    """Whether every point lies at least half a pixel inside an h x w image."""
    pts = np.concatenate(polygons)
    return pts[:, 0].min() >= 0.5 and pts[:, 1].min() >= 0.5 and \
        pts[:, 0].max() <= w - 0.5 and pts[:, 1].max() <= h - 0.5


def dilate(mask):
    """``mask`` grown by one pixel in the four directions."""
    out = mask.copy()
    out[1:] |= mask[:-1]
    out[:-1] |= mask[1:]
    out[:, 1:] |= mask[:, :-1]
    out[:, :-1] |= mask[:, 1:]
    return out


def background_pixels(h, w, rng):
    """A muted, smoothly varying, noisy background (float32 h x w x 3)."""
    base = rng.uniform(75, 175) + rng.uniform(-15, 15, size=3)
    blobs = rng.normal(0, 20, size=(5, 5, 1)) + rng.normal(0, 8, size=(5, 5, 3))  # mostly brightness
    blobs = np.asarray(Image.fromarray(np.clip(blobs + 128, 0, 255).astype(np.uint8)).resize(
        (w, h), Image.BILINEAR), dtype=np.float32) - 128
    yy, xx = np.mgrid[0:h, 0:w]
    gradient = (rng.uniform(-30, 30) * xx / w + rng.uniform(-30, 30) * yy / h)[..., None]
    return (base + blobs + gradient).astype(np.float32)


def paint(canvas, mask, colour, texture, rng):
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


def finish_pixels(canvas, rng):
    """The canvas with pixel noise, as uint8."""
    noisy = canvas + rng.normal(0, 6, size=canvas.shape)
    return np.clip(noisy, 0, 255).round().astype(np.uint8)


def random_image_shape(rng, image_size):
    """(h, w) of an image whose longest side is in [0.75, 1] x image_size; landscape 70% of the time."""
    long_side = int(rng.integers(round(0.75 * image_size), image_size + 1))
    short_side = int(round(long_side * rng.uniform(0.6, 1.0)))
    return (short_side, long_side) if rng.random() < 0.7 else (long_side, short_side)  # (h, w)
