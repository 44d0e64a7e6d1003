"""Training data: an ImageNet-style folder that survives bad files, a resumable distributed sampler, loaders.

- :class:`ImageFolder`: ``root/<class>/**/<image>`` (images directly under ``root`` form one unlabelled
  class). Reading is lazy; an image that cannot be opened or decoded (truncated or corrupt JPEG, empty
  file, not an image, permission error) is **skipped**: the next readable image in the folder's order
  takes its place, so batches keep their size and a long run never dies on one bad file. Each sample
  carries the paths it skipped (``"bad"``); the train loop counts them, logs each once and writes the
  total to ``metrics.jsonl`` and the checkpoint. Only :data:`MAX_CONSECUTIVE_BAD` unreadable files in a
  row stop the run (a broken mount, not a bad JPEG).
- Samples are dicts: the view pipeline's tensors plus ``index`` (of the image actually used) and
  ``label`` (class index), which memory-bank methods and the kNN monitor use.
- :class:`ResumableDistributedSampler`: torch's ``DistributedSampler`` (shuffled with ``SEED`` and the
  epoch) that can start part-way through an epoch and yields ``(index, epoch)`` so that views are seeded
  per sample (see :mod:`pretrain.data.views`).
- JPEG decoding uses PIL's draft mode (a reduced-size DCT decode) only down to the size the views need,
  so large images decode faster and crops lose no resolution.
"""
import copy
import logging
import os

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, DistributedSampler, default_collate

from pretrain.data.views import sample_seed

__all__ = ["IMAGE_EXTENSIONS", "MAX_CONSECUTIVE_BAD", "DataError", "ImageFolder", "ResumableDistributedSampler",
           "collate", "load_image", "scan_folder"]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
MAX_CONSECUTIVE_BAD = 64


class DataError(RuntimeError):
    """The data folder cannot be used; one line naming it."""


def scan_folder(root):
    """(classes, samples): sorted class folder names and ``[(path, class_index)]`` in a fixed order."""
    if not os.path.isdir(root):
        raise DataError(f"{root}: no such folder")
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError as e:
        raise DataError(f"{root}: cannot list: {e.strerror or e}") from None
    classes = [e.name for e in entries if e.is_dir() and not e.name.startswith(".")]
    loose = [e.path for e in entries if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS)]
    samples = []
    if loose:  # unlabelled images directly under root: one class
        classes = ["."] + classes
        samples += [(p, 0) for p in loose]
    for label, name in enumerate(classes):
        if name == ".":
            continue
        for folder, dirs, files in os.walk(os.path.join(root, name), followlinks=True):
            dirs.sort()
            samples += [(os.path.join(folder, f), label) for f in sorted(files)
                        if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith(".")]
    if not samples:
        raise DataError(f"{root}: no images ({', '.join(IMAGE_EXTENSIONS)}) in it or in its class folders")
    return classes, samples


def load_image(path, min_size=None):
    """RGB PIL image; JPEGs are draft-decoded to no less than ``min_size`` on the short side."""
    with open(path, "rb") as f:
        image = Image.open(f)
        if min_size and image.format == "JPEG":
            w, h = image.size
            factor = min_size / min(w, h)
            if factor < 0.5:  # draft only reduces by powers of two
                image.draft("RGB", (int(w * factor + 1), int(h * factor + 1)))
        return image.convert("RGB")  # forces the decode while the file is open


def _reason(exc):
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) < 120 else text[:117] + "..."


class ImageFolder(Dataset):
    """Images of ``root`` through a view pipeline; skips unreadable files (see the module docstring).

    ``dataset[(index, epoch)]`` (from the sampler) seeds the views with :func:`sample_seed`
    ``(seed, epoch, index)``; ``dataset[index]`` uses epoch 0.
    """

    def __init__(self, root, views, seed=0, draft=True):
        self.root = root
        self.classes, self.samples = scan_folder(root)
        self.views = views
        self.seed = int(seed)
        self.min_decode_size = getattr(views, "min_decode_size", None) if draft else None

    def with_views(self, views, draft=True):
        """The same images (no rescan) through other views, e.g. the ``eval`` views of the kNN monitor."""
        other = copy.copy(self)
        other.views = views
        other.min_decode_size = getattr(views, "min_decode_size", None) if draft else None
        return other

    @property
    def labeled(self):
        return len(self.classes) > 1 or self.classes[0] != "."

    @property
    def labels(self):
        return torch.tensor([label for _, label in self.samples], dtype=torch.long)

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, item):
        index, epoch = item if isinstance(item, tuple) else (item, 0)
        bad = []
        n = len(self.samples)
        for attempt in range(min(MAX_CONSECUTIVE_BAD, n)):
            used = (index + attempt) % n
            path, label = self.samples[used]
            try:
                image = load_image(path, self.min_decode_size)
            except Exception as e:  # noqa: BLE001 - any unreadable file is skipped, whatever PIL raises
                bad.append(f"{path} ({_reason(e)})")
                continue
            out = self.views(image, sample_seed(self.seed, epoch, index))
            out["index"] = used
            out["label"] = label
            out["bad"] = bad
            return out
        raise DataError(f"{self.root}: {len(bad)} unreadable images in a row from {self.samples[index][0]} "
                        f"(last: {bad[-1]}); is the folder damaged?")


def collate(samples):
    """``default_collate`` of the tensors; ``bad`` becomes one flat list of the skipped paths."""
    bad = []
    for s in samples:
        bad += s.pop("bad", [])
    batch = default_collate(samples)
    batch["bad"] = bad
    return batch


class ResumableDistributedSampler(DistributedSampler):
    """``DistributedSampler`` (shuffle, ``drop_last``) yielding ``(index, epoch)``, from ``start`` on."""

    def __init__(self, dataset, num_replicas, rank, seed):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=True)
        self.start = 0

    def set_start(self, start):
        """Skip the first ``start`` indices of this process's share of the epoch."""
        self.start = int(start)

    def __iter__(self):
        for k, index in enumerate(super().__iter__()):
            if k >= self.start:
                yield (index, self.epoch)

    def __len__(self):
        return max(0, self.num_samples - self.start)


def _worker_init(_):
    torch.set_num_threads(1)


def build_loader(dataset, sampler, batch_size, num_workers, pin_memory, prefetch_factor=2, drop_last=True,
                 persistent=True):
    """A DataLoader with its own generator: creating iterators never draws from the global torch RNG (which
    the method uses, e.g. for shuffle BN), so a resumed run's random stream matches an uninterrupted one."""
    kwargs = {"generator": torch.Generator().manual_seed(0)}
    if num_workers > 0:
        kwargs.update(prefetch_factor=prefetch_factor, persistent_workers=persistent, worker_init_fn=_worker_init)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                      pin_memory=pin_memory, drop_last=drop_last, collate_fn=collate, **kwargs)
