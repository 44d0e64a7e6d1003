"""View pipelines: one image in, the views a method trains on out.

A view pipeline is registered by name (``INPUT.VIEWS``) in :data:`VIEWS`; a builder takes the config and
returns a :class:`ViewPipeline`. Its output, for one image, is a dict of **uint8** tensors (the method
converts to float and normalises on the device, so the loader ships a quarter of the bytes)::

    {"view1": 3xSxS, "view2": 3xSxS, ...,                    # INPUT.NUM_VIEWS augmented crops
     "jigsaw": (G*G)x3xTxT, "jigsaw_perm": (G*G,) int64}     # with JIGSAW.ENABLED: tiles in shuffled order

``jigsaw[j]`` is the tile cut from grid cell ``jigsaw_perm[j]`` (cells numbered row by row).

Randomness: a pipeline is called with a per-sample seed (derived from ``SEED``, the epoch and the image's
index, see :func:`sample_seed`) and draws every random number from torch's CPU generator seeded with it,
inside a forked RNG state. So the views of an image depend only on (seed, epoch, index): not on the
number of loader workers or processes, and a resumed run sees exactly the views of an uninterrupted one.

Registered recipes (all crops use ``INPUT.CROP_SCALE``, default (0.2, 1); colour jitter is scaled by
``INPUT.COLOR_JITTER_STRENGTH``):

- ``moco_v1``: MoCo v1 (He et al. 2020, Sec. 3.3 / official ``main_moco.py``): RandomResizedCrop,
  RandomGrayscale 0.2, ColorJitter(0.4, 0.4, 0.4, 0.4), horizontal flip.
- ``moco_v2``: MoCo v2 (Chen et al. 2020, "aug+"): RandomResizedCrop, ColorJitter(0.4, 0.4, 0.4, 0.1)
  with p 0.8, RandomGrayscale 0.2, Gaussian blur sigma in [0.1, 2] with p 0.5, horizontal flip.
- ``infomin``: InfoMin Aug (Tian et al. 2020, Appendix C.1 "RA-CJ-Blur"; PyContrast aug "D"):
  RandomResizedCrop, horizontal flip, ColorJitter(0.8, 0.8, 0.8, 0.2) with p 0.8, Gaussian blur with p 0.5,
  RandAugment as PyContrast runs it (:mod:`pretrain.data.randaugment`: its 15 ops, each of the n 2 drawn
  ops applied with p 0.5, level N(10, 0.5) clipped to 10, fill = the ImageNet mean), RandomGrayscale 0.2.
- ``cmc``: CMC as Wu et al. (2020) Appendix B.3 train it (IR's augmentations, "we exclude grayscale
  conversion ... since it does not make sense for CMC"): RandomResizedCrop, ColorJitter(0.4, 0.4, 0.4, 0.4)
  (InstDis / LA, whose practice B.3 follows), horizontal flip, **no** RandomGrayscale (a grey image has
  a = b = 0: an empty ab view). One view is enough (``INPUT.NUM_VIEWS`` 1): the method splits that crop into
  its L and ab channels on the device (:mod:`pretrain.data.lab_color`).
- ``color_jitter_only`` and ``crop_only``: one augmentation each, for the reverse-U study of InfoMin (Tian et
  al. 2020, Fig. 5 and Appendix C.2, Figs. 13-14) as Lee et al. repeat it ("only color-jittering or only
  random-resized-crop is used as the augmentation of contrastive learning", their Fig. 5):

  - ``color_jitter_only``: resize the shorter side to ``INPUT.SIZE`` and centre crop (no random crop, no
    flip), then ColorJitter(0.8 s, 0.8 s, 0.8 s, 0.2 s) with p 0.8, s = ``INPUT.COLOR_JITTER_STRENGTH``.
    InfoMin only says "a parameter x is adopted to control the strengths" (swept 0.125 .. 2.5, sweet spot
    1.0, "the same value as used in SimCLR") and Lee et al. give no parametrisation; we take SimCLR's
    colour-jitter parametrisation, the one InfoMin's x = 1 refers to and the ``infomin`` recipe's jitter,
    without SimCLR's RandomGrayscale (a second, unscaled colour op would blur "only colour jittering").
    Hue is capped at 0.5 (torchvision's range), reached at s = 2.5. s = 0 gives identical views.
  - ``crop_only``: RandomResizedCrop(``INPUT.SIZE``, scale = ``INPUT.CROP_SCALE`` = (c, 1)), nothing else (no
    flip, no colour), InfoMin's "RandomResizedCrop(scale=(c, 1.0))" with c the low-area bound (swept down
    from 1, sweet spot 0.2). c = 1 gives the whole image (aspect ratio clamped): identical views.
- ``eval``: resize to 256/224 of ``INPUT.SIZE`` and centre crop (kNN monitor, feature extraction).

Gaussian blur is PIL's (MoCo v2's ``GaussianBlur``) for every recipe; PyContrast's InfoMin blurs with a
23-tap separable kernel of the same sigma range. Ops work on PIL images; ``pil_to_tensor`` at the end.
``INPUT.VIEW_BACKEND fast`` (the default) runs the same recipe on uint8 arrays instead, with the same draws
(:mod:`pretrain.data.fast_views`; about twice the images/s per loader worker at 224 px).

The PIRL-style JigSaw branch (``JIGSAW.ENABLED``, used by InfoMin) is added to any recipe: a
RandomResizedCrop (scale ``JIGSAW.SCALE``) to ``JIGSAW.IMAGE_SIZE`` plus flip, a ``GRID x GRID`` grid, one
``TILE_SIZE`` tile at a random offset inside each cell, tiles in a random order (as PyContrast's
``JigsawCrop`` + ``JigsawHead`` shuffle), no colour augmentation.
"""
import math

