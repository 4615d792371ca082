"""Valid scoring helpers: per-source AUC, the selection score, temperature scaling."""
from __future__ import annotations

import numpy as np
import pytest

from mura_core.training.evaluation import fit_temperature, per_source_auc, selection_score


def test_per_source_auc_ignores_out_of_scope_images() -> None:
    labels = np.array([0, 1, 0, 1, 0, 1])
    probs = np.array([0.1, 0.9, 0.8, 0.2, 0.9, 0.1])
    aucs = per_source_auc(labels, probs, ["a", "a", "b", "b", "b", "b"], [True, True, True, True, False, False])
    assert aucs == {"a": 1.0, "b": 0.0}
    assert selection_score("source_auc", 0.3, 0.5, aucs) == pytest.approx(-0.5)
    assert selection_score("loss", 0.3, 0.5, aucs) == 0.3
    with pytest.raises(ValueError):
        selection_score("best", 0.3, 0.5, aucs)


def test_temperature_undoes_overconfidence() -> None:
    rng = np.random.default_rng(0)
    true_logits = rng.normal(0, 2, 4000)
    labels = (rng.random(4000) < 1 / (1 + np.exp(-true_logits))).astype(float)
    assert fit_temperature(true_logits * 3.0, labels) == pytest.approx(3.0, rel=0.15)
    assert fit_temperature(true_logits, labels) == pytest.approx(1.0, rel=0.15)
    assert fit_temperature(true_logits, np.ones(4000)) == 1.0  # one class: nothing to fit
