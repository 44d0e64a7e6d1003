"""Benchmarks of the transfer side, printed as tables by ``tools/bench_*.py`` (numbers go in the README,
never into tests).

- ``isolated.py``: one measurement in a fresh process: wall time and peak memory.
- ``scale.py``: how each stage's cost grows with its work (``tools/bench_scale.py``): dataset checks and
  Detectron2's loading (``scale_datasets.py``), sweep submission (``scale_sweep.py``), memory-bank
  neighbour search and k-means (``scale_memory_bank.py``), the MI estimate (``scale_mi.py``), the report
  (``scale_report.py``).
- ``trainer_overhead.py``: the project's transfer trainer against Detectron2's plain ``DefaultTrainer`` on
  the same config and data (``tools/bench_transfer.py``).
"""
