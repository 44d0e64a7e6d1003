#!/usr/bin/env python
"""Write real-format synthetic datasets (COCO, keypoints, VOC, LVIS, ImageNet folders) under a root.

    python tools/make_synthetic_data.py --root DIR [--kinds coco,keypoints,voc,lvis,imagenet]
                                        [--num-images N] [--seed S] [--image-size PX]

Then ``DETECTRON2_DATASETS=DIR`` makes Detectron2's builtin names (coco_2017_train, voc_2007_test,
lvis_v1_val, ...) read them. See transfer/synthetic.py for what each kind writes.
"""
import argparse
import sys
import time

from transfer.synthetic import (DEFAULT_IMAGE_SIZE, DEFAULT_NUM_IMAGES, KINDS, SyntheticDataError,
                                write_synthetic)


def _rows(counts, prefix=""):
    """Flatten {kind: {split: {...counts}}} (VOC nests one level deeper) into table rows."""
    for key, value in counts.items():
        if "images" in value:
            yield prefix + key, value
        else:
            yield from _rows(value, prefix + key + "/")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="output folder (use it as DETECTRON2_DATASETS)")
    parser.add_argument("--kinds", default=",".join(KINDS),
                        help=f"comma-separated subset of {','.join(KINDS)} (default: all)")
    parser.add_argument("--num-images", type=int, default=DEFAULT_NUM_IMAGES,
                        help="images per training split (ImageNet: per class); val/test get a quarter, "
                             f"at least 2 (default: {DEFAULT_NUM_IMAGES})")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--image-size", type=int, default=DEFAULT_IMAGE_SIZE,
                        help=f"longest image side in pixels, at most (default: {DEFAULT_IMAGE_SIZE})")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        counts = write_synthetic(args.root, kinds=args.kinds, num_images=args.num_images, seed=args.seed,
                                 image_size=args.image_size)
    except (SyntheticDataError, OSError) as e:
        print(f"make_synthetic_data: error: {e}", file=sys.stderr)
        return 1
    rows = list(_rows(counts))
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        detail = ", ".join(f"{k} {v}" for k, v in value.items())
        print(f"{name:<{width}}  {detail}")
    print(f"wrote {', '.join(counts)} under {args.root} in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
