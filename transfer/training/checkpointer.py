"""Detectron2's checkpointer, made safe to read and to write.

Reading: every file it loads (``MODEL.WEIGHTS``, the checkpoint ``--resume`` finds in ``last_checkpoint``)
goes through :func:`pretrain.common.safe_load.read_checkpoint`: ``weights_only`` for torch files and a
restricted unpickler for ``.pkl``, so a crafted pickle is refused (one line naming ``--trust-pickle``)
instead of running its payload. Detectron2 0.6 reads ``.pkl`` files with plain ``pickle.load``.

Writing: a checkpoint is written to a temporary file and renamed, then ``last_checkpoint`` is rewritten the
same way, so a full disk or a kill leaves the previous checkpoint and its tag intact; a failed write raises
:class:`CheckpointWriteError` naming the file.
"""
import os

import torch
from detectron2.checkpoint import DetectionCheckpointer

from pretrain.common.fileio import atomic_path, write_text_atomic
from pretrain.common.safe_load import CheckpointError, read_checkpoint

__all__ = ["SafeCheckpointer", "CheckpointWriteError", "CheckpointError", "make_safe"]

LAST_CHECKPOINT = "last_checkpoint"


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (disk full, permissions); one line naming the file."""


class SafeCheckpointer(DetectionCheckpointer):
    trust_pickle = False

    def _load_file(self, filename):
        data = read_checkpoint(filename, trust_pickle=self.trust_pickle)
        if not isinstance(data, dict):
            raise CheckpointError(f"{filename}: holds a {type(data).__name__}, not a dict of weights")
        if filename.endswith(".pkl"):
            if "model" in data and "__author__" in data:  # Detectron2 model-zoo format
                return data
            blobs = data.get("blobs", data)  # Caffe2 / Detectron1 model zoo
            blobs = {k: v for k, v in blobs.items() if not k.endswith("_momentum")}
            return {"model": blobs, "__author__": "Caffe2", "matching_heuristics": True}
        return data if "model" in data else {"model": data}

    def save(self, name, **kwargs):
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        path = os.path.join(self.save_dir, basename)
        self.logger.info(f"Saving checkpoint to {path}")
        try:
            with atomic_path(path) as tmp:
                torch.save(data, tmp)
            write_text_atomic(os.path.join(self.save_dir, LAST_CHECKPOINT), basename)
        except (OSError, RuntimeError) as e:
            reason = "no space left on device" if "space" in str(e).lower() or getattr(e, "errno", None) == 28 \
                else " ".join(str(e).split())[:160]
            raise CheckpointWriteError(f"write failed: {path}: {reason}; the previous checkpoint is kept") from None

    def tag_last_checkpoint(self, last_filename_basename):
        write_text_atomic(os.path.join(self.save_dir, LAST_CHECKPOINT), last_filename_basename)


def make_safe(checkpointer, trust_pickle=False):
    """Turn a ``DetectionCheckpointer`` already handed to hooks into a :class:`SafeCheckpointer` in place."""
    checkpointer.__class__ = SafeCheckpointer
    checkpointer.trust_pickle = bool(trust_pickle)
    return checkpointer
