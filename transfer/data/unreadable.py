"""Images that cannot be read during a run: skipped and counted in training, one line in evaluation.

The checks before a run (:mod:`transfer.data.validate`) read every annotation and list every image
folder, but decode only a sample of the images: a truncated or corrupt JPEG elsewhere, or a file that
disappears during the run, is found only when Detectron2's mapper decodes it, and its exception would
end the run in a traceback.

- **Training**: :class:`SkipUnreadable` wraps the training mapper; an image that cannot be read or
  decoded, or whose size differs from its annotation, gives a marker instead of a sample, and
  :class:`SkippingLoader` drops it from its batch (the batch is one image shorter; a batch with no
  image left is replaced by the next), logs a warning naming the file and its error (once per file),
  and counts it (``data/unreadable_images`` in ``metrics.json``). More than :data:`MAX_CONSECUTIVE`
  unreadable images in a row stop the run with one line: the folder, not one file, is broken.
- **Evaluation**: skipping would change what the numbers mean, so :class:`StopOnUnreadable` stops
  with one line naming the file (:class:`~transfer.data.datasets.DatasetError`); the trained weights
  are kept, and ``--resume`` after replacing the file evaluates without training again.
"""
import logging

from transfer.data.datasets import DatasetError

__all__ = ["MAX_CONSECUTIVE", "SkipUnreadable", "SkippingLoader", "StopOnUnreadable", "unreadable_errors"]

# a child of Detectron2's logger: the warnings land in the run's log.txt beside Detectron2's own lines
logger = logging.getLogger("detectron2.transfer.unreadable")
MAX_CONSECUTIVE = 64
_MARK = "_unreadable_image"


def unreadable_errors():
    """The exceptions that mean "this image file cannot be used" (not a bug of the mapper)."""
    from detectron2.data.detection_utils import SizeMismatchError
    from PIL import Image

    return OSError, SyntaxError, SizeMismatchError, Image.DecompressionBombError


def _describe(error):
    text = " ".join(str(error).split()) or type(error).__name__
    return f"{type(error).__name__}: {text}"


class SkipUnreadable:
    """A training mapper that returns a marker, not an exception, for an image it cannot use."""

    def __init__(self, mapper):
        self.mapper = mapper
        self._errors = unreadable_errors()

    def __call__(self, dataset_dict):
        try:
            return self.mapper(dataset_dict)
        except self._errors as e:
            return {_MARK: str(dataset_dict.get("file_name")), "error": _describe(e)}


class SkippingLoader:
    """Iterates over a training loader's batches without the images :class:`SkipUnreadable` marked.

    Other attributes are the wrapped loader's.
    """

    def __init__(self, loader):
        self.loader = loader
        self.skipped = 0
        self._warned = set()

    def __getattr__(self, name):
        return getattr(self.__dict__["loader"], name)

    def _count(self, marker):
        self.skipped += 1
        path = marker[_MARK]
        if path not in self._warned:
            self._warned.add(path)
            logger.warning(f"skipped unreadable training image {path} ({marker['error']}); "
                           f"{self.skipped} skipped so far")
        try:
            from detectron2.utils.events import get_event_storage

            get_event_storage().put_scalar("data/unreadable_images", self.skipped, smoothing_hint=False)
        except AssertionError:  # iterated outside a trainer (no event storage)
            pass

    def __iter__(self):
        in_a_row = 0
        for batch in self.loader:
            kept = []
            for sample in batch:
                if isinstance(sample, dict) and _MARK in sample:
                    self._count(sample)
                    in_a_row += 1
                    if in_a_row > MAX_CONSECUTIVE:
                        raise DatasetError(f"{in_a_row} training images in a row cannot be read (last: "
                                           f"{sample[_MARK]}: {sample['error']}); check the image folder")
                else:
                    kept.append(sample)
                    in_a_row = 0
            if kept:
                yield kept


class StopOnUnreadable:
    """An evaluation mapper that stops with one line naming an image it cannot use."""

    def __init__(self, mapper):
        self.mapper = mapper
        self._errors = unreadable_errors()

    def __call__(self, dataset_dict):
        try:
            return self.mapper(dataset_dict)
        except self._errors as e:
            raise DatasetError(f"evaluation stopped: unreadable image {dataset_dict.get('file_name')} "
                               f"({_describe(e)}); replace it and run the command again (after training: with --resume, "
                               "which keeps the trained weights and only evaluates)") from None
