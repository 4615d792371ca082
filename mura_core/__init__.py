"""mura_core: bone X-ray abnormality scoring and explanation, after the Stanford MURA work.

The data flows one way, and the modules are named after the steps:
files -> studies (`studies`, `mura_folder`, `manifest`, `uploads`) -> decoded images (`decode`)
-> tensors (`preprocess`) -> model (`models`, `checkpoints`, `devices`, `train`) -> probabilities and heat
maps (`predict`, `explain`, `localization`) -> metrics (`metrics`, `evaluate`) -> pages (`viewer*`,
`app_state`, then `app.py` and `pages/`).
"""
from __future__ import annotations

__version__ = "0.1.0"
