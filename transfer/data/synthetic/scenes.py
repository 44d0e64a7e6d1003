"""Annotated synthetic scenes: objects placed on free pixels of a background, each with its annotation.

A :class:`Scene` keeps the objects apart (never a shared pixel, a one-pixel gap between them), so each
object's polygons are exactly what was painted. Objects are dicts: ``cls`` (shape name or ``person``),
``segmentation`` (COCO polygons) or ``rle`` with ``crowd`` True, ``bbox`` (COCO x, y, w, h), ``mask_area``,
``mask_box`` (inclusive pixel box) and, for people, ``keypoints``.

Colours (``colours``): ``"class"`` paints every shape in its class's colour (colour alone then tells the
class); ``"random"`` gives each shape, or each crowd, a vivid colour of its own (random hue), so that a
class is its outline and texture, as in real photographs where colour says little about the class. The
stick-figure person keeps its part colours in both.
"""
import colorsys

import numpy as np

from transfer.data.synthetic.categories import DETECTION_SHAPES, PERSON, PERSON_COLOURS, SHAPE_BY_NAME
from transfer.data.synthetic.drawing import (background_pixels, coco_polygons, dilate, finish_pixels, inside_image,
                                            paint, polygon_points, random_image_shape, rasterize, shape_polygons,
                                            stick_figure)


COLOUR_MODES = ("class", "random")


class Scene:
    """One image: its pixels and its objects (dicts with cls, polygons or rle, bbox, area, ...);
    ``colours``: one of :data:`COLOUR_MODES` (see the module docstring)."""

    def __init__(self, h, w, rng, colours="class"):
        if colours not in COLOUR_MODES:
            raise ValueError(f"colours {colours!r}: choose from {', '.join(COLOUR_MODES)}")
        self.h, self.w = h, w
        self.colours = colours
        self.canvas = background_pixels(h, w, rng)
        self.occupied = np.zeros((h, w), bool)  # objects plus a one-pixel gap around them
        self.objects = []

    def free_mask(self, flat_polygons):
        """The mask of these polygons if they lie inside the image on free pixels, else None."""
        if not inside_image(polygon_points(flat_polygons), self.h, self.w):
            return None
        mask = rasterize(flat_polygons, self.h, self.w)
        if mask.sum() < 12 or (mask & self.occupied).any():
            return None
        return mask

    def add(self, obj, mask):
        """Record ``obj`` drawn at ``mask`` and keep its pixels and their border free of later objects."""
        self.occupied |= dilate(mask)
        obj["mask_area"] = int(mask.sum())
        ys, xs = np.nonzero(mask)
        obj["mask_box"] = (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max()))  # inclusive
        self.objects.append(obj)

    def shape_colour(self, name, rng):
        """The RGB colour of the next shape ``name``: its class's, or a vivid random one."""
        if self.colours == "class":
            return SHAPE_BY_NAME[name].colour
        hue, saturation, value = rng.random(), rng.uniform(0.55, 1.0), rng.uniform(0.6, 1.0)
        return tuple(int(round(255 * c)) for c in colorsys.hsv_to_rgb(hue, saturation, value))

    def pixels(self, rng):
        """The finished image (uint8 h x w x 3)."""
        return finish_pixels(self.canvas, rng)


def _polygon_box(polygons):
    """COCO box [x, y, w, h] of the polygons, rounded to 2 decimals."""
    pts = np.concatenate(polygons)
    x0, y0 = pts.min(0)
    x1, y1 = pts.max(0)
    return [round(float(x0), 2), round(float(y0), 2), round(float(x1 - x0), 2), round(float(y1 - y0), 2)]


def add_shape(scene, name, rng, min_size, max_size):
    """Paint one shape ``name`` on free pixels (30 tries); whether it was placed."""
    shape = SHAPE_BY_NAME[name]
    for _ in range(30):
        size = float(np.exp(rng.uniform(np.log(min_size), np.log(max_size))))
        cx = rng.uniform(size / 2 + 1, scene.w - size / 2 - 1)
        cy = rng.uniform(size / 2 + 1, scene.h - size / 2 - 1)
        flat = coco_polygons(shape_polygons(name, cx, cy, size, rng))
        mask = scene.free_mask(flat)
        if mask is not None:
            paint(scene.canvas, mask, scene.shape_colour(name, rng), shape.texture, rng)
            scene.add({"cls": name, "segmentation": flat, "bbox": _polygon_box(polygon_points(flat))}, mask)
            return True
    return False


