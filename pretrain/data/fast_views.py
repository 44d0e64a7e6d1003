"""The fast backend of the view pipelines (``INPUT.VIEW_BACKEND fast``, the default): the recipes of
:mod:`pretrain.data.views`, translated op by op to HxWx3 uint8 arrays, with the same random draws.

:func:`accelerate` takes a :class:`~pretrain.data.views.ViewPipeline` and returns one that computes the same
views: every op draws its random numbers from torch's generator exactly as the torchvision op it replaces
(same calls, same order), so a sample seed gives the **same crop boxes, flips, jitter factors and order,
grayscale and blur decisions and sigmas** in both backends. The pixels agree up to the arithmetic of each op:

============================  =================================================================  ==============
op                            fast implementation                                                pixels vs PIL
============================  =================================================================  ==============
RandomResizedCrop             crop, then torch's antialiased bilinear uint8 resize                within 1 level
(bilinear, antialias)         (torchvision's tensor path, built to match PIL's filter)
ColorJitter: brightness,      256-entry lookup table of PIL's ``Image.blend`` (float32, truncated)   identical
contrast                      (contrast: the mean of PIL's ``L`` image, rounded, as ImageEnhance)
ColorJitter: saturation       PIL's blend with its ``L`` image, in float32                       identical
ColorJitter: hue              OpenCV's 8-bit HSV (hue in 1/256 turns, rounded) instead of PIL's   ~2 levels on
                              (1/255 turns, truncated); the same hue offset                      average
RandomGrayscale               PIL's ``L`` conversion, replicated to 3 channels                    identical
GaussianBlur (MoCo v2's)      OpenCV's Gaussian kernel of the same sigma (+-3 sigma, edges        0.3-0.7 levels
                              replicated) instead of PIL's three box passes                      on average
RandomHorizontalFlip          array flip                                                          identical
RandomApply, Compose          the same, with translated contents                                  -
anything else                 runs on a PIL image (e.g. RandAugment; converted in and out)        identical
============================  =================================================================  ==============

Each view costs a fraction of the PIL pipeline's time (``tools/bench_pretrain.py``'s data table; the PIL
hue and blur alone take about 2 ms each on a 224 px view). The tests check that both backends draw the
same parameters and give views within the tolerances above.

OpenCV (``cv2``) comes with the project's dependencies (``lvis`` requires it); without it :func:`accelerate`
returns the pipeline unchanged.
"""
import copy

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

from pretrain.common.rng import seed_cpu
from pretrain.data.view_ops import GaussianBlur, JigsawTiles, ViewPipeline

try:  # noqa: SIM105 - an optional accelerator: without it the PIL backend runs
    import cv2
except ImportError:  # pragma: no cover - cv2 is installed with lvis
    cv2 = None

__all__ = ["accelerate", "available", "FastViewPipeline", "to_array", "to_chw"]


def available():
    return cv2 is not None


def to_array(image):
    """HxWx3 uint8 RGB array (a writable copy) of a PIL image; arrays pass through."""
    if isinstance(image, np.ndarray):
        return image
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.array(image)


def to_chw(array):
    """HxWx3 uint8 array -> contiguous 3xHxW uint8 tensor (what ``pil_to_tensor`` gives)."""
    return torch.from_numpy(np.stack(cv2.split(array)))  # OpenCV's de-interleave: faster than a strided copy


def _blend_lut(base, factor):
    """PIL's ``Image.blend(constant base, image, factor)`` as a table over the 256 input levels."""
    v = np.arange(256, dtype=np.float32)
    base = np.float32(base)
    out = base + np.float32(factor) * (v - base)
    return np.clip(out, 0.0, 255.0).astype(np.uint8)  # PIL truncates and clips the same way


def _luma(a):
    """PIL's ``convert("L")`` of an RGB array (ITU-R 601-2 in 16-bit fixed point), HxW uint8."""
    return np.asarray(Image.fromarray(a, "RGB").convert("L"))


def adjust_brightness(a, factor):
    return cv2.LUT(a, _blend_lut(0, factor))


def adjust_contrast(a, factor):
    mean = int(float(_luma(a).mean()) + 0.5)
    return cv2.LUT(a, _blend_lut(mean, factor))


