#!/usr/bin/env python
"""Write real-format synthetic datasets (COCO, keypoints, VOC, LVIS, ImageNet folders, CDP) under a root.

    python tools/make_synthetic_data.py --root DIR [--kinds coco,keypoints,voc,lvis,imagenet,cdp]
                                        [--num-images N] [--seed S] [--image-size PX] [--object-colours class|random]
                                        [--cdp-image-size PX] [--cdp-background FOLDER] [--cdp-mix W]

Then ``DETECTRON2_DATASETS=DIR`` makes Detectron2's builtin names (coco_2017_train, voc_2007_test,
lvis_v1_val, ...) read them. The CDP data (colour x digit x position, for tools/estimate_mi.py) is
written only when named: ``--kinds cdp`` gives DIR/cdp/{train,val}/ with a labels.csv each; same-class
pairing needs a few images per combination, e.g. ``--kinds cdp --num-images 8000`` (val: 2000 images, about
31 per colour x digit x position). See the package transfer/data/synthetic/ for what each kind writes.
"""
import sys
import time

from pretrain.common.cli import ArgumentParser, one_line_errors
from transfer.data.synthetic import (CDP_DEFAULT_IMAGE_SIZE, CDP_DEFAULT_MIX, DEFAULT_IMAGE_SIZE, DEFAULT_NUM_IMAGES,
                                     KINDS, OPTIONAL_KINDS, SyntheticDataError, write_synthetic)

PROG = "make_synthetic_data"
ERROR_STATUS = 1  # bad values or an output folder holding real data (usage errors exit with 2)


def _rows(counts, prefix=""):
    """Flatten {kind: {split: {...counts}}} (VOC nests one level deeper) into table rows."""
    for key, value in counts.items():
        if "images" in value:
            yield prefix + key, value
        else:
            yield from _rows(value, prefix + key + "/")


def main(argv=None):
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="output folder (use it as DETECTRON2_DATASETS)")
    parser.add_argument("--kinds", default=",".join(KINDS),
                        help=f"comma-separated subset of {','.join(KINDS + OPTIONAL_KINDS)} "
                             f"(default: {','.join(KINDS)})")
    parser.add_argument("--num-images", type=int, default=DEFAULT_NUM_IMAGES,
                        help="images per training split (ImageNet: per class); val/test get a quarter, "
                             f"at least 2 (default: {DEFAULT_NUM_IMAGES})")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--image-size", type=int, default=DEFAULT_IMAGE_SIZE,
                        help=f"longest image side in pixels, at most (default: {DEFAULT_IMAGE_SIZE})")
    parser.add_argument("--object-colours", choices=("class", "random"), default="class",
                        help="class: every shape in its class's colour (colour alone tells the class); random: a "
                             "vivid random colour per shape, so the class is its outline and texture (default: class)")
    cdp = parser.add_argument_group("CDP (--kinds cdp)")
    cdp.add_argument("--cdp-image-size", type=int, default=None,
                     help=f"side of the square CDP images in pixels (default: {CDP_DEFAULT_IMAGE_SIZE})")
    cdp.add_argument("--cdp-background", metavar="FOLDER", default=None,
                     help="images (any depth, e.g. an ImageNet train folder) whose random crops are mixed into "
                          "the background (default: generated textures)")
    cdp.add_argument("--cdp-mix", type=float, default=None,
                     help=f"weight of the background in the linear mix, in [0, 1) (default: {CDP_DEFAULT_MIX})")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    with one_line_errors(PROG, SyntheticDataError, OSError, status=ERROR_STATUS):
        counts = write_synthetic(args.root, kinds=args.kinds, num_images=args.num_images, seed=args.seed,
                                 image_size=args.image_size, cdp_image_size=args.cdp_image_size,
                                 cdp_background=args.cdp_background, cdp_mix=args.cdp_mix,
                                 object_colours=args.object_colours)
    rows = list(_rows(counts))
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        detail = ", ".join(f"{k} {v}" for k, v in value.items())
        print(f"{name:<{width}}  {detail}")
    print(f"wrote {', '.join(counts)} under {args.root} in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
