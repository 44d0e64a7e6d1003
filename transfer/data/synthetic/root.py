"""One root of synthetic datasets: which kinds to write, with which sizes, and never over real data.

:func:`write_synthetic` checks its arguments, refuses a root that already holds one of the folders to
write unless a previous synthetic run left its marker file (``SYNTHETIC.json``) there, writes the marker,
then calls each kind's writer.
"""
import os

from pretrain.common.fileio import write_bytes_atomic

from transfer.data.synthetic.cdp import cdp_options, write_cdp
from transfer.data.synthetic.coco_family import write_coco_family
from transfer.data.synthetic.common import SyntheticDataError, check_integer, json_bytes
from transfer.data.synthetic.imagenet import write_imagenet
from transfer.data.synthetic.scenes import COLOUR_MODES
from transfer.data.synthetic.voc import write_voc

KINDS = ("coco", "keypoints", "voc", "lvis", "imagenet")
OPTIONAL_KINDS = ("cdp",)  # written only when asked for
DEFAULT_NUM_IMAGES = 64
DEFAULT_IMAGE_SIZE = 192  # longest image side; each image's is drawn from [0.75, 1] x this
MIN_IMAGE_SIZE = 96
MARKER = "SYNTHETIC.json"
_FOLDERS = {"coco": ["coco"], "keypoints": ["coco"], "lvis": ["coco", "lvis"],  # what each kind writes
            "voc": ["VOC2007", "VOC2012"], "imagenet": ["imagenet"], "cdp": ["cdp"]}


def split_sizes(num_images):
    """Images per split: (training splits, validation/test splits)."""
    return num_images, max(2, num_images // 4)


def write_synthetic(root, kinds=KINDS, num_images=DEFAULT_NUM_IMAGES, seed=0,
                    image_size=DEFAULT_IMAGE_SIZE, cdp_image_size=None, cdp_background=None, cdp_mix=None,
                    object_colours="class"):
    """Write the synthetic datasets ``kinds`` under ``root``; return what was written.

    Returns ``{kind: {dataset_or_split: {"images": int, "annotations": int, ...}}}``:
    ``coco``: ``train2017``/``val2017`` with ``images``, ``annotations``, ``crowd``, ``empty_images``;
    ``keypoints``: the same splits with ``images``, ``annotations`` (persons), ``crowd``,
    ``keypoints`` (labelled keypoints, v > 0); ``voc``: ``VOC2007``/``VOC2012`` -> split ->
    ``images``, ``annotations``, ``difficult``; ``lvis``: ``train``/``val`` with ``images``,
    ``annotations``; ``imagenet``: ``train``/``val`` with ``images``, ``classes``; ``cdp``: ``train``/``val``
    with ``images``, ``classes`` (colour x digit x position combinations).

    ``object_colours``: ``"class"`` (every shape in its class's colour: colour alone tells the class) or
    ``"random"`` (a vivid random colour per shape: the class is its outline and texture), for the COCO
    family, VOC and ImageNet kinds.

    ``cdp_image_size``, ``cdp_background`` and ``cdp_mix`` are :func:`make_cdp`'s ``image_size``,
    ``background`` and ``mix`` (defaults there); ``image_size`` does not apply to CDP.

    Raises :class:`SyntheticDataError` for bad arguments, or when ``root`` already holds one of the
    folders to write and is not a previous synthetic output (it may be real data).
    """
    kinds = _check_arguments(kinds, num_images, seed, image_size)
    if object_colours not in COLOUR_MODES:
        raise SyntheticDataError(f"object colours {object_colours!r}: choose from {', '.join(COLOUR_MODES)}")
    num_images, seed, image_size = int(num_images), int(seed), int(image_size)
    cdp = None
    if "cdp" in kinds:
        cdp = cdp_options(cdp_image_size, cdp_background, cdp_mix)
    elif (cdp_image_size, cdp_background, cdp_mix) != (None, None, None):
        raise SyntheticDataError("the cdp_* options apply to kind 'cdp' only; add it to the kinds")
    root = os.path.expanduser(str(root))
    _check_root(root, kinds)
    os.makedirs(root, exist_ok=True)
    marker = {"writer": "transfer.data.synthetic", "kinds": list(kinds), "num_images": num_images, "seed": seed,
              "image_size": image_size,
              "object_colours": object_colours}
    if cdp is not None:
        marker["cdp"] = {"image_size": cdp["image_size"], "mix": cdp["mix"],
                         "background": os.path.abspath(cdp["background"]) if cdp["background"] else "generated"}
    write_bytes_atomic(os.path.join(root, MARKER), json_bytes(marker, indent=2))
    n_train, n_val = split_sizes(num_images)
    counts = {}
    if {"coco", "keypoints", "lvis"} & set(kinds):
        counts.update(write_coco_family(root, kinds, n_train, n_val, seed, image_size, object_colours))
    if "voc" in kinds:
        counts["voc"] = write_voc(root, n_train, n_val, seed, image_size, object_colours)
    if "imagenet" in kinds:
        counts["imagenet"] = write_imagenet(root, n_train, n_val, seed, image_size, object_colours)
    if cdp is not None:
        counts["cdp"] = write_cdp(root, n_train, n_val, seed, **cdp)
    return {kind: counts[kind] for kind in kinds}


def _check_arguments(kinds, num_images, seed, image_size):
    """The kinds (a list or a comma-separated string) in canonical order, after checking every argument."""
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
        check_integer(name, value, low)
    return tuple(k for k in KINDS + OPTIONAL_KINDS if k in kinds)  # canonical order


def _check_root(root, kinds):
    """Refuse to write over folders that a previous synthetic run did not write."""
    if os.path.exists(root) and not os.path.isdir(root):
        raise SyntheticDataError(f"{root} exists and is not a folder; choose another root")
    if os.path.isfile(os.path.join(root, MARKER)):
        return
    for kind in kinds:
        for folder in _FOLDERS[kind]:
            path = os.path.join(root, folder)
            if os.path.exists(path):
                raise SyntheticDataError(
                    f"{path} already exists and {root} has no {MARKER}, so it may be real data; "
                    "choose an empty or new root")
