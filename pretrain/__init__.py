"""Contrastive pretraining of ResNets (MoCo v1/v2, InfoMin) and its analysis tools.

Entry point: ``python -m pretrain.train --config-file configs/pretrain/<name>.yaml [--num-gpus N] [--resume]
KEY VALUE ...`` (:mod:`pretrain.train`; launchers call :func:`pretrain.train.run`).

Modules, one concept each:

- :mod:`pretrain.config`: every key and default in one yacs tree; ``_BASE_``; ``KEY VALUE`` overrides.
- :mod:`pretrain.data`: ImageFolder that skips unreadable images, resumable distributed sampler, loaders.
- :mod:`pretrain.views`: view pipelines by name (``moco_v1``, ``moco_v2``, ``infomin``, ``eval``) and the
  PIRL-style JigSaw branch.
- :mod:`pretrain.backbones`: torchvision ResNets with the projection head in ``fc``.
- :mod:`pretrain.methods`: the method registry and the :class:`~pretrain.methods.base.Method` interface;
  ``moco.py`` (MoCo v1/v2, InfoMin's JigSaw branch).
- :mod:`pretrain.solver`: SGD, learning-rate schedules, numerics (precision) choice.
- :mod:`pretrain.distributed`: process launch (local spawn, torchrun, SLURM/submitit), collectives,
  shuffle BN.
- :mod:`pretrain.checkpoint`: atomic, ``weights_only`` checkpoints (DESIGN.md artifact 1), RNG states.
- :mod:`pretrain.knn`: weighted kNN monitor (InstDis).
- :mod:`pretrain.bench`: throughput of the training step and the data pipeline (``tools/bench_pretrain.py``).
"""
