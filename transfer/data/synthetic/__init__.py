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

Modules: ``root`` (write_synthetic), ``categories`` (real tables, synthetic classes), ``drawing`` and
``scenes`` (the images), ``coco_family`` with ``coco``, ``keypoints``, ``lvis``; ``voc``, ``imagenet``,
``cdp``; ``common`` (error type, random streams, encodings).
"""
from transfer.data.synthetic.categories import (COCO_CATEGORIES, COCO_KEYPOINT_NAMES, COCO_SKELETON,
                                               DETECTION_SHAPES, IMAGENET_WNIDS, PERSON, SHAPES, VOC_CLASSES, Shape)
from transfer.data.synthetic.cdp import (CDP_ATTRIBUTES, CDP_COLORS, CDP_DEFAULT_IMAGE_SIZE, CDP_DEFAULT_MIX,
                                        CDP_DIGIT_HEIGHT, CDP_DIGITS, CDP_LABELS, CDP_MIN_IMAGE_SIZE, CDP_POSITIONS,
                                        cdp_attributes, make_cdp)
from transfer.data.synthetic.common import JPEG_QUALITY, SyntheticDataError
from transfer.data.synthetic.root import (DEFAULT_IMAGE_SIZE, DEFAULT_NUM_IMAGES, KINDS, MARKER, MIN_IMAGE_SIZE,
                                         OPTIONAL_KINDS, split_sizes, write_synthetic)

__all__ = [
    "write_synthetic", "make_cdp", "split_sizes", "cdp_attributes", "SyntheticDataError",
    "KINDS", "OPTIONAL_KINDS", "DEFAULT_NUM_IMAGES", "DEFAULT_IMAGE_SIZE", "MIN_IMAGE_SIZE", "JPEG_QUALITY", "MARKER",
    "COCO_CATEGORIES", "COCO_KEYPOINT_NAMES", "COCO_SKELETON", "VOC_CLASSES", "IMAGENET_WNIDS",
    "Shape", "SHAPES", "DETECTION_SHAPES", "PERSON",
    "CDP_COLORS", "CDP_DIGITS", "CDP_POSITIONS", "CDP_ATTRIBUTES", "CDP_LABELS", "CDP_DEFAULT_IMAGE_SIZE",
    "CDP_MIN_IMAGE_SIZE", "CDP_DEFAULT_MIX", "CDP_DIGIT_HEIGHT",
]
