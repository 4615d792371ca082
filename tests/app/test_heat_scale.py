"""Tests for the heat-map scale, colour legend and peak marker helpers in mura_core.app.views."""
from __future__ import annotations

import numpy as np
import pytest

from mura_core.app.views import HEAT_SCALES, colour_legend, mark_peak, scaled_heatmap


def test_own_scale_keeps_the_map_and_shared_scale_weights_by_probability():
    heat = np.linspace(0, 1, 16, dtype=np.float32).reshape(4, 4)
    np.testing.assert_array_equal(scaled_heatmap(heat, 0.03, "abnormal", "own"), heat)
    shared = scaled_heatmap(heat, 0.03, "abnormal", "shared")
    assert shared.max() == pytest.approx(0.03)
    assert scaled_heatmap(heat, 0.03, "normal", "shared").max() == pytest.approx(0.97)
    with pytest.raises(ValueError):
        scaled_heatmap(heat, 0.5, "abnormal", "nope")
    assert set(HEAT_SCALES) == {"own", "shared"}


def test_legend_runs_from_hot_top_to_cold_bottom():
    legend = colour_legend("jet", height=100, width=60)
    assert legend.shape == (100, 60, 3) and legend.dtype == np.uint8
    top, bottom = legend[2, 5].astype(int), legend[-3, 5].astype(int)
    assert top[0] > top[2] and bottom[2] > bottom[0]  # jet: red at 1, blue at 0
    with pytest.raises(ValueError):
        colour_legend("not-a-map")


def test_mark_peak_draws_at_the_point_only():
    img = np.zeros((100, 200), dtype=np.float32)
    marked = mark_peak(img, (0.25, 0.5))
    ys, xs = np.nonzero(marked[..., 1])
    assert abs(xs.mean() - 49.5) < 2 and abs(ys.mean() - 49.5) < 2
    assert not mark_peak(img, None).any()


def test_scaled_view_copies_and_leaves_the_cached_view():
    from mura_core.app.views import scaled_view
    from mura_core.explain.predictor import ViewResult

    view = ViewResult("a.png", probability=0.1, heatmap=np.ones((4, 4), dtype=np.float32))
    shared = scaled_view(view, "abnormal", "shared")
    assert shared.heatmap.max() == pytest.approx(0.1) and view.heatmap.max() == 1.0
    assert scaled_view(view, "abnormal", "own") is view
