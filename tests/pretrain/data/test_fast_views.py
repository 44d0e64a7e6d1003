"""pretrain.data.fast_views: the array backend of the view recipes draws what the PIL backend draws and
gives the same pixels within the tolerances its docstring states, op by op and recipe by recipe."""
import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter
from torchvision import transforms as T
from torchvision.transforms import functional as TF

from pretrain.config import load_config
from pretrain.data import fast_views as fv
from pretrain.data.views import GaussianBlur, ViewPipeline, build_views
from pretrain.training.checks import PretrainError, check_config

pytestmark = pytest.mark.skipif(not fv.available(), reason="OpenCV is not installed")


def photo(seed=0, w=96, h=72):
    """Smooth colour gradients, edges and noise: every channel varies and hues span the circle."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    a, b = rng.uniform(0.5, 2.0, 2)
    pixels = np.stack([255 * (xx / w) ** a, 255 * (yy / h) ** b, 127 + 100 * np.sin((xx + 2 * yy) / 9.0)], -1)
    pixels[h // 3:h // 2, w // 4:w // 2] = rng.uniform(0, 255, 3)  # a flat patch with sharp edges
    pixels = pixels + rng.normal(0, 6, pixels.shape)
    return np.clip(pixels, 0, 255).astype(np.uint8)


IMAGES = [photo(s, w, h) for s, (w, h) in enumerate([(96, 72), (72, 96), (80, 80)])]


def diff(fast, pil):
    return np.abs(np.asarray(fast, dtype=np.float64) - np.asarray(pil, dtype=np.float64))


@pytest.mark.parametrize("factor", [0.6, 0.95, 1.3, 1.8])
def test_brightness_contrast_saturation_grayscale_are_pils(factor):
    for a in IMAGES:
        img = Image.fromarray(a)
        assert np.array_equal(fv.adjust_brightness(a, factor), np.asarray(TF.adjust_brightness(img, factor)))
        assert np.array_equal(fv.adjust_contrast(a, factor), np.asarray(TF.adjust_contrast(img, factor)))
        assert np.array_equal(fv.adjust_saturation(a, factor), np.asarray(TF.adjust_saturation(img, factor)))
        assert np.array_equal(fv.grayscale(a), np.asarray(TF.rgb_to_grayscale(img, 3)))


@pytest.mark.parametrize("hue", [-0.4, -0.1, 0.03, 0.25, 0.5])
def test_hue_within_two_levels_on_average(hue):
    for a in IMAGES:
        d = diff(fv.adjust_hue(a, hue), TF.adjust_hue(Image.fromarray(a), hue))
        assert d.mean() < 2.5, (hue, d.mean())
        assert np.percentile(d, 99) <= 12  # a rounding of the hue, not another colour
    assert np.array_equal(fv.adjust_hue(IMAGES[0], 0.001), IMAGES[0])  # below one step: unchanged, as PIL


def test_blur_and_flip():
    for sigma in (0.1, 0.5, 2.0):
        op = fv.Blur(GaussianBlur((sigma, sigma)))
        for a in IMAGES:
            d = diff(op(a), Image.fromarray(a).filter(ImageFilter.GaussianBlur(sigma)))
            assert d.mean() < 1.0, (sigma, d.mean())  # PIL's box passes vs a true Gaussian: 0.3-0.7 levels
    flip = fv.RandomHorizontalFlip(T.RandomHorizontalFlip(p=1.0))
    assert np.array_equal(flip(IMAGES[0]), IMAGES[0][:, ::-1])


def test_resized_crop_draws_the_same_box_and_pixels():
    for size, scale in ((32, (0.2, 1.0)), (48, (0.08, 1.0)), (20, (0.5, 0.5))):
        op = T.RandomResizedCrop(size, scale=scale, antialias=True)
        fast = fv.RandomResizedCrop(op)
        for seed, a in enumerate(IMAGES):
            torch.manual_seed(seed)
            x = fast(a)
            after_fast = torch.rand(3)
            torch.manual_seed(seed)
            y = op(Image.fromarray(a))
            assert torch.equal(after_fast, torch.rand(3))  # the same draws, no more, no fewer
            assert x.shape == (size, size, 3)
            assert diff(x, y).max() <= 1


def cfg_for(name, *opts):
    return load_config(None, ["INPUT.SIZE", "40", "INPUT.VIEWS", name, *opts])


RECIPES = [("moco_v1",), ("moco_v2",), ("cmc",), ("color_jitter_only", "INPUT.COLOR_JITTER_STRENGTH", "2.5"),
           ("crop_only",), ("infomin", "JIGSAW.ENABLED", "True"), ("infomin", "JIGSAW.ENABLED", "False")]


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda r: "-".join(r))
def test_recipes_draw_the_same_and_stay_within_tolerance(recipe):
    cfg = cfg_for(*recipe)
    pil, fast = build_views(cfg, backend="pil"), build_views(cfg, backend="fast")
    assert type(pil) is ViewPipeline and isinstance(fast, fv.FastViewPipeline)
    assert (fast.num_views, fast.min_decode_size) == (pil.num_views, pil.min_decode_size)
    means = []
    for a in IMAGES:
        for seed in range(8):
            # the augmentation alone: the same random stream consumed
            torch.manual_seed(seed)
            fast.augment(a)
            after_fast = torch.rand(4)
            torch.manual_seed(seed)
            pil.augment(Image.fromarray(a))
            assert torch.equal(after_fast, torch.rand(4)), f"{recipe} seed {seed}: other draws"
            x, y = fast(a, seed=seed), pil(Image.fromarray(a), seed=seed)
            assert set(x) == set(y)
            for key in y:
                assert x[key].dtype == y[key].dtype and x[key].shape == y[key].shape, key
            if "jigsaw_perm" in y:
                assert torch.equal(x["jigsaw_perm"], y["jigsaw_perm"])
                assert diff(x["jigsaw"], y["jigsaw"]).max() <= 1  # crop, flip and cut only
            means += [diff(x[k], y[k]).mean() for k in y if k.startswith("view")]
    # hue (about 2 levels) and blur (about 0.3) dominate; a different draw would differ by tens of levels
    assert np.mean(means) < 2.0 and np.max(means) < 8.0, (np.mean(means), np.max(means))


def test_eval_views_and_the_backend_key(tmp_path):
    cfg = cfg_for("moco_v2")
    assert type(build_views(cfg, "eval")) is ViewPipeline  # resize + centre crop: nothing to translate
    assert isinstance(build_views(cfg), fv.FastViewPipeline)  # the default backend
    assert type(build_views(cfg_for("moco_v2", "INPUT.VIEW_BACKEND", "pil"))) is ViewPipeline
    (tmp_path / "train" / "a").mkdir(parents=True)
    Image.fromarray(IMAGES[0]).save(tmp_path / "train" / "a" / "x.jpg")
    with pytest.raises(PretrainError, match="unknown INPUT.VIEW_BACKEND 'simd'; use fast or pil"):
        check_config(cfg_for("moco_v2", "INPUT.VIEW_BACKEND", "simd", "DATA.ROOT", str(tmp_path)))
