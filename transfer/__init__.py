"""Everything Detectron2: its runtime, datasets, checkpoint conversion, training, launching, reports.

- ``runtime/``: version fixes (applied on import of this package), the Detectron2 installer, the COCO
  evaluation backend, the preflight of a GPU node.
- ``data/``: builtin dataset names and registration, validation, the resumable loader, synthetic data.
- ``conversion/``: SSL checkpoints to verified Detectron2 weights and back.
- ``training/``: the config (defaults plus the project's keys), heads, the trainer, the entry point.
- ``launch/``: submitit jobs on SLURM or locally, resources, sweeps and their ledger, transfer curves,
  cost estimates from ``configs/costs/``.
- ``report/``: results.json files to tables, plots and an HTML report, beside the papers' numbers.
- ``bench/``: benchmarks printed as tables: how each stage's cost grows, the trainer against Detectron2's.

Importing this package applies :mod:`transfer.runtime.compat` before any Detectron2 module is imported.
"""
from transfer.runtime import compat

compat.apply()
