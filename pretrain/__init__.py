"""Contrastive pretraining of ResNets (MoCo v1/v2, InfoMin; IR, BALL, ANN, LA, BALL+, ANN+ and CMC of
Wu et al.) and its analysis tools (linear evaluation, mutual-information estimation).

The ground floor of the project: it imports neither ``transfer`` nor ``detectron2``, and importing it
patches nothing. Command: ``tools/pretrain_backbone.py`` (library entry :func:`pretrain.training.train.main`).

- ``common/``: pieces both halves use: atomic writes, strict YAML, the code version, safe checkpoint
  loading, process launch and collectives, run artifacts (file names, run folders, ``results.json``),
  command-line conventions, the repository's paths.
- ``config.py``: every pretraining key and default in one yacs tree. ``backbones.py``: torchvision ResNets
  with the projection head in ``fc``.
- ``data/``: image folders that skip unreadable files, resumable sampler and loaders, view pipelines,
  sRGB <-> Lab for CMC, labelled image sets.
- ``methods/``: the method registry (one file per method) and the memory bank, negative sets,
  neighbour search and k-means they share.
- ``training/``: the train loop, pre-run checks, optimiser and LR schedules, checkpoints, logs, kNN monitor.
- ``checkpoints/``: reading any SSL ResNet checkpoint (MoCo, InfoMin, solo-learn, VISSL, ...) into a
  torchvision state dict: layouts, key names, architecture from shapes.
- ``evaluation/``: frozen encoders and features, linear and kNN evaluation, MI estimation, the VINCE toy.
- ``bench.py``: throughput of the training step and the data pipeline (``tools/bench_pretrain.py``).

File formats: docs/artifacts.md.
"""
