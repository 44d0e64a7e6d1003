"""The labelled splits of a linear evaluation and the order it visits them in.

The data are :class:`pretrain.data.labeled.LabeledImages` folders: ``DATA.ROOT/DATA.TRAIN_DIR`` and
``DATA.ROOT/DATA.VAL_DIR``, each an ImageFolder (ImageNet, CIFAR exported as ``<class>/<image>``) or a
folder with ``labels.csv`` (CDP: ``DATA.ATTRIBUTE`` names the column to predict). Validation classes are
matched to training classes by name.
"""
import os
from dataclasses import dataclass

import torch

from pretrain.evaluation.linear.config import LinearEvalError, split_dir

__all__ = ["Splits", "open_splits", "epoch_order", "worker_message"]


@dataclass
class Splits:
    """The two splits: images, their class indices (into ``classes``, the training split's class names)."""
    train_images: object
    train_targets: torch.Tensor
    val_images: object
    val_targets: torch.Tensor
    classes: list


def _label_column(images, attribute, where):
    """(column index, class names) of the attribute to predict."""
    attrs = images.attributes
    if attribute:
        if attribute not in attrs:
            raise LinearEvalError(f"{where}: no label column {attribute!r} (DATA.ATTRIBUTE); columns: "
                                  f"{', '.join(attrs)}")
        return attrs.index(attribute), images.classes[attribute]
    if len(attrs) != 1:
        raise LinearEvalError(f"{where}: {len(attrs)} label columns ({', '.join(attrs)}); choose one with "
                              "DATA.ATTRIBUTE")
    return 0, images.classes[attrs[0]]


def open_splits(cfg):
    """The training and validation splits of ``cfg``'s data (labels only, no image decoded); raises
    :class:`LinearEvalError` naming the folder or ``labels.csv`` at fault."""
    from pretrain.data.labeled import LABELS_CSV, LabeledDataError, LabeledImages

    train_dir, val_dir = split_dir(cfg, cfg.DATA.TRAIN_DIR), split_dir(cfg, cfg.DATA.VAL_DIR)
    try:
        train, val = LabeledImages(train_dir), LabeledImages(val_dir)
    except LabeledDataError as e:
        raise LinearEvalError(str(e)) from None

    def where(folder, images):
        csv_path = os.path.join(folder, LABELS_CSV)
        return csv_path if images.attributes != ["class"] or os.path.isfile(csv_path) else folder

    col, classes = _label_column(train, cfg.DATA.ATTRIBUTE, where(train_dir, train))
    vcol, vclasses = _label_column(val, cfg.DATA.ATTRIBUTE or train.attributes[col], where(val_dir, val))
    if len(classes) < 2:
        raise LinearEvalError(f"{where(train_dir, train)}: only one class ({classes[0]!r}) to predict")
    index = {c: i for i, c in enumerate(classes)}
    unknown = [c for c in vclasses if c not in index]
    if unknown:
        raise LinearEvalError(f"{where(val_dir, val)}: validation class(es) {', '.join(map(repr, unknown[:5]))} do not "
                              f"occur in the training split {train_dir}")
    train_targets = train.labels[:, col].clone()
    val_targets = torch.tensor([index[vclasses[k]] for k in val.labels[:, vcol].tolist()], dtype=torch.long)
    return Splits(train, train_targets, val, val_targets, classes)


def epoch_order(seed, epoch, n):
    """The order of the ``n`` training images in ``epoch``: a permutation that depends only on the seed and
    the epoch, so a resumed run trains on the same batches as an uninterrupted one."""
    from pretrain.data.views import sample_seed

    g = torch.Generator().manual_seed(sample_seed(seed, epoch, 1 << 30))
    return torch.randperm(n, generator=g)


def worker_message(exc):
    """The message of an error raised in a DataLoader worker (which re-raises it with the worker's traceback),
    as one line."""
    text = str(exc)
    if "Traceback" in text:
        last = [line for line in text.splitlines() if line.strip()][-1]
        text = last.split(": ", 1)[1] if last.split(": ", 1)[0].endswith("Error") else last
    return " ".join(text.split())
