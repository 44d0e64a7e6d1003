"""ImageNet-style class folders ``imagenet/{train,val}/<wnid>/*.JPEG`` (pretraining, kNN monitor).

Ten classes named by real wnids (the Imagenette classes), one synthetic shape each; every image shows
one large object of its class's shape (in its class's colour, or a random one: ``colours``), with ImageNet's file names (``<wnid>_<n>.JPEG`` in train,
``ILSVRC2012_val_<n>.JPEG`` in val).
"""
import os
import shutil

import numpy as np

from pretrain.common.fileio import write_bytes_atomic

from transfer.data.synthetic.categories import IMAGENET_WNIDS, SHAPES
from transfer.data.synthetic.common import jpeg_bytes, random_stream
from transfer.data.synthetic.drawing import random_image_shape
from transfer.data.synthetic.scenes import Scene, add_shape


def write_imagenet(root, n_train, n_val, seed, image_size, colours="class"):
    """Write ``n_train`` (``n_val``) images per class; return ``{split: {"images", "classes"}}``."""
    counts = {}
    for split, per_class in (("train", n_train), ("val", n_val)):
        rng = random_stream(seed, "imagenet", split)
        folder = os.path.join(root, "imagenet", split)
        if os.path.isdir(folder):  # a previous synthetic run (checked): drop its stale images
            shutil.rmtree(folder)
        val_numbers = iter(sorted(rng.choice(np.arange(1, 50001), per_class * len(IMAGENET_WNIDS),
                                             replace=False)))
        for wnid, shape in zip(IMAGENET_WNIDS, SHAPES):
            os.makedirs(os.path.join(folder, wnid), exist_ok=True)
            numbers = sorted(rng.choice(np.arange(1, 20000), per_class, replace=False))
            for number in numbers:
                h, w = random_image_shape(rng, image_size)
                scene = Scene(h, w, rng, colours)
                short = min(h, w)
                if not add_shape(scene, shape.name, rng, 0.35 * short, 0.85 * short):
                    raise RuntimeError(f"could not place a {shape.name} in a {w}x{h} image")
                if split == "train":
                    file_name = f"{wnid}_{int(number)}.JPEG"
                else:
                    file_name = f"ILSVRC2012_val_{int(next(val_numbers)):08d}.JPEG"
                write_bytes_atomic(os.path.join(folder, wnid, file_name), jpeg_bytes(scene.pixels(rng)))
        counts[split] = {"images": per_class * len(IMAGENET_WNIDS), "classes": len(IMAGENET_WNIDS)}
    return counts
