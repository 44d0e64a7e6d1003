"""pretrain.data.randaugment: PyContrast's RandAugment (InfoMin's aug "D"): op list, draw frequencies, the 0.5
application probability, magnitude noise, and what single ops do to a known image."""
import collections

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import functional as TF

from pretrain.data.randaugment import OPS, RandAugment, apply_op, op_argument

FILL = (124, 116, 104)


def gradient(w=40, h=30):
    """R = 6x (mod 256), G = 8y, B = constant: every pixel tells where it is."""
    yy, xx = np.mgrid[0:h, 0:w]
    return Image.fromarray(np.stack([(xx * 6) % 256, yy * 8, np.full_like(xx, 77)], -1).astype(np.uint8))


def test_op_list_is_pycontrasts():
    assert len(OPS) == 15 and len(set(OPS)) == 15
    assert {"Invert", "SolarizeAdd", "Posterize"} <= set(OPS) and "Identity" not in OPS


def test_each_op_is_drawn_uniformly_and_applied_with_probability_half():
    torch.manual_seed(0)
    always = RandAugment(num_ops=2, prob=1.0)
    counts = collections.Counter(name for _ in range(6000) for name, _, _ in always.draw())
    n = 12000
    expected, sigma = n / 15, (n * (1 / 15) * (14 / 15)) ** 0.5
    assert set(counts) == set(OPS) and sum(counts.values()) == n
    assert all(abs(c - expected) < 5 * sigma for c in counts.values()), counts

    half = RandAugment(num_ops=2)  # PyContrast's prob 0.5
    applied = [len(half.draw()) for _ in range(10000)]
    rate = sum(applied) / (2 * len(applied))
    assert abs(rate - 0.5) < 0.02
    histogram = collections.Counter(applied)  # 0, 1, 2 ops applied: binomial(2, 0.5)
    assert abs(histogram[0] / 10000 - 0.25) < 0.02 and abs(histogram[2] / 10000 - 0.25) < 0.02


def test_levels_signs_and_resampling():
    torch.manual_seed(1)
    ra = RandAugment(num_ops=1, magnitude=10, magnitude_std=0.5, prob=1.0)
    levels = [ra.level() for _ in range(4000)]
    assert max(levels) == 10.0 and min(levels) > 8.0
    assert abs(sum(level == 10.0 for level in levels) / 4000 - 0.5) < 0.04  # N(10, 0.5) clipped at 10
    draws = [d for _ in range(6000) for d in ra.draw()]
    rotations = [arg for name, arg, _ in draws if name == "Rotate"]
    assert all(22.0 < abs(a) <= 30.0 for a in rotations)  # level >= 10 - 4 std
    assert abs(sum(a < 0 for a in rotations) / len(rotations) - 0.5) < 0.1
    assert all(1.5 < arg < 1.9 + 1e-9 for name, arg, _ in draws if name == "Brightness")  # never below 1
    assert {r for _, _, r in draws} == {Image.Resampling.BILINEAR, Image.Resampling.BICUBIC}
    assert RandAugment(magnitude=10, magnitude_std=0).level() == 10.0


def test_arguments_at_the_top_level():
    assert op_argument("Rotate", 10) == 30.0 and abs(op_argument("ShearX", 10) - 0.3) < 1e-12
    assert abs(op_argument("TranslateXRel", 10) - 0.45) < 1e-12 and abs(op_argument("Color", 10) - 1.9) < 1e-12
    assert op_argument("Posterize", 10) == 4 and op_argument("Posterize", 9.9) == 3
    assert op_argument("Solarize", 10) == 256 and op_argument("SolarizeAdd", 10) == 110
    assert op_argument("Invert", 10) is None and op_argument("Color", 0) == 0.1


def test_single_ops_on_a_known_image():
    img = gradient()
    px = np.asarray(img).astype(int)

    assert np.array_equal(np.asarray(apply_op(img, "Invert", None)), 255 - px)
    # Solarize at the top level: threshold 256, nothing inverted; torchvision's top bin (threshold 0) inverts all
    assert np.array_equal(np.asarray(apply_op(img, "Solarize", op_argument("Solarize", 10))), px)
    assert np.array_equal(np.asarray(TF.solarize(img, 0)), 255 - px)
    added = np.asarray(apply_op(img, "SolarizeAdd", 110)).astype(int)
    assert np.array_equal(added, np.where(px < 128, np.minimum(px + 110, 255), px))
    assert np.array_equal(np.asarray(apply_op(img, "Posterize", 4)), px & 0xF0)
    assert not np.asarray(apply_op(img, "Posterize", 0)).any()  # 0 bits: black, as older PIL gave
    assert np.array_equal(np.asarray(apply_op(img, "Brightness", 1.0)), px)

    # translate by 0.45 of the width (18 px): the output shows the input shifted left, the fill on the right
    shifted = np.asarray(apply_op(img, "TranslateXRel", 0.45, fill=FILL)).astype(int)
    assert np.array_equal(shifted[:, :22], px[:, 18:40])
    assert (shifted[:, 22:] == np.array(FILL)).all()
    down = np.asarray(apply_op(img, "TranslateYRel", -0.2, fill=FILL)).astype(int)  # 6 rows down
    assert np.array_equal(down[6:], px[:24]) and (down[:6] == np.array(FILL)).all()
    rotated = np.asarray(apply_op(img, "Rotate", 30.0, fill=FILL)).astype(int)
    assert (rotated[0, 0] == np.array(FILL)).all() and rotated.shape == px.shape


def test_calls_are_reproducible_under_a_torch_seed():
    img = gradient()
    ra = RandAugment(fill=FILL)
    torch.manual_seed(5)
    a = [np.asarray(ra(img)) for _ in range(10)]
    torch.manual_seed(5)
    b = [np.asarray(ra(img)) for _ in range(10)]
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
