"""Labelled images for linear evaluation and mutual-information estimation.

Two layouts, told apart by the presence of ``labels.csv``:

- **labels.csv** (e.g. the CDP data: ``file,color,digit,position``)::

      file,color,digit,position
      img_0000.png,red,3,left
      sub/img_0001.png,blue,7,right

  ``file`` is relative to the folder; every other column is an attribute. Values may be strings or
  integers; an attribute's classes are its sorted distinct values (numerically when every value is an
  integer, so ``10`` comes after ``9``), and a label is the index of the value in that list.
- **ImageFolder** (``folder/<class>/<image>``, images at any depth under the class folder): one attribute
  named ``class``, classes the sorted folder names.

Problems are found when the dataset is built, before any image is decoded: a missing ``file`` column or no
attribute column, a row with the wrong number of fields or an empty value, a row naming a file that does
not exist, the same file twice, a folder without images. Each raises :class:`LabeledDataError` with one line
naming the file (and row).
"""
import csv
import os

import torch
from torch.utils.data import Dataset

from pretrain.data.images import DataError, load_image, scan_folder

__all__ = ["LABELS_CSV", "LabeledDataError", "LabeledImages"]

LABELS_CSV = "labels.csv"


class LabeledDataError(ValueError):
    """A labelled folder cannot be used; one line naming the file (and row)."""


def _class_names(values):
    """(sorted distinct class names, canonical form of a raw value): numeric order when every value is an
    integer (then ``07`` and ``7`` are the same class ``7``), else string order."""
    values = list(values)
    try:
        numbers = sorted({int(v) for v in values})
    except ValueError:
        return sorted(set(values)), str
    return [str(n) for n in numbers], lambda v: str(int(v))


class LabeledImages(Dataset):
    """Images with one or more integer labels per image, from either
    - a folder with labels.csv (header `file,<attr1>,<attr2>,...`, e.g. CDP data: file,color,digit,position;
      values may be strings or ints; each attribute's classes are its sorted distinct values), images at
      folder/<file>; or
    - an ImageFolder (folder/<class>/<image>): one attribute named "class".

    ``attributes``: the attribute names; ``classes[attr]``: its class names (strings) in label order;
    ``paths``: the image files; ``labels``: N x len(attributes) LongTensor. ``dataset[i]`` is
    ``(transform(image) if transform else image, labels[i])`` with ``image`` an RGB PIL image.
    """

    def __init__(self, root, transform=None):
        self.root = os.fspath(root)
        self.transform = transform
        if not os.path.isdir(self.root):
            raise LabeledDataError(f"{self.root}: no such folder")
        csv_path = os.path.join(self.root, LABELS_CSV)
        if os.path.isfile(csv_path):
            self._read_csv(csv_path)
        else:
            self._read_folders()

    # ------------------------------------------------------------------ layouts
    def _read_csv(self, csv_path):
        try:
            with open(csv_path, newline="", encoding="utf-8-sig") as f:
                rows = list(csv.reader(f))
        except (OSError, UnicodeDecodeError, csv.Error) as e:
            raise LabeledDataError(f"{csv_path}: cannot read: {getattr(e, 'strerror', None) or e}") from None
        rows = [(n, r) for n, r in enumerate(rows, start=1) if any(field.strip() for field in r)]
        if not rows:
            raise LabeledDataError(f"{csv_path}: empty; expected a header `file,<attribute>,...` and one row per image")
        _, header = rows[0]
        header = [h.strip() for h in header]
        if not header or header[0] != "file":
            raise LabeledDataError(f"{csv_path}: the header must start with a `file` column, got {','.join(header)!r}")
        attributes = header[1:]
        if not attributes or any(not a for a in attributes):
            raise LabeledDataError(f"{csv_path}: the header needs named attribute columns after `file` "
                                   f"(e.g. file,color,digit), got {','.join(header)!r}")
        dupes = sorted({a for a in attributes if attributes.count(a) > 1 or a == "file"})
        if dupes:
            raise LabeledDataError(f"{csv_path}: column {dupes[0]!r} appears twice in the header")
        if len(rows) == 1:
            raise LabeledDataError(f"{csv_path}: no rows after the header; the folder has no labelled images")
        paths, values, seen = [], [], {}
        for line, row in rows[1:]:
            where = f"{csv_path} row {line}"
            row = [field.strip() for field in row]
            if len(row) != len(header):
                raise LabeledDataError(f"{where}: {len(row)} fields, the header has {len(header)} "
                                       f"({','.join(header)})")
            name = row[0]
            empty = [header[i] for i, v in enumerate(row) if not v]
            if empty:
                raise LabeledDataError(f"{where}: empty value for `{empty[0]}`")
            path = os.path.normpath(os.path.join(self.root, name))
            if name in seen or path in seen:
                raise LabeledDataError(f"{where}: {name} is listed twice (also row {seen.get(name, seen.get(path))})")
            seen[name] = seen[path] = line
            if not os.path.isfile(path):
                raise LabeledDataError(f"{where}: {name} does not exist in {self.root}")
            paths.append(path)
            values.append(row[1:])
        self.attributes = attributes
        self.classes, columns = {}, []
        for j, a in enumerate(attributes):
            names, canonical = _class_names(v[j] for v in values)
            index = {c: i for i, c in enumerate(names)}
            self.classes[a] = names
            columns.append([index[canonical(v[j])] for v in values])
        self.paths = paths
        self.labels = torch.tensor(columns, dtype=torch.long).t().contiguous()

    def _read_folders(self):
        try:
            classes, samples = scan_folder(self.root)
        except DataError as e:
            raise LabeledDataError(f"{e} (and no {LABELS_CSV})") from None
        if "." in classes:
            loose = next(p for p, c in samples if c == 0)
            raise LabeledDataError(f"{self.root}: images directly in the folder (e.g. {os.path.basename(loose)}) have "
                                   f"no label: put them in class folders or add a {LABELS_CSV}")
        self.attributes = ["class"]
        self.classes = {"class": list(classes)}
        self.paths = [p for p, _ in samples]
        self.labels = torch.tensor([[c] for _, c in samples], dtype=torch.long).view(-1, 1)

    # ------------------------------------------------------------------ access
    def load(self, i):
        """Image ``i`` as an RGB PIL image; an unreadable file raises :class:`LabeledDataError`."""
        path = self.paths[i]
        try:
            return load_image(path)
        except Exception as e:  # noqa: BLE001 - whatever PIL raises for a damaged file
            text = " ".join(str(e).split()) or type(e).__name__
            raise LabeledDataError(f"{path}: cannot read the image: {text[:150]}") from None

    def __getitem__(self, i):
        image = self.load(i)
        return (self.transform(image) if self.transform is not None else image), self.labels[i]

    def __len__(self):
        return len(self.paths)

    def __repr__(self):
        attrs = ", ".join(f"{a} ({len(self.classes[a])} classes)" for a in self.attributes)
        return f"LabeledImages({self.root!r}, {len(self)} images, {attrs})"

