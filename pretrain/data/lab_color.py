"""sRGB <-> CIE L*a*b* (D65) in torch, and CMC's split of an image into an L view and an ab view.

CMC (Tian et al. 2019, Sec. 4.1) converts RGB images to Lab and gives the luminance channel L to one
encoder and the two chrominance channels ab to another. Here the conversion runs on the device inside the
method (the loader ships uint8 RGB, as for every method), always in float32 or wider with autocast off.

Conversion (IEC 61966-2-1 sRGB; CIE 1976 L*a*b*), for RGB in [0, 1]:

1. linearise each channel: ``c / 12.92`` if ``c <= 0.04045``, else ``((c + 0.055) / 1.055) ** 2.4``;
2. linear RGB -> XYZ with :data:`RGB_TO_XYZ` (sRGB primaries, D65 white; the matrix of B. Lindbloom's
   tables, whose rows sum to the white point to 1e-7, so that white maps to a = b = 0);
3. divide by the D65 white point :data:`WHITE_D65` (Xn, Yn, Zn) = (0.95047, 1, 1.08883);
4. ``f(t) = t ** (1/3)`` if ``t > (6/29)**3``, else ``t / (3 (6/29)**2) + 4/29``;
5. ``L = 116 f(Y) - 16``, ``a = 500 (f(X) - f(Y))``, ``b = 200 (f(Y) - f(Z))``.

:func:`lab_to_rgb` inverts every step (``f^-1(t) = t**3`` above ``6/29``, else ``3 (6/29)**2 (t - 4/29)``;
the sRGB transfer function above ``0.0031308``).

Normalisation for the encoders (:data:`LAB_MEAN`, :data:`LAB_STD`, as CMC's official code): the centre and
half-range of each channel over the sRGB gamut, so that every sRGB colour maps into [-1, 1]. L spans
[0, 100]; a spans [-86.183, 98.233] (green (0, 1, 0) to magenta (1, 0, 1)) and b spans [-107.857, 94.478]
(blue (0, 0, 1) to yellow (1, 1, 0)): mean (50, 6.025, -6.6895), std (50, 92.208, 101.1675).
"""
import torch

__all__ = ["RGB_TO_XYZ", "WHITE_D65", "LAB_MEAN", "LAB_STD", "rgb_to_lab", "lab_to_rgb", "split_lab", "merge_lab"]

RGB_TO_XYZ = ((0.4124564, 0.3575761, 0.1804375),
              (0.2126729, 0.7151522, 0.0721750),
              (0.0193339, 0.1191920, 0.9503041))
WHITE_D65 = (0.95047, 1.0, 1.08883)

LAB_MEAN = ((0.0 + 100.0) / 2, (-86.183 + 98.233) / 2, (-107.857 + 94.478) / 2)
LAB_STD = ((100.0 - 0.0) / 2, (86.183 + 98.233) / 2, (107.857 + 94.478) / 2)

_DELTA = 6.0 / 29.0


def _float(x):
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def _matrix(rows, like):
    return torch.tensor(rows, dtype=like.dtype, device=like.device)


def _apply(matrix, x):
    """``matrix`` (3x3) applied to the channel dimension (dim 1) of ``x`` (N x 3 x ...)."""
    return torch.einsum("ij,nj...->ni...", matrix, x)


def _column(values, like):
    return torch.tensor(values, dtype=like.dtype, device=like.device).view(1, 3, *([1] * (like.ndim - 2)))


def rgb_to_lab(rgb):
    """sRGB in [0, 1] (N x 3 x ..., float) -> L*a*b* (L in [0, 100]), same shape, float32 or float64."""
    rgb = _float(rgb)
    with torch.autocast(rgb.device.type, enabled=False):
        linear = torch.where(rgb <= 0.04045, rgb / 12.92, ((rgb.clamp(min=0.04045) + 0.055) / 1.055) ** 2.4)
        xyz = _apply(_matrix(RGB_TO_XYZ, rgb), linear) / _column(WHITE_D65, rgb)
        f = torch.where(xyz > _DELTA ** 3, xyz.clamp(min=_DELTA ** 3) ** (1.0 / 3.0),
                        xyz / (3 * _DELTA ** 2) + 4.0 / 29.0)
        fx, fy, fz = f[:, 0], f[:, 1], f[:, 2]
        return torch.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], dim=1)


def lab_to_rgb(lab):
    """Inverse of :func:`rgb_to_lab` (no clipping: out-of-gamut Lab gives values outside [0, 1])."""
    lab = _float(lab)
    with torch.autocast(lab.device.type, enabled=False):
        fy = (lab[:, 0] + 16.0) / 116.0
        f = torch.stack([fy + lab[:, 1] / 500.0, fy, fy - lab[:, 2] / 200.0], dim=1)
        xyz = torch.where(f > _DELTA, f ** 3, 3 * _DELTA ** 2 * (f - 4.0 / 29.0)) * _column(WHITE_D65, lab)
        linear = _apply(torch.linalg.inv(_matrix(RGB_TO_XYZ, lab).double()).to(lab.dtype), xyz)
        return torch.where(linear <= 0.0031308, 12.92 * linear,
                           1.055 * linear.clamp(min=0.0031308) ** (1.0 / 2.4) - 0.055)


def split_lab(images):
    """uint8 RGB images (N x 3 x H x W, 0..255; or float on that scale) -> (L, ab): N x 1 x H x W and
    N x 2 x H x W float32, normalised with :data:`LAB_MEAN` / :data:`LAB_STD` (each in [-1, 1])."""
    lab = rgb_to_lab(images.float() / 255.0)
    lab = (lab - _column(LAB_MEAN, lab)) / _column(LAB_STD, lab)
    return lab[:, :1], lab[:, 1:]


def merge_lab(l, ab):
    """Inverse of :func:`split_lab`: normalised (L, ab) -> RGB in [0, 1] (N x 3 x H x W)."""
    lab = torch.cat([_float(l), _float(ab).to(_float(l).dtype)], dim=1)
    lab = lab * _column(LAB_STD, lab) + _column(LAB_MEAN, lab)
    return lab_to_rgb(lab)
