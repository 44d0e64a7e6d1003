"""Contrastive pretraining of ResNets (MoCo v1/v2, InfoMin; IR, BALL, ANN, LA, BALL+, ANN+ and CMC of
Wu et al.) and its analysis tools (linear evaluation, mutual-information estimation).

Entry point: ``python -m pretrain.train --config-file configs/pretrain/<name>.yaml [--num-gpus N] [--resume]
KEY VALUE ...`` (:mod:`pretrain.train`; launchers call :func:`pretrain.train.run`).

Modules, one concept each:

- :mod:`pretrain.config`: every key and default in one yacs tree; ``_BASE_``; ``KEY VALUE`` overrides.
- :mod:`pretrain.data`: ImageFolder that skips unreadable images, resumable distributed sampler, loaders.
- :mod:`pretrain.views`: view pipelines by name (``moco_v1``, ``moco_v2``, ``infomin``, ``cmc``,
  ``color_jitter_only``, ``crop_only``, ``eval``) and the PIRL-style JigSaw branch.
- :mod:`pretrain.backbones`: torchvision ResNets with the projection head in ``fc``.
- :mod:`pretrain.methods`: the method registry and the :class:`~pretrain.methods.base.Method` interface;
  ``moco.py`` (MoCo v1/v2, InfoMin's JigSaw branch), ``ir.py``, ``ball.py``, ``ann.py``, ``la.py``
  (memory-bank methods), ``cmc.py`` (CMC and its BALL/ANN variants).
- :mod:`pretrain.memory_bank`, :mod:`pretrain.negatives`, :mod:`pretrain.neighbours`: the memory bank,
  negative sets (uniform, background ball, annulus, annealed), nearest neighbours and k-means (FAISS or
  torch).
- :mod:`pretrain.lab`: sRGB <-> CIE Lab for CMC.
- :mod:`pretrain.solver`: SGD, learning-rate schedules (cosine, step, kNN plateau), numerics (precision).
- :mod:`pretrain.distributed`: process launch (local spawn, torchrun, SLURM/submitit), collectives,
  shuffle BN.
- :mod:`pretrain.checkpoint`: atomic, ``weights_only`` checkpoints (DESIGN.md artifact 1), RNG states.
- :mod:`pretrain.knn`: weighted kNN monitor (InstDis).
- :mod:`pretrain.frozen`, :mod:`pretrain.labeled`: a frozen encoder from any checkpoint the project reads;
  labelled image folders (ImageFolder or ``labels.csv``).
- :mod:`pretrain.linear_eval`: linear evaluation (``python -m pretrain.linear_eval``), results in the
  transfer schema.
- :mod:`pretrain.mi`: post-training MI estimation (Lee et al.; ``tools/estimate_mi.py``).
- :mod:`pretrain.vince_toy`: the VINCE toy of Wu et al. Table 1 (``tools/vince_toy.py``).
- :mod:`pretrain.bench`: throughput of the training step and the data pipeline (``tools/bench_pretrain.py``).
"""
