"""pretrain.data.labeled: labels.csv folders and ImageFolders, and one-line errors for broken ones."""
import pytest
import torch
from PIL import Image

from pretrain.data.labeled import LabeledDataError, LabeledImages


def _png(path, color=(255, 0, 0), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, (6, 5), color if mode == "RGB" else color[0]).save(path)


def _csv_folder(root, rows, header="file,color,digit"):
    root.mkdir(parents=True, exist_ok=True)
    for row in rows:
        name = row.split(",")[0]
        if name and not (root / name).exists():
            _png(root / name)
    (root / "labels.csv").write_text("\n".join([header, *rows]) + "\n")
    return root


def test_labels_csv(tmp_path):
    root = _csv_folder(tmp_path / "cdp", ["a.png,red,9", "sub/b.png,blue,10", "c.png,red,07", "d.png,green,9"])
    _png(root / "c.png", (10, 0, 0), mode="L")  # a grayscale file is returned as RGB
    data = LabeledImages(root)
    assert data.attributes == ["color", "digit"]
    assert data.classes == {"color": ["blue", "green", "red"], "digit": ["7", "9", "10"]}  # numbers: numeric order
    assert data.labels.dtype == torch.long and data.labels.tolist() == [[2, 1], [0, 2], [2, 0], [1, 1]]
    assert len(data) == 4 and data.paths[1].endswith("b.png")
    image, labels = data[2]
    assert image.mode == "RGB" and image.size == (6, 5) and labels.tolist() == [2, 0]
    tensor_data = LabeledImages(root, transform=lambda im: torch.tensor(im.getpixel((0, 0))))
    pixel, _ = tensor_data[0]
    assert pixel.tolist() == [255, 0, 0]


def test_image_folder(tmp_path):
    for cls, n in (("dog", 2), ("cat", 1)):
        for i in range(n):
            _png(tmp_path / "f" / cls / f"{i}.png")
    data = LabeledImages(tmp_path / "f")
    assert data.attributes == ["class"] and data.classes == {"class": ["cat", "dog"]}
    assert data.labels.shape == (3, 1) and data.labels[:, 0].tolist() == [0, 1, 1]


@pytest.mark.parametrize("case, expect", [
    ("no_file_column", "must start with a `file` column"),
    ("no_attribute", "needs named attribute columns"),
    ("short_row", "row 2: 2 fields, the header has 3"),
    ("missing_file", "row 3: ghost.png does not exist"),
    ("duplicate", "row 3: a.png is listed twice (also row 2)"),
    ("empty_value", "row 2: empty value for `digit`"),
    ("header_only", "no rows after the header"),
    ("empty_folder", "no images"),
    ("loose_images", "have no label"),
    ("no_folder", "no such folder"),
])
def test_errors_are_one_line(tmp_path, case, expect):
    root = tmp_path / "d"
    if case == "no_file_column":
        _csv_folder(root, ["a.png,red,1"], header="path,color,digit")
    elif case == "no_attribute":
        _csv_folder(root, ["a.png"], header="file")
    elif case == "short_row":
        _csv_folder(root, ["a.png,red"])
    elif case == "missing_file":
        _csv_folder(root, ["a.png,red,1"])
        with open(root / "labels.csv", "a") as f:
            f.write("ghost.png,red,2\n")
    elif case == "duplicate":
        _csv_folder(root, ["a.png,red,1", "a.png,blue,2"])
    elif case == "empty_value":
        _csv_folder(root, ["a.png,red,"])
    elif case == "header_only":
        _csv_folder(root, [])
    elif case == "empty_folder":
        (root / "cls").mkdir(parents=True)
    elif case == "loose_images":
        _png(root / "x.png")
    with pytest.raises(LabeledDataError) as err:
        LabeledImages(root)
    msg = str(err.value)
    assert "\n" not in msg and expect in msg and str(root) in msg, msg


def test_unreadable_image_names_the_file(tmp_path):
    root = _csv_folder(tmp_path / "d", ["a.png,red,1"])
    (root / "a.png").write_bytes(b"not an image")
    data = LabeledImages(root)
    with pytest.raises(LabeledDataError, match="a.png: cannot read the image"):
        data[0]
