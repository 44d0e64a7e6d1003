"""pretrain.data.views: registered pipelines, per-sample determinism, the JigSaw tiles and their permutation."""
import os

import numpy as np
import pytest
import torch
from PIL import Image

from pretrain.config import load_config
from pretrain.data.randaugment import RandAugment
from pretrain.data.views import VIEWS, JigsawTiles, build_views, decode_size, sample_seed
from pretrain.common.paths import CONFIGS_DIR


CONFIGS = os.path.join(CONFIGS_DIR, "pretrain")


def cfg_for(name, *opts):
    files = {"moco_v1": "moco_v1_R_50", "moco_v2": "moco_v2_R_50", "infomin": "infomin_R_50"}
    return load_config(f"{CONFIGS}/{files.get(name, 'moco_v2_R_50')}.yaml",
                       ["INPUT.SIZE", "48", "INPUT.VIEWS", name, *opts])


def photo(seed=0, w=120, h=90):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    pixels = np.stack([xx * 2 % 256, yy * 3 % 256, (xx + yy) % 256], -1).astype(np.uint8)
    pixels = np.clip(pixels.astype(int) + rng.integers(-20, 20, pixels.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)


@pytest.mark.parametrize("name", ["moco_v1", "moco_v2", "infomin"])
def test_pipelines_shapes_and_determinism(name):
    pipe = build_views(cfg_for(name))
    img = photo()
    torch.manual_seed(123)
    global_state = torch.get_rng_state()
    a = pipe(img, seed=7)
    assert torch.equal(torch.get_rng_state(), global_state)  # the caller's RNG is untouched
    torch.manual_seed(999)  # ... and does not matter
    b = pipe(img, seed=7)
    c = pipe(img, seed=8)
    expected = {"view1", "view2", "jigsaw", "jigsaw_perm"} if name == "infomin" else {"view1", "view2"}
    assert set(a) == expected
    for key in ("view1", "view2"):
        assert a[key].dtype == torch.uint8 and a[key].shape == (3, 48, 48)
        assert torch.equal(a[key], b[key])
    assert not torch.equal(a["view1"], a["view2"])  # two independent augmentations
    assert not torch.equal(a["view1"], c["view1"])
    if name == "infomin":
        assert a["jigsaw"].shape == (9, 3, 14, 14) and a["jigsaw"].dtype == torch.uint8  # 64/224 x 48 px
        assert torch.equal(a["jigsaw"], b["jigsaw"]) and torch.equal(a["jigsaw_perm"], b["jigsaw_perm"])


def test_sample_seed_distinguishes_seed_epoch_index():
    seeds = {sample_seed(s, e, i) for s in (0, 1) for e in (0, 1, 2) for i in range(50)}
    assert len(seeds) == 300
    assert sample_seed(3, 1, 4) == sample_seed(3, 1, 4)


def test_eval_views_are_deterministic_centre_crops():
    pipe = build_views(cfg_for("moco_v2"), "eval")
    img = photo(w=110, h=80)
    out = pipe(img, seed=1)
    assert set(out) == {"view1"} and out["view1"].shape == (3, 48, 48)
    assert torch.equal(out["view1"], pipe(img, seed=2)["view1"])


def test_jigsaw_tiles_and_permutation():
    """Pixels encode their own coordinates (R = x, G = y); the crop covers the whole square image at its
    own size, so every tile tells where it was cut from."""
    size, grid, tile = 255, 3, 64
    cell = size // grid
    yy, xx = np.mgrid[0:size, 0:size]
    img = Image.fromarray(np.stack([xx, yy, np.zeros_like(xx)], -1).astype(np.uint8))
    jig = JigsawTiles(grid=grid, image_size=size, tile_size=tile, scale=(1.0, 1.0))
    jig.crop.transforms[0].ratio = (1.0, 1.0)
    flips = set()
    for seed in range(6):
        torch.manual_seed(seed)
        tiles, perm = jig(img)
        assert tiles.shape == (9, 3, tile, tile) and tiles.dtype == torch.uint8
        assert sorted(perm.tolist()) == list(range(9))  # a permutation of the cells
        for j in range(9):
            xs, ys = tiles[j, 0].long(), tiles[j, 1].long()
            # rows share y, columns share x: an axis-aligned window of the image
            assert (ys == ys[:, :1]).all() and (xs == xs[:1, :]).all()
            row = xs[0]
            flipped = bool(row[1] < row[0])
            flips.add(flipped)
            x = (size - 1) - row if flipped else row  # x in the (possibly flipped) crop the tiles are cut from
            assert (x[1:] - x[:-1] == 1).all() and (ys[1:, 0] - ys[:-1, 0] == 1).all()
            x0, y0 = int(x[0]), int(ys[0, 0])
            r, c = y0 // cell, x0 // cell
            assert (y0 + tile - 1) // cell == r and (x0 + tile - 1) // cell == c  # inside one cell
            assert perm[j].item() == r * grid + c, f"seed {seed} tile {j}"
    assert flips == {True, False}


def test_jigsaw_rejects_tiles_larger_than_cells():
    with pytest.raises(ValueError, match="TILE_SIZE"):
        JigsawTiles(grid=3, image_size=60, tile_size=25)
    with pytest.raises(ValueError):
        build_views(cfg_for("infomin", "JIGSAW.TILE_SIZE", "40"))


def test_randaugment_magnitude_noise_and_fill():
    img = photo(w=64, h=64)
    ra = RandAugment(num_ops=2, magnitude=10, magnitude_std=0.5, fill=[124, 116, 104])
    torch.manual_seed(0)
    outs = [np.asarray(ra(img)) for _ in range(40)]
    assert all(o.shape == (64, 64, 3) for o in outs)
    # each of the two ops applies with p 0.5: about 3 in 4 calls change the image (Solarize near level 10
    # and Posterize at 4 bits of a smooth image change little, hence the margin)
    changed = sum(not np.array_equal(o, np.asarray(img)) for o in outs)
    assert 20 <= changed <= 38
    assert "infomin" in VIEWS and isinstance(build_views(cfg_for("infomin"), backend="pil").augment.transforms[4],
                                                 RandAugment)
    off = RandAugment(num_ops=2, magnitude=0, magnitude_std=0.0)
    torch.manual_seed(0)
    changed = [not np.array_equal(np.asarray(off(img)), np.asarray(img)) for _ in range(20)]
    # at level 0 the geometric and enhance-by-0.1 ops still act (PyContrast's scaling): strong, but not always
    assert sum(changed) < 20


def test_decode_size_covers_the_smallest_crop():
    need = decode_size(224, (0.2, 1.0))
    # smallest crop of an image with short side `need`: area 0.2 * need^2 at aspect 4/3 -> short side
    short = (0.2 * need * need * 3 / 4) ** 0.5
    assert short >= 224 - 1e-6
    assert decode_size(64, (0.08, 1.0)) > decode_size(64, (0.2, 1.0))


def test_registry_names():
    assert {"moco_v1", "moco_v2", "infomin", "eval"} <= set(VIEWS)
    with pytest.raises(KeyError):
        build_views(cfg_for("moco_v2"), "nope")
