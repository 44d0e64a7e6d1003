"""The CDP dataset (colour x digit x position, Lee et al.) of transfer/data/synthetic/cdp.py and its pairings.

Images are checked with plain PIL / numpy: where the coloured pixels are, which colour they have, which
digit they draw (against digits rendered here with PIL's font), how the background is mixed in.
"""
import csv
import os

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from pretrain.data.labeled import LabeledImages
from pretrain.evaluation.mi.pairing import build_pairs, class_ids, entropy_bits, parse_pairing
from transfer.data.synthetic import CDP_DIGITS, CDP_POSITIONS, KINDS, SyntheticDataError, make_cdp, write_synthetic

COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "white": (255, 255, 255)}


def _rows(split_dir):
    with open(os.path.join(split_dir, "labels.csv"), newline="") as f:
        return list(csv.DictReader(f))


def _image(split_dir, name):
    return np.asarray(Image.open(os.path.join(split_dir, name)).convert("RGB"), dtype=np.int32)


@pytest.fixture(scope="module")
def cdp(tmp_path_factory):
    root = tmp_path_factory.mktemp("cdp")
    counts = write_synthetic(root, kinds=["cdp"], num_images=256, seed=0)
    return root, counts


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """No background (mix 0): the digit alone on black, so pixels can be checked exactly."""
    root = tmp_path_factory.mktemp("cdp_clean")
    make_cdp(root, 128, 8, seed=1, image_size=64, mix=0.0)
    return os.path.join(root, "cdp", "train")


def test_layout_labels_and_reader(cdp):
    root, counts = cdp
    assert counts == {"cdp": {"train": {"images": 256, "classes": 64}, "val": {"images": 64, "classes": 64}}}
    for split, n in (("train", 256), ("val", 64)):
        folder = os.path.join(root, "cdp", split)
        with open(os.path.join(folder, "labels.csv")) as f:
            assert f.readline().strip() == "file,color,digit,position"
        rows = _rows(folder)
        assert len(rows) == n and sorted(os.listdir(folder)) == sorted([r["file"] for r in rows] + ["labels.csv"])
        with Image.open(os.path.join(folder, rows[0]["file"])) as im:
            assert im.format == "PNG" and im.size == (64, 64) and im.mode == "RGB"
        data = LabeledImages(folder)
        assert data.attributes == ["color", "digit", "position"] and len(data) == n
        assert sorted(data.classes["color"]) == sorted(COLOURS) and data.classes["digit"] == ["2", "3", "4", "5"]
        assert sorted(data.classes["position"]) == sorted(CDP_POSITIONS)
    assert set(KINDS) == {"coco", "keypoints", "voc", "lvis", "imagenet"}  # CDP only when asked for


def test_attributes_are_uniform_and_independent(cdp):
    root, _ = cdp
    rows = _rows(os.path.join(root, "cdp", "train"))
    combos = {}
    for r in rows:
        key = (r["color"], r["digit"], r["position"])
        combos[key] = combos.get(key, 0) + 1
    assert len(combos) == 64 and set(combos.values()) == {4}  # 256 images: every combination 4 times
    for attr, values in (("color", COLOURS), ("digit", CDP_DIGITS), ("position", CDP_POSITIONS)):
        assert {v: sum(r[attr] == v for r in rows) for v in values} == {v: 64 for v in values}
    # a split that is not a multiple of 64 stays as balanced as it can be
    val = _rows(os.path.join(root, "cdp", "val"))
    assert len({(r["color"], r["digit"], r["position"]) for r in val}) == 64
    # and the order is random: not sorted by combination
    assert [r["color"] for r in rows[:16]] != sorted(r["color"] for r in rows[:16])


@pytest.mark.parametrize("pairing,bits,classes", [
    ("class:color", 2, 4), ("class:digit", 2, 4), ("class:position", 2, 4), ("class:color+digit", 4, 16),
    ("class:digit+position", 4, 16), ("class:all", 6, 64), ("class", 6, 64)])