def add_person(scene, rng, min_height, max_height):
    """Paint one stick figure with its keypoints on free pixels (30 tries); whether it was placed."""
    for _ in range(30):
        height = rng.uniform(min_height, max_height)
        cx = rng.uniform(0.25 * height, scene.w - 0.25 * height)
        top = rng.uniform(1, max(scene.h - height - 1, 1.5))
        parts, points = stick_figure(cx, top, height, rng)
        flat_parts = {part: coco_polygons(polys) for part, polys in parts.items()}
        flat = flat_parts["limb"] + flat_parts["torso"] + flat_parts["head"]
        mask = scene.free_mask(flat)
        if mask is None:
            continue
        for part in ("limb", "torso", "head"):
            part_mask = rasterize(flat_parts[part], scene.h, scene.w)
            paint(scene.canvas, part_mask, PERSON_COLOURS[part], "solid", rng)
        bbox = _polygon_box(polygon_points(flat))
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


def add_crowd(scene, name, rng):
    """A cluster of small same-class objects, annotated as one crowd region (uncompressed RLE)."""
    short = min(scene.h, scene.w)
    item = rng.uniform(max(6.0, 0.05 * short), max(9.0, 0.09 * short))
    radius = min(item * rng.uniform(1.8, 2.6), short / 2 - item - 1)
    if radius < item:
        return False
    gx = rng.uniform(radius + item, scene.w - radius - item)
    gy = rng.uniform(radius + item, scene.h - radius - item)
    group = np.zeros((scene.h, scene.w), bool)
    colour = None if name == PERSON else scene.shape_colour(name, rng)
    for _ in range(int(rng.integers(4, 9))):
        cx, cy = gx + rng.uniform(-radius, radius), gy + rng.uniform(-radius, radius)
        if name == PERSON:
            parts, _ = stick_figure(cx, cy - item, 2.5 * item, rng)
            polygons = parts["limb"] + parts["torso"] + parts["head"]
        else:
            polygons = shape_polygons(name, cx, cy, item, rng)
        mask = scene.free_mask(coco_polygons(polygons))
        if mask is None:
            continue
        if name == PERSON:
            for part in ("limb", "torso", "head"):
                paint(scene.canvas, rasterize(coco_polygons(parts[part]), scene.h, scene.w) & mask,
                       PERSON_COLOURS[part], "solid", rng)
        else:
            paint(scene.canvas, mask, colour, SHAPE_BY_NAME[name].texture, rng)
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


def detection_scene(rng, image_size, empty, crowd=True, colours="class"):
    """A detection image: shapes of DETECTION_SHAPES, stick figures, sometimes a crowd cluster."""
    h, w = random_image_shape(rng, image_size)
    scene = Scene(h, w, rng, colours)
    if not empty:
        short = min(h, w)
        classes = [s.name for s in DETECTION_SHAPES] + [PERSON]
        if crowd and rng.random() < 0.2:
            add_crowd(scene, classes[int(rng.integers(len(classes)))], rng)
        min_height, max_height = max(40.0, 0.35 * h), 0.9 * h - 2
        for _ in range(int(rng.choice([0, 0, 1, 1, 2])) if max_height > min_height else 0):
            add_person(scene, rng, min_height, max_height)
        for _ in range(int(rng.integers(1, 5))):
            name = DETECTION_SHAPES[int(rng.integers(len(DETECTION_SHAPES)))].name
            add_shape(scene, name, rng, max(12.0, 0.1 * short), 0.5 * short)
    return scene


def empty_flags(rng, n):
    """Which images of a split show no object: about one in eight, at least one when n >= 3."""
    flags = rng.random(n) < 0.12
    if n >= 3 and not flags.any():
        flags[-1] = True
    return flags