def adjust_saturation(a, factor):
    gray = cv2.cvtColor(_luma(a), cv2.COLOR_GRAY2RGB).astype(np.float32)  # flat arrays: fast numpy loops
    out = a.astype(np.float32)
    out -= gray
    out *= np.float32(factor)
    out += gray
    return np.clip(out, 0.0, 255.0, out=out).astype(np.uint8)


def adjust_hue(a, factor):
    """torchvision's PIL hue shift (``int(factor * 255)`` steps of 1/255 turn) with OpenCV's HSV."""
    steps = int(factor * 255)  # the same truncated offset as torchvision's PIL path
    if steps == 0:
        return a
    hsv = cv2.cvtColor(a, cv2.COLOR_RGB2HSV_FULL)
    shift = int(round(steps / 255.0 * 256)) % 256
    hsv[:, :, 0] += np.uint8(shift)  # wraps around the circle
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB_FULL)


def grayscale(a):
    return cv2.cvtColor(_luma(a), cv2.COLOR_GRAY2RGB)


class RandomResizedCrop:
    """``T.RandomResizedCrop`` (bilinear, antialiased) on arrays; the same ``get_params`` draws."""

    def __init__(self, op):
        self.size = tuple(op.size)
        self.scale, self.ratio = op.scale, op.ratio

    def __call__(self, a):
        h, w = a.shape[:2]
        shape = torch.empty((1, 1, 1), dtype=torch.uint8).expand(3, h, w)  # get_params reads only the size
        i, j, ch, cw = T.RandomResizedCrop.get_params(shape, self.scale, self.ratio)
        if (ch, cw) == self.size:
            return np.ascontiguousarray(a[i:i + ch, j:j + cw])
        # an NHWC tensor in, an NHWC tensor out: the resize's vectorised uint8 path, and no transposition
        x = torch.from_numpy(a[i:i + ch, j:j + cw]).permute(2, 0, 1).unsqueeze(0)
        x = x.contiguous(memory_format=torch.channels_last)
        y = F.interpolate(x, size=self.size, mode="bilinear", antialias=True, align_corners=False)
        return np.ascontiguousarray(y[0].permute(1, 2, 0).numpy())

    def __repr__(self):
        return f"RandomResizedCrop(size={self.size}, scale={self.scale}, ratio={self.ratio}, fast)"


class ColorJitter:
    """``T.ColorJitter`` on arrays: the same ``get_params`` draws (factors and order)."""

    _OPS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)

    def __init__(self, op):
        self.brightness, self.contrast, self.saturation, self.hue = op.brightness, op.contrast, op.saturation, op.hue

    def __call__(self, a):
        order, *factors = T.ColorJitter.get_params(self.brightness, self.contrast, self.saturation, self.hue)
        for k in order.tolist():
            if factors[k] is not None:
                a = self._OPS[k](a, factors[k])
        return a

    def __repr__(self):
        return (f"ColorJitter(brightness={self.brightness}, contrast={self.contrast}, saturation={self.saturation}, "
                f"hue={self.hue}, fast)")


class RandomGrayscale:
    def __init__(self, op):
        self.p = op.p

    def __call__(self, a):
        if torch.rand(1) < self.p:
            return grayscale(a)
        return a

    def __repr__(self):
        return f"RandomGrayscale(p={self.p}, fast)"


class RandomHorizontalFlip:
    def __init__(self, op):
        self.p = op.p

    def __call__(self, a):
        if torch.rand(1) < self.p:
            return cv2.flip(a, 1)
        return a

    def __repr__(self):
        return f"RandomHorizontalFlip(p={self.p}, fast)"


class Blur:
    """:class:`~pretrain.data.views.GaussianBlur` (the same sigma draw) with OpenCV's Gaussian kernel."""

    def __init__(self, op):
        self.sigma = op.sigma

    def __call__(self, a):
        lo, hi = self.sigma
        s = lo + (hi - lo) * float(torch.rand(()))
        return cv2.GaussianBlur(a, (0, 0), s, borderType=cv2.BORDER_REPLICATE)

    def __repr__(self):
        return f"GaussianBlur(sigma={self.sigma}, fast)"


class RandomApply:
    def __init__(self, p, ops):
        self.p, self.ops = p, ops

    def __call__(self, a):
        if self.p < torch.rand(1):
            return a
        for op in self.ops:
            a = op(a)
        return a

    def __repr__(self):
        return f"RandomApply(p={self.p}, {self.ops!r})"


