"""RandAugment as PyContrast's InfoMin runs it (its augmentation "D": ``rand-n2-m10-mstd0.5``).

PyContrast (``pycontrast/datasets/RandAugment.py``, an early version of timm's) differs from torchvision's
``RandAugment`` in what is drawn and how strongly it acts; this module reproduces its semantics:

- the op list: AutoContrast, Equalize, Invert, Rotate, Posterize, Solarize, SolarizeAdd, Color, Contrast,
  Brightness, Sharpness, ShearX, ShearY, TranslateXRel, TranslateYRel (15 ops; no Identity);
- ``num_ops`` ops drawn uniformly with replacement, each then applied with probability ``prob`` (0.5);
- each applied op draws its level from N(``magnitude``, ``magnitude_std``), clipped to [0, 10], and maps it:
  Rotate level/10 x 30 degrees, Shear level/10 x 0.3, Translate level/10 x 0.45 of the image side (these
  three negated with probability 0.5), Color/Contrast/Brightness/Sharpness factor level/10 x 1.8 + 0.1
  (never negated: at level 10 always 1.9), Posterize int(level/10 x 4) bits kept, Solarize threshold
  int(level/10 x 256) (at level 10 the threshold is 256: no pixel is inverted, where torchvision's inverts
  all), SolarizeAdd int(level/10 x 110) added to pixels below 128;
- geometric ops fill with ``fill`` (the ImageNet mean in 0-255) and resample bilinearly or bicubically,
  chosen at random per op.

Every random number comes from torch's CPU generator (the view pipelines seed it per sample), so the views
are reproducible; the sequence of draws is this module's own, not PyContrast's.
"""
import torch
from PIL import Image, ImageEnhance, ImageOps

__all__ = ["OPS", "MAX_LEVEL", "RandAugment", "op_argument", "apply_op"]

OPS = ("AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "SolarizeAdd", "Color",
       "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")
MAX_LEVEL = 10.0
SIGNED = frozenset({"Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel"})
ENHANCE = {"Color": ImageEnhance.Color, "Contrast": ImageEnhance.Contrast,
           "Brightness": ImageEnhance.Brightness, "Sharpness": ImageEnhance.Sharpness}
RESAMPLE = (Image.Resampling.BILINEAR, Image.Resampling.BICUBIC)


def _uniform():
    return float(torch.rand(()))


def op_argument(name, level):
    """The unsigned argument of op ``name`` at ``level`` (0..10), PyContrast's scaling; None for no argument."""
    scale = level / MAX_LEVEL
    if name == "Rotate":
        return scale * 30.0
    if name in ("ShearX", "ShearY"):
        return scale * 0.3
    if name in ("TranslateXRel", "TranslateYRel"):
        return scale * 0.45
    if name in ENHANCE:
        return scale * 1.8 + 0.1
    if name == "Posterize":
        return int(scale * 4)
    if name == "Solarize":
        return int(scale * 256)
    if name == "SolarizeAdd":
        return int(scale * 110)
    return None


def _posterize(image, bits):
    """Keep the ``bits`` high bits of every channel; 0 bits gives black (older PIL did; PIL 10+ refuses 0)."""
    mask = ~(2 ** (8 - bits) - 1) & 0xFF
    return image.point([i & mask for i in range(256)] * len(image.getbands()))


def _solarize_add(image, add, threshold=128):
    lut = [min(255, i + add) if i < threshold else i for i in range(256)]
    return image.point(lut * len(image.getbands()))


def apply_op(image, name, arg, fill=(128, 128, 128), resample=Image.Resampling.BILINEAR):
    """Op ``name`` with its (signed) argument on a PIL image, as PyContrast's op functions do."""
    affine = dict(resample=resample, fillcolor=tuple(fill))
    if name == "AutoContrast":
        return ImageOps.autocontrast(image)
    if name == "Equalize":
        return ImageOps.equalize(image)
    if name == "Invert":
        return ImageOps.invert(image)
    if name == "Rotate":
        return image.rotate(arg, **affine)
    if name == "Posterize":
        return image if arg >= 8 else _posterize(image, arg)
    if name == "Solarize":
        return ImageOps.solarize(image, arg)
    if name == "SolarizeAdd":
        return _solarize_add(image, arg)
    if name in ENHANCE:
        return ENHANCE[name](image).enhance(arg)
    width, height = image.size
    matrix = {"ShearX": (1, arg, 0, 0, 1, 0), "ShearY": (1, 0, 0, arg, 1, 0),
              "TranslateXRel": (1, 0, arg * width, 0, 1, 0), "TranslateYRel": (1, 0, 0, 0, 1, arg * height)}[name]
    return image.transform(image.size, Image.Transform.AFFINE, matrix, **affine)


class RandAugment:
    """PyContrast's RandAugment on PIL images (see the module docstring).

    :meth:`draw` makes the random choices of one call (a list of (op, argument, resample) for the ops that
    apply); :meth:`__call__` draws and applies them.
    """

    def __init__(self, num_ops=2, magnitude=10.0, magnitude_std=0.5, prob=0.5, fill=(128, 128, 128)):
        self.num_ops = int(num_ops)
        self.magnitude = float(magnitude)
        self.magnitude_std = float(magnitude_std)
        self.prob = float(prob)
        self.fill = tuple(int(f) for f in fill)

    def level(self):
        """A level drawn from N(magnitude, magnitude_std), clipped to [0, 10]."""
        level = self.magnitude
        if self.magnitude_std > 0:
            level += self.magnitude_std * float(torch.randn(()))
        return min(MAX_LEVEL, max(0.0, level))

    def draw(self):
        chosen = torch.randint(len(OPS), (self.num_ops,)).tolist()
        plan = []
        for index in chosen:
            name = OPS[index]
            if _uniform() >= self.prob:
                continue
            arg = op_argument(name, self.level())
            if name in SIGNED and _uniform() < 0.5:
                arg = -arg
            resample = RESAMPLE[int(torch.randint(len(RESAMPLE), ()))]
            plan.append((name, arg, resample))
        return plan

    def __call__(self, image):
        for name, arg, resample in self.draw():
            image = apply_op(image, name, arg, self.fill, resample)
        return image

    def __repr__(self):
        return (f"RandAugment(PyContrast: num_ops={self.num_ops}, magnitude={self.magnitude}, "
                f"magnitude_std={self.magnitude_std}, prob={self.prob}, fill={self.fill})")
