"""CDP (colour x digit x position, Lee et al.'s dataset for mutual-information analysis):
``cdp/{train,val}/*.png`` with a ``labels.csv`` each; see :func:`make_cdp`."""
import os
import shutil

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from pretrain.common.fileio import write_bytes_atomic

from transfer.data.synthetic.common import SyntheticDataError, check_integer, png_bytes, random_stream
from transfer.data.synthetic.drawing import background_pixels

# Lee et al.'s CDP dataset: colour x digit x position, four values each, uniform and independent.
CDP_COLORS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "white": (255, 255, 255)}
CDP_DIGITS = ("2", "3", "4", "5")
CDP_POSITIONS = ("upper_left", "upper_right", "lower_left", "lower_right")  # quadrants, row by row
CDP_ATTRIBUTES = {"color": tuple(CDP_COLORS), "digit": CDP_DIGITS, "position": CDP_POSITIONS}
CDP_LABELS = "labels.csv"
CDP_DEFAULT_IMAGE_SIZE = 64
CDP_MIN_IMAGE_SIZE = 32
CDP_DEFAULT_MIX = 0.5
CDP_DIGIT_HEIGHT = (0.5, 0.7)  # digit height as a fraction of the quadrant side
_BACKGROUND_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp", ".tif", ".tiff")
_MAX_BAD_BACKGROUNDS = 20


