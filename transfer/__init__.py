"""Everything Detectron2: runtime compatibility, config keys, heads, datasets, conversion, training.

Importing this package applies :mod:`transfer.d2compat` before any Detectron2 module is imported.
"""
from transfer import d2compat as _d2compat

_d2compat.apply()