import numpy as np
from torchvision import transforms as T

from pretrain.data.fast_views import accelerate
from pretrain.data.randaugment import RandAugment
from pretrain.data.view_ops import GaussianBlur, JigsawTiles, ViewPipeline

__all__ = ["VIEWS", "register_views", "build_views", "ViewPipeline", "JigsawTiles", "GaussianBlur",
           "sample_seed", "decode_size"]

VIEWS = {}


def register_views(name):
    """Decorator: ``@register_views("name")`` on a builder ``f(cfg) -> ViewPipeline``."""
    def wrap(builder):
        if name in VIEWS:
            raise ValueError(f"view pipeline {name!r} is registered twice")
        VIEWS[name] = builder
        return builder
    return wrap


def build_views(cfg, name=None, backend=None):
    """The registered recipe ``name`` (default ``INPUT.VIEWS``) on ``backend`` (default ``INPUT.VIEW_BACKEND``):
    "pil" runs its torchvision ops, "fast" their array versions (:mod:`pretrain.data.fast_views`)."""
    name = name or cfg.INPUT.VIEWS
    if name not in VIEWS:
        raise KeyError(f"unknown INPUT.VIEWS {name!r}; registered: {', '.join(sorted(VIEWS))}")
    pipeline = VIEWS[name](cfg)
    if (backend or cfg.INPUT.VIEW_BACKEND) == "fast":
        pipeline = accelerate(pipeline)
    return pipeline


def sample_seed(base_seed, epoch, index):
    """A 32-bit seed for the views of image ``index`` in ``epoch`` of a run seeded with ``base_seed``."""
    return int(np.random.SeedSequence([int(base_seed) & 0xFFFFFFFF, int(epoch), int(index)]).generate_state(1)[0])


def decode_size(size, scale):
    """Shortest side an image may be decoded at so that the smallest RandomResizedCrop (area fraction
    ``scale[0]``, aspect ratio up to 4/3) still has ``size`` source pixels on its short side."""
    return int(math.ceil(size * math.sqrt(4.0 / 3.0) / math.sqrt(max(scale[0], 1e-3))))


def _color_jitter(base, strength):
    b, c, s, h = (v * strength for v in base)
    return T.ColorJitter(b, c, s, min(h, 0.5))