def cdp_attributes(combination):
    """(colour, digit, position) names of a combination index 0..63 (colour-major)."""
    c = int(combination)
    return tuple(CDP_COLORS)[c // 16], CDP_DIGITS[c // 4 % 4], CDP_POSITIONS[c % 4]


def make_cdp(root, num_train, num_val, seed=0, image_size=CDP_DEFAULT_IMAGE_SIZE, background=None,
             mix=CDP_DEFAULT_MIX):
    """Write the CDP dataset under ``root/cdp/{train,val}/``: PNG images and a ``labels.csv``.

    Each image shows one digit (2-5, rendered in bold with PIL's bundled font, height 50-70% of a quadrant, at a
    random place inside its quadrant) in one of four colours (red, green, blue, white) in one of the four
    quadrants. The three attributes are uniform and independent: the images of a split cycle through the
    64 combinations in random order, so each combination appears ``floor(n / 64)`` or ``ceil(n / 64)``
    times and every attribute value a quarter of the time (H = 2 bits per attribute, 6 bits for all three).

    The digit is drawn on black and a background is linearly mixed in, as Lee et al. mix ImageNet images:
    ``pixel = (1 - mix) * digit + mix * background``. Backgrounds are random crops of the images in the
    folder ``background`` (any depth, e.g. an ImageNet train folder; unreadable files are skipped) or, when
    it is None, generated textures (smooth colour fields with noise). Digits keep a margin of 1/16 of the
    image side plus one pixel from the outer edges, so a centre crop of 224/256 (the ``eval`` views) keeps
    them whole.

    ``labels.csv`` is ``file,color,digit,position`` with names: ``red``/``green``/``blue``/``white``,
    ``2``..``5``, ``upper_left``/``upper_right``/``lower_left``/``lower_right``. Returns
    ``{"train": {"images": n, "classes": 64}, "val": {...}}``. Deterministic per seed (and background
    folder content).
    """
    for name, value, low in (("num_train", num_train, 1), ("num_val", num_val, 1), ("seed", seed, 0)):
        check_integer(name, value, low)
    options = cdp_options(image_size, background, mix)
    return write_cdp(os.path.expanduser(str(root)), int(num_train), int(num_val), int(seed), **options)


def cdp_options(image_size, background, mix):
    """Checked CDP options (defaults filled in); scans the background folder once."""
    image_size = CDP_DEFAULT_IMAGE_SIZE if image_size is None else image_size
    mix = CDP_DEFAULT_MIX if mix is None else mix
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or \
            image_size < CDP_MIN_IMAGE_SIZE:
        raise SyntheticDataError(f"cdp image size must be an integer >= {CDP_MIN_IMAGE_SIZE}, got {image_size!r}")
    if isinstance(mix, bool) or not isinstance(mix, (int, float, np.floating)) or not 0.0 <= float(mix) < 1.0:
        raise SyntheticDataError(f"cdp mix (background weight) must be a number in [0, 1), got {mix!r}")
    files = None
    if background is not None:
        background = os.path.expanduser(str(background))
        files = _background_files(background)
    return {"image_size": int(image_size), "background": background, "mix": float(mix), "files": files}


def _background_files(folder):
    """The image files under ``folder`` at any depth, in a fixed (sorted) order."""
    if not os.path.isdir(folder):
        raise SyntheticDataError(f"cdp background folder {folder} does not exist")
    files = []
    for path, dirs, names in os.walk(folder, followlinks=True):
        dirs.sort()
        files += [os.path.join(path, n) for n in sorted(names)
                  if n.lower().endswith(_BACKGROUND_EXTENSIONS) and not n.startswith(".")]
    if not files:
        raise SyntheticDataError(f"cdp background folder {folder} has no images "
                                 f"({', '.join(_BACKGROUND_EXTENSIONS)}) at any depth")
    return files


def _digit_templates():
    """Digit masks (float32 0..1, tight boxes) rendered once with PIL's bundled font, in bold."""
    try:
        font = ImageFont.load_default(size=96)  # FreeType: Pillow's bundled scalable font
    except (TypeError, OSError, ImportError):   # no FreeType: the small bitmap font, scaled up when placed
        font = ImageFont.load_default()
    templates = {}
    for digit in CDP_DIGITS:
        # bold strokes survive the downscaling (the bitmap font has no strokes)
        bold = {"stroke_width": 3} if isinstance(font, ImageFont.FreeTypeFont) else {}
        left, top, right, bottom = font.getbbox(digit, **bold)
        canvas = Image.new("L", (right - left + 4, bottom - top + 4), 0)
        ImageDraw.Draw(canvas).text((2 - left, 2 - top), digit, fill=255, font=font,
                                    **(dict(bold, stroke_fill=255) if bold else {}))
        mask = np.asarray(canvas, dtype=np.float32) / 255.0
        ys, xs = np.nonzero(mask > 0.05)
        templates[digit] = mask[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    return templates


def _cdp_texture(size, rng):
    """A generated background: a smooth colour field with a gradient, blotches and fine noise."""
    base = background_pixels(size, size, rng)
    cells = int(rng.integers(3, 9))
    blotches = rng.normal(0, 35, size=(cells, cells, 3))
    blotches = np.asarray(Image.fromarray(np.clip(blotches + 128, 0, 255).astype(np.uint8)).resize(
        (size, size), Image.BICUBIC), dtype=np.float32) - 128
    return np.clip(base + blotches + rng.normal(0, 8, size=base.shape), 0, 255)


def _folder_background(files, size, rng):
    """A random square crop of a random image of ``files``, resized to ``size`` (float32 size x size x 3)."""
    bad = []
    while len(bad) < _MAX_BAD_BACKGROUNDS:
        path = files[int(rng.integers(len(files)))]
        try:
            with Image.open(path) as image:
                image.draft("RGB", (4 * size, 4 * size))  # JPEG: decode reduced, never below 4x the output
                image = image.convert("RGB")
        except Exception as e:  # noqa: BLE001 - any unreadable file is skipped, whatever PIL raises
            bad.append(f"{path} ({type(e).__name__})")
            continue
        w, h = image.size
        side = max(1, int(round(min(w, h) * rng.uniform(0.4, 1.0))))
        x0, y0 = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
        crop = image.crop((x0, y0, x0 + side, y0 + side)).resize((size, size), Image.BILINEAR)
        return np.asarray(crop, dtype=np.float32)
    raise SyntheticDataError(f"{_MAX_BAD_BACKGROUNDS} unreadable background images in a row "
                             f"(last: {bad[-1]}); is the cdp background folder damaged?")


def _cdp_image(combination, templates, size, background, mix, rng):
    """(pixels uint8 size x size x 3, digit mask float32 size x size) of one CDP image."""
    color, digit, position = cdp_attributes(combination)
    q = size // 2
    outer = int(np.ceil(size / 16)) + 1   # kept free at the image border (centre crops)
    inner = 1                             # kept free at the quadrant border
    template = templates[digit]
    height = int(round(q * rng.uniform(*CDP_DIGIT_HEIGHT)))
    width = max(1, int(round(height * template.shape[1] / template.shape[0])))
    alpha = np.asarray(Image.fromarray((template * 255).astype(np.uint8)).resize((width, height), Image.BILINEAR),
                       dtype=np.float32) / 255.0
    row, col = divmod(CDP_POSITIONS.index(position), 2)
    # free ranges of the top-left corner inside the quadrant: the outer border is the image edge
    y_lo = row * q + (outer if row == 0 else inner)
    y_hi = row * q + q - height - (inner if row == 0 else outer)
    x_lo = col * q + (outer if col == 0 else inner)
    x_hi = col * q + q - width - (inner if col == 0 else outer)
    y0 = int(rng.integers(y_lo, max(y_lo, y_hi) + 1))
    x0 = int(rng.integers(x_lo, max(x_lo, x_hi) + 1))
    mask = np.zeros((size, size), np.float32)
    mask[y0:y0 + height, x0:x0 + width] = alpha
    digit_layer = mask[..., None] * np.asarray(CDP_COLORS[color], np.float32)
    pixels = (1.0 - mix) * digit_layer + mix * background
    return np.clip(pixels, 0, 255).round().astype(np.uint8), mask


def write_cdp(root, n_train, n_val, seed, image_size, background, mix, files):
    """Write both splits with options checked by :func:`cdp_options`; return ``{split: {"images", "classes"}}``.

    A split folder left by a previous synthetic run is replaced whole.
    """
    templates = _digit_templates()
    counts = {}
    for split, n in (("train", n_train), ("val", n_val)):
        rng = random_stream(seed, "cdp", split)
        folder = os.path.join(root, "cdp", split)
        if os.path.isdir(folder):  # a previous synthetic run (checked by the caller): drop its stale images
            shutil.rmtree(folder)
        os.makedirs(folder)
        blocks = -(-n // 64)
        combinations = np.concatenate([rng.permutation(64) for _ in range(blocks)])[:n]
        rows = ["file," + ",".join(CDP_ATTRIBUTES)]
        for i, combination in enumerate(combinations):
            if files is None:
                back = _cdp_texture(image_size, rng)
            else:
                back = _folder_background(files, image_size, rng)
            pixels, _ = _cdp_image(combination, templates, image_size, back, mix, rng)
            name = f"{i:06d}.png"
            write_bytes_atomic(os.path.join(folder, name), png_bytes(pixels))
            rows.append(",".join((name, *cdp_attributes(combination))))
        write_bytes_atomic(os.path.join(folder, CDP_LABELS), ("\n".join(rows) + "\n").encode())
        counts[split] = {"images": n, "classes": 64}
    return counts
