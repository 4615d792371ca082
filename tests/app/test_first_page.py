"""The first page draws without torch: Home's imports and its model card come from the shipped report."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]

_HOME = """
import sys
from mura_core.app import navigation, services, session, views
from mura_core.evaluation import reports
name = services.available_models().default
card = services.shipped_card(name)
ensemble = services.shipped_ensemble(name) if card is None else None
report, _ = services.model_report(name)
import json
from mura_core.models.weights import weights_folder
default = json.loads((weights_folder() / 'index.json').read_text())['default']
described = ([card.name], card.thresholds) if card is not None else ([m['name'] for m in ensemble.members], ensemble.thresholds)
print(name == default, described[0] == [name] or len(described[0]) > 1, sorted(described[1]) == sorted(report['thresholds']))
print('torch' in sys.modules)
"""


def test_home_imports_and_card_need_no_torch():
    """What app.py and Home import, and the shipped card Home quotes, load without importing torch."""
    proc = subprocess.run([sys.executable, "-c", _HOME], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO_ROOT), "HOME": "/tmp"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    first, second = proc.stdout.strip().splitlines()[-2:]
    assert first == "True True True"  # the index's default, its own card (or its ensemble's members), its report
    assert second == "False"
