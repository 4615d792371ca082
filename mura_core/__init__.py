"""mura_core: bone X-ray abnormality scoring and explanation, after the Stanford MURA work.

The data flows one way, and the modules are named after the steps:
files -> studies (`studies`, `mura_folder`, `manifest`, `uploads`) -> decoded images (`decode`)
-> tensors (`preprocess`) -> model (`models`, `checkpoints`) -> probabilities and heat maps
(`predict`, `explain`) -> metrics (`metrics`, `evaluate`) -> pages (`app.py`, `pages/`).
"""
from __future__ import annotations

__version__ = "0.1.0"