def _jigsaw(cfg):
    if not cfg.JIGSAW.ENABLED:
        return None
    size = cfg.INPUT.SIZE
    image_size = cfg.JIGSAW.IMAGE_SIZE or int(round(size * 255 / 224))
    tile_size = cfg.JIGSAW.TILE_SIZE or int(round(size * 64 / 224))
    return JigsawTiles(cfg.JIGSAW.GRID, image_size, tile_size, cfg.JIGSAW.SCALE)


def _pipeline(cfg, name, ops, need=None):
    """``need``: the shortest side the views need decoded (default: the smallest ``INPUT.CROP_SCALE`` crop)."""
    jigsaw = _jigsaw(cfg)
    if need is None:
        need = decode_size(cfg.INPUT.SIZE, cfg.INPUT.CROP_SCALE)
    if jigsaw is not None:
        need = max(need, decode_size(jigsaw.image_size, cfg.JIGSAW.SCALE))
    return ViewPipeline(T.Compose(ops), cfg.INPUT.NUM_VIEWS, jigsaw, need, name)


def _crop(cfg):
    return T.RandomResizedCrop(cfg.INPUT.SIZE, scale=tuple(cfg.INPUT.CROP_SCALE), antialias=True)


@register_views("moco_v1")
def moco_v1_views(cfg):
    return _pipeline(cfg, "moco_v1", [
        _crop(cfg),
        T.RandomGrayscale(p=0.2),
        _color_jitter((0.4, 0.4, 0.4, 0.4), cfg.INPUT.COLOR_JITTER_STRENGTH),
        T.RandomHorizontalFlip(),
    ])


@register_views("moco_v2")
def moco_v2_views(cfg):
    return _pipeline(cfg, "moco_v2", [
        _crop(cfg),
        T.RandomApply([_color_jitter((0.4, 0.4, 0.4, 0.1), cfg.INPUT.COLOR_JITTER_STRENGTH)], p=0.8),
        T.RandomGrayscale(p=0.2),
        T.RandomApply([GaussianBlur(cfg.INPUT.BLUR_SIGMA)], p=0.5),
        T.RandomHorizontalFlip(),
    ])


@register_views("infomin")
def infomin_views(cfg):
    fill = [min(255, round(255 * m)) for m in cfg.INPUT.PIXEL_MEAN]
    ra = cfg.INPUT.RANDAUGMENT
    return _pipeline(cfg, "infomin", [
        _crop(cfg),
        T.RandomHorizontalFlip(),
        T.RandomApply([_color_jitter((0.8, 0.8, 0.8, 0.2), cfg.INPUT.COLOR_JITTER_STRENGTH)], p=0.8),
        T.RandomApply([GaussianBlur(cfg.INPUT.BLUR_SIGMA)], p=0.5),
        RandAugment(ra.NUM_OPS, ra.MAGNITUDE, ra.MAGNITUDE_STD, fill=fill),
        T.RandomGrayscale(p=0.2),
    ])


@register_views("cmc")
def cmc_views(cfg):
    return _pipeline(cfg, "cmc", [
        _crop(cfg),
        _color_jitter((0.4, 0.4, 0.4, 0.4), cfg.INPUT.COLOR_JITTER_STRENGTH),
        T.RandomHorizontalFlip(),
    ])


@register_views("color_jitter_only")
def color_jitter_only_views(cfg):
    size = cfg.INPUT.SIZE
    return _pipeline(cfg, "color_jitter_only", [
        T.Resize(size, antialias=True),
        T.CenterCrop(size),
        T.RandomApply([_color_jitter((0.8, 0.8, 0.8, 0.2), cfg.INPUT.COLOR_JITTER_STRENGTH)], p=0.8),
    ], need=size)


@register_views("crop_only")
def crop_only_views(cfg):
    return _pipeline(cfg, "crop_only", [_crop(cfg)])


@register_views("eval")
def eval_views(cfg):
    size = cfg.INPUT.SIZE
    resize = int(round(size * 256 / 224))
    return ViewPipeline(T.Compose([T.Resize(resize, antialias=True), T.CenterCrop(size)]), num_views=1,
                        min_decode_size=resize, name="eval")