def test_class_entropy_of_the_pairings(cdp, pairing, bits, classes):
    import torch

    root, _ = cdp
    data = LabeledImages(os.path.join(root, "cdp", "train"))
    spec = parse_pairing(pairing, data.attributes)
    ids, m = class_ids(data.labels, [data.attributes.index(a) for a in spec.attributes])
    assert m == classes and entropy_bits(ids) == pytest.approx(bits)
    source, info = build_pairs(data, spec, torch.zeros(len(data), 3), min_per_class=2)
    assert info["class_entropy_bits"] == pytest.approx(bits) and info["num_classes"] == classes
    # positives share exactly the chosen attributes' values
    a_idx = torch.arange(len(data))
    b_idx = source.partners(a_idx, torch.Generator().manual_seed(0))
    cols = [data.attributes.index(a) for a in spec.attributes]
    assert torch.equal(data.labels[a_idx][:, cols], data.labels[b_idx][:, cols]) and bool((a_idx != b_idx).all())


def test_digits_are_where_and_what_the_labels_say(clean):
    size, q = 64, 32
    margin = size // 16  # the eval views' centre crop (224 of 256) cuts this much per side
    font = ImageFont.load_default(size=48)
    reference = {}
    for d in CDP_DIGITS:
        canvas = Image.new("L", (64, 64), 0)
        ImageDraw.Draw(canvas).text((4, 0), d, fill=255, font=font)
        reference[d] = canvas.crop(canvas.getbbox())
    rows = _rows(clean)
    correct = 0
    for r in rows:
        img = _image(clean, r["file"])
        on = img.max(axis=2) > 0
        ys, xs = np.nonzero(on)
        row, col = divmod(CDP_POSITIONS.index(r["position"]), 2)
        # inside the labelled quadrant, clear of the border the centre crop removes
        assert ys.min() >= row * q and ys.max() < row * q + q and xs.min() >= col * q and xs.max() < col * q + q
        assert ys.min() >= margin and xs.min() >= margin and ys.max() < size - margin and xs.max() < size - margin
        assert 0.4 * q <= ys.max() - ys.min() + 1 <= 0.75 * q
        # every lit pixel has the labelled colour (scaled by the glyph's antialiasing)
        colour = np.array(COLOURS[r["color"]])
        lit = img[on].astype(np.float64)
        scale = lit.max(axis=1, keepdims=True) / 255.0
        assert np.abs(lit - scale * colour).max() <= 2
        assert img[on].max() >= 250  # the stroke cores are fully opaque
        # the shape is the labelled digit: best match among the four rendered here
        box = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        mask = img.max(axis=2)[box[1]:box[3], box[0]:box[2]].astype(np.float64)
        scores = {}
        for d, ref in reference.items():
            ref = np.asarray(ref.resize(mask.shape[::-1], Image.BILINEAR), dtype=np.float64)
            scores[d] = np.corrcoef(mask.ravel(), ref.ravel())[0, 1]
        correct += max(scores, key=scores.get) == r["digit"]
    assert correct == len(rows)


def test_the_digit_stands_out_of_the_mixed_background(cdp):
    root, _ = cdp
    folder = os.path.join(root, "cdp", "train")
    for r in _rows(folder):
        img = _image(folder, r["file"]).astype(np.float64)
        red, green, blue = img[..., 0], img[..., 1], img[..., 2]
        score = {"red": red - (green + blue) / 2, "green": green - (red + blue) / 2,
                 "blue": blue - (red + green) / 2, "white": img.min(axis=2)}[r["color"]]
        q = img.shape[0] // 2
        peaks = [np.percentile(score[y:y + q, x:x + q], 99) for y in (0, q) for x in (0, q)]
        assert int(np.argmax(peaks)) == CDP_POSITIONS.index(r["position"])
        # the background is not flat: it comes through the mix
        assert img.std() > 10


