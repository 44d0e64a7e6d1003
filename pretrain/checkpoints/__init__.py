"""Reading any self-supervised ResNet checkpoint as a torchvision ResNet state dict (no Detectron2 needed).

- :mod:`~pretrain.checkpoints.backbone`: :func:`extract_backbone`, the entry point, and :class:`Backbone`;
- :mod:`~pretrain.checkpoints.layouts`: where the backbone lives in MoCo, InfoMin, solo-learn, VISSL, ...
  checkpoints (:data:`LAYOUTS`) and which layout a checkpoint has;
- :mod:`~pretrain.checkpoints.names`: tensor names, torchvision <-> Detectron2 and Caffe2 -> torchvision;
- :mod:`~pretrain.checkpoints.arch`: the architecture from tensor shapes, torchvision's model for it;
- :mod:`~pretrain.checkpoints.conventions`: the input convention (RGB/BGR, pixel mean/std, stride);
- :mod:`~pretrain.checkpoints.errors`: :class:`ConversionError`, raised for every problem a user can cause.
"""