class OnPIL:
    """Ops without an array version (RandAugment, Resize, ...): array -> PIL image -> ops -> array."""

    def __init__(self, ops):
        self.ops = list(ops)

    def __call__(self, a):
        image = Image.fromarray(a, "RGB")
        for op in self.ops:
            image = op(image)
        return to_array(image)

    def __repr__(self):
        return f"OnPIL({self.ops!r})"


class Sequence:
    def __init__(self, ops):
        self.ops = ops

    def __call__(self, a):
        for op in self.ops:
            a = op(a)
        return a

    def __repr__(self):
        return f"Sequence({self.ops!r})"


def _translate_one(op):
    """The array version of one op, or None when it has none."""
    kind = type(op)
    if kind is T.RandomResizedCrop and op.interpolation == InterpolationMode.BILINEAR and op.antialias is not False:
        return RandomResizedCrop(op)
    if kind is T.ColorJitter:
        return ColorJitter(op)
    if kind is T.RandomGrayscale:
        return RandomGrayscale(op)
    if kind is T.RandomHorizontalFlip:
        return RandomHorizontalFlip(op)
    if kind is GaussianBlur:
        return Blur(op)
    if kind is T.RandomApply:
        inner = _translate_list(list(op.transforms))
        return RandomApply(op.p, inner) if inner is not None else None
    return None


def _translate_list(ops):
    """Array versions of ``ops`` (runs of untranslatable ops grouped into one :class:`OnPIL`); None when
    nothing translates (the pipeline is best left on PIL)."""
    out, pending, translated = [], [], 0
    for op in ops:
        if isinstance(op, T.Compose):
            sub = _translate_list(list(op.transforms))
            fast = Sequence(sub) if sub is not None else None
        else:
            fast = _translate_one(op)
        if fast is None:
            pending.append(op)
            continue
        if pending:
            out.append(OnPIL(pending))
            pending = []
        out.append(fast)
        translated += 1
    if pending:
        out.append(OnPIL(pending))
    return out if translated else None


class _ArrayJigsaw:
    """:class:`~pretrain.data.views.JigsawTiles` with its crop and flip on arrays (same draws, same tiles)."""

    def __init__(self, jigsaw, crop):
        self.original = jigsaw
        self.jigsaw = copy.copy(jigsaw)
        self.jigsaw.crop = Sequence(crop + [Image.fromarray])

    def __getattr__(self, name):  # grid, tile_size, image_size, cell: the original's
        if name in ("original", "jigsaw"):
            raise AttributeError(name)
        return getattr(self.original, name)

    def __call__(self, a):
        return self.jigsaw(a)

    def __repr__(self):
        return f"fast {self.original!r}"


class FastViewPipeline(ViewPipeline):
    """A :class:`ViewPipeline` whose ops run on arrays; the same seeds give the same draws (module docstring)."""

    def __call__(self, image, seed=0):
        a = to_array(image)
        with torch.random.fork_rng(devices=[]):
            seed_cpu(seed)
            out = {f"view{i + 1}": to_chw(self.augment(a)) for i in range(self.num_views)}
            if self.jigsaw is not None:
                out["jigsaw"], out["jigsaw_perm"] = self.jigsaw(a)
        return out

    def __repr__(self):
        return "Fast" + super().__repr__()


def accelerate(pipeline):
    """The fast version of ``pipeline`` (a :class:`ViewPipeline` of torchvision ops), or ``pipeline`` itself
    when none of its ops has an array version or OpenCV is missing."""
    if cv2 is None or isinstance(pipeline, FastViewPipeline):
        return pipeline
    ops = list(pipeline.augment.transforms) if isinstance(pipeline.augment, T.Compose) else [pipeline.augment]
    augment = _translate_list(ops)
    jigsaw = pipeline.jigsaw
    if isinstance(jigsaw, JigsawTiles):
        crop = _translate_list(list(jigsaw.crop.transforms))
        if crop is not None:
            jigsaw = _ArrayJigsaw(jigsaw, crop)
    if augment is None and jigsaw is pipeline.jigsaw:
        return pipeline
    return FastViewPipeline(Sequence(augment) if augment is not None else OnPIL(ops), pipeline.num_views, jigsaw,
                            pipeline.min_decode_size, pipeline.name)
