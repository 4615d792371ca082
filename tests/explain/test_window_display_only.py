"""Window/level changes the display only: the model always scores a DICOM's own window (issue #13)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fixtures.app import build_tiny_weights
from fixtures.build import dicom_bytes, pydicom_data_file
from mura_core.data.studies import View
from mura_core.explain.predictor import Predictor


@pytest.fixture(scope="module")
def predictor(tmp_path_factory) -> Predictor:
    folder = build_tiny_weights(tmp_path_factory.mktemp("weights"), with_report=False)
    return Predictor.from_weights(device="cpu", weights_dir=folder)


def _views() -> list[View]:
    views = [View(name="synthetic.dcm", data=dicom_bytes(rows=96, cols=80, window=(2000.0, 4000.0)))]
    real = pydicom_data_file("RG3_UNCR.dcm")
    if real is not None:
        views.append(View(name=real.name, path=real))
    return views


@pytest.mark.parametrize("window", [(300.0, 400.0), (800.0, 2000.0), (100.0, 50.0)])
def test_window_changes_image_not_probability(predictor: Predictor, window) -> None:
    plain = predictor.predict_study(_views(), cam="gradcam")
    shown = predictor.predict_study(_views(), cam="gradcam", window=window)
    for a, b in zip(plain.views, shown.views):
        assert a.probability == pytest.approx(b.probability, abs=1e-7), a.name
        np.testing.assert_allclose(a.heatmap, b.heatmap, atol=1e-6)
        assert not np.allclose(a.image, b.image), "the display window was not applied"
        np.testing.assert_array_equal(b.input_image, a.image)
        assert b.meta.window == window
    assert plain.probability == pytest.approx(shown.probability, abs=1e-7)
