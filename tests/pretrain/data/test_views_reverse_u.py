"""pretrain.data.views: the single-augmentation recipes of the reverse-U study (color_jitter_only, crop_only)."""
import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import functional as TF

from pretrain.config import load_config
from pretrain.data.views import VIEWS, build_views, decode_size

SIZE = 32


def cfg_for(name, *opts):
    return load_config(None, ["INPUT.SIZE", str(SIZE), "INPUT.VIEWS", name, *opts])


def photo(seed=0, w=72, h=56):
    """Smooth colour gradients plus noise: every channel varies, no pixel is saturated."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    a, b, c = rng.uniform(0.5, 2.0, 3)
    pixels = np.stack([40 + 170 * xx / w * a / 2, 40 + 170 * yy / h * b / 2, 40 + 85 * (xx / w + yy / h) * c / 2], -1)
    pixels = pixels + rng.normal(0, 8, pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


IMAGES = [photo(seed, w, h) for seed, (w, h) in enumerate([(72, 56), (56, 72), (64, 64), (90, 48)])]


def mean_view_difference(pipe, seeds=range(6)):
    """Mean absolute pixel difference between the two views of an image, over the test images and seeds."""
    diffs = []
    for img in IMAGES:
        for seed in seeds:
            out = pipe(img, seed=seed)
            diffs.append((out["view1"].float() - out["view2"].float()).abs().mean().item())
    return float(np.mean(diffs))


@pytest.mark.parametrize("name", ["color_jitter_only", "crop_only"])
def test_registered_uint8_and_deterministic_per_seed(name):
    assert name in VIEWS
    pipe = build_views(cfg_for(name))
    img = IMAGES[0]
    torch.manual_seed(5)
    state = torch.get_rng_state()
    a = pipe(img, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(77)
    b = pipe(img, seed=3)
    c = pipe(img, seed=4)
    assert set(a) == {"view1", "view2"}
    for key in a:
        assert a[key].dtype == torch.uint8 and a[key].shape == (3, SIZE, SIZE)
        assert torch.equal(a[key], b[key])
    assert not torch.equal(a["view1"], a["view2"])
    assert not (torch.equal(a["view1"], c["view1"]) and torch.equal(a["view2"], c["view2"]))


def test_color_jitter_only_at_zero_strength_is_the_centre_crop():
    pipe = build_views(cfg_for("color_jitter_only", "INPUT.COLOR_JITTER_STRENGTH", "0"))
    for img in IMAGES:
        expected = TF.pil_to_tensor(TF.center_crop(TF.resize(img, SIZE, antialias=True), SIZE))
        for seed in range(4):
            out = pipe(img, seed=seed)
            assert torch.equal(out["view1"], out["view2"])
            assert torch.equal(out["view1"], expected)  # no random crop, no flip


def test_color_jitter_only_keeps_the_geometry():
    """Colour jitter maps equal pixels to equal pixels. An image with a narrow left band of one colour and the
    rest another: in every jittered view the band's pixels of the unjittered centre crop share one colour and
    the rest another, so nothing moved (a random crop shifts the band's edge, a flip moves the band right)."""
    pixels = np.empty((48, 64, 3), np.uint8)
    pixels[:, :24] = (200, 60, 40)
    pixels[:, 24:] = (40, 120, 200)
    img = Image.fromarray(pixels)
    ref = TF.pil_to_tensor(TF.center_crop(TF.resize(img, SIZE, antialias=True), SIZE))
    band = (ref == ref[:, :1, :1]).all(0)
    rest = (ref == ref[:, :1, -1:]).all(0)
    assert 0 < band.sum() < rest.sum()  # the unjittered crop shows both regions
    pipe = build_views(cfg_for("color_jitter_only", "INPUT.COLOR_JITTER_STRENGTH", "1"))
    jittered = 0
    for seed in range(6):
        for view in pipe(img, seed=seed).values():
            a, b = view[:, band], view[:, rest]
            assert (a == a[:, :1]).all() and (b == b[:, :1]).all()
            assert not torch.equal(a[:, 0], b[:, 0])
            jittered += not torch.equal(view, ref)
    assert jittered >= 6


def test_stronger_color_jitter_gives_views_that_differ_more():
    strengths = [0.0, 0.25, 0.5, 1.0, 2.0]
    diffs = [mean_view_difference(build_views(cfg_for("color_jitter_only", "INPUT.COLOR_JITTER_STRENGTH", str(s))))
             for s in strengths]
    assert diffs[0] == 0.0
    assert all(lo < hi for lo, hi in zip(diffs, diffs[1:])), dict(zip(strengths, diffs))
    assert diffs[-1] > 3 * diffs[1]


def test_crop_only_scale_one_is_the_whole_image_and_smaller_bounds_differ_more():
    full = build_views(cfg_for("crop_only", "INPUT.CROP_SCALE", "(1.0, 1.0)",
                               "INPUT.COLOR_JITTER_STRENGTH", "2"))  # colour strength must not matter
    for img in IMAGES:
        for seed in range(3):
            out = full(img, seed=seed)
            # scale 1 admits only the image's own aspect ratio: torchvision falls back to the whole image,
            # centre-cropped to an aspect ratio in [3/4, 4/3]
            w, h = img.size
            cw, ch = min(w, round(h * 4 / 3)), min(h, round(w * 4 / 3))
            expected = TF.pil_to_tensor(TF.resize(TF.center_crop(img, [ch, cw]), [SIZE, SIZE], antialias=True))
            assert (out["view1"].float() - expected.float()).abs().mean() < 1.0  # no flip, no colour
            assert (out["view1"].float() - out["view2"].float()).abs().mean() < 1.0
    near = mean_view_difference(build_views(cfg_for("crop_only", "INPUT.CROP_SCALE", "(0.95, 1.0)")))
    mid = mean_view_difference(build_views(cfg_for("crop_only", "INPUT.CROP_SCALE", "(0.5, 1.0)")))
    low = mean_view_difference(build_views(cfg_for("crop_only", "INPUT.CROP_SCALE", "(0.08, 1.0)")))
    assert near < 2.0 < low and near < mid < low, (near, mid, low)


def test_crop_only_never_flips():
    """R encodes x: every row of every crop must increase left to right."""
    yy, xx = np.mgrid[0:64, 0:200]
    img = Image.fromarray(np.stack([xx + 20, yy * 2, np.full_like(xx, 90)], -1).astype(np.uint8))
    pipe = build_views(cfg_for("crop_only", "INPUT.CROP_SCALE", "(0.2, 1.0)"))
    for seed in range(8):
        for view in pipe(img, seed=seed).values():
            red = view[0].float().mean(0)
            assert red[-1] > red[0]


def test_decode_sizes():
    assert build_views(cfg_for("color_jitter_only")).min_decode_size == SIZE
    assert build_views(cfg_for("crop_only", "INPUT.CROP_SCALE", "(0.08, 1.0)")).min_decode_size == \
        decode_size(SIZE, (0.08, 1.0))
