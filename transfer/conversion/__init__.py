"""Verified Detectron2 weights from any self-supervised ResNet checkpoint (and back to torchvision).

:mod:`~transfer.conversion.convert` writes the files (:func:`~transfer.conversion.convert.convert`),
:mod:`~transfer.conversion.verify` compares Detectron2's features with torchvision's. Reading a checkpoint
(layouts, names, architecture, input conventions) is Detectron2-free and lives in :mod:`pretrain.checkpoints`.
"""