def test_background_folder_is_mixed_in_linearly(tmp_path):
    backgrounds = tmp_path / "imagenet" / "train" / "n0001"
    backgrounds.mkdir(parents=True)
    solid = [(200, 40, 120), (20, 180, 60), (90, 90, 250)]
    for i, c in enumerate(solid):
        Image.new("RGB", (80 + 10 * i, 60), c).save(backgrounds / f"img{i}.png")
    (backgrounds / "broken.jpg").write_bytes(b"not a jpeg")  # skipped
    counts = make_cdp(tmp_path / "out", 64, 8, seed=0, image_size=32, background=tmp_path / "imagenet", mix=0.4)
    assert counts["train"]["images"] == 64
    folder = tmp_path / "out" / "cdp" / "train"
    expected = [np.round(0.4 * np.array(c)) for c in solid]
    used = set()
    for r in _rows(folder):
        img = _image(folder, r["file"])
        match = [np.mean(np.all(np.abs(img - e) <= 1, axis=2)) for e in expected]
        assert max(match) > 0.8  # off the digit: 0.4 x one of the folder's images
        used.add(int(np.argmax(match)))
    assert used == {0, 1, 2}
    with pytest.raises(SyntheticDataError, match="does not exist"):
        make_cdp(tmp_path / "x", 8, 8, background=tmp_path / "out" / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SyntheticDataError, match="has no images"):
        make_cdp(tmp_path / "x", 8, 8, background=tmp_path / "empty")
    assert not (tmp_path / "x").exists()


def test_same_seed_same_bytes_and_refusals(tmp_path, read_tree):
    args = dict(kinds=["cdp"], num_images=64, cdp_image_size=32)
    write_synthetic(tmp_path / "a", seed=4, **args)
    write_synthetic(tmp_path / "b", seed=4, **args)
    a = read_tree(tmp_path / "a")
    assert a == read_tree(tmp_path / "b") and len(a) == 64 + 16 + 2 + 1
    write_synthetic(tmp_path / "a", seed=4, **args)  # again over a synthetic root: same files
    assert read_tree(tmp_path / "a") == a
    write_synthetic(tmp_path / "c", seed=5, **args)
    assert read_tree(tmp_path / "c")["cdp/train/labels.csv"] != a["cdp/train/labels.csv"]

    (tmp_path / "real" / "cdp").mkdir(parents=True)  # looks like real data
    with pytest.raises(SyntheticDataError, match="cdp"):
        write_synthetic(tmp_path / "real", **args)
    assert os.listdir(tmp_path / "real" / "cdp") == []
    for bad, match in ((dict(cdp_mix=1.0), "mix"), (dict(cdp_image_size=16), "image size"),
                       (dict(cdp_background=tmp_path / "none"), "does not exist")):
        with pytest.raises(SyntheticDataError, match=match):
            write_synthetic(tmp_path / "bad", **{**args, **bad})
    with pytest.raises(SyntheticDataError, match="kind 'cdp'"):
        write_synthetic(tmp_path / "bad", kinds=["voc"], cdp_mix=0.3)
    assert not (tmp_path / "bad").exists()


def test_cli_writes_cdp(tmp_path, make_synthetic_data):
    out = make_synthetic_data("--root", tmp_path, "--kinds", "cdp", "--num-images", "64", "--cdp-image-size", "48",
                              "--cdp-mix", "0.3")
    assert out.returncode == 0, out.stderr
    assert "cdp/train" in out.stdout and "classes 64" in out.stdout
    assert sorted(os.listdir(tmp_path)) == ["SYNTHETIC.json", "cdp"]
    with Image.open(tmp_path / "cdp" / "val" / "000000.png") as im:
        assert im.size == (48, 48)
    bad = make_synthetic_data("--root", tmp_path / "o", "--kinds", "cdp", "--cdp-background", tmp_path / "missing")
    assert bad.returncode == 1 and len(bad.stderr.strip().splitlines()) == 1 and "background" in bad.stderr
    assert not (tmp_path / "o").exists()
