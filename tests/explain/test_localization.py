"""Tests for mura_core.explain.localization: pointing-game hits, tolerance, baselines and intervals."""
from __future__ import annotations

import numpy as np
import pytest

from mura_core.explain.localization import (
    box_distance, centre_hit, covered_fraction, pointing_game_hit, pointing_game_summary, wilson_interval,
)


def _peak_map(h: int, w: int, row: int, col: int) -> np.ndarray:
    m = np.zeros((h, w), np.float32)
    m[row, col] = 1.0
    return m


def test_hit_inside_box():
    # peak pixel (row 30, col 40) -> centre (40.5, 30.5) px; box x 35..50, y 25..40 px
    assert pointing_game_hit(_peak_map(100, 100, 30, 40), [(0.35, 0.25, 0.5, 0.4)], tolerance=0) is True


def test_miss_outside_box_and_tolerance_rescues_it():
    heat = _peak_map(100, 200, 10, 10)  # centre (10.5, 10.5) px
    box = [(0.2, 0.2, 0.4, 0.4)]  # x 40..80, y 20..40 px -> distance hypot(29.5, 9.5) = 30.99
    assert pointing_game_hit(heat, box, tolerance=0) is False
    assert pointing_game_hit(heat, box, tolerance=30) is False
    assert pointing_game_hit(heat, box, tolerance=31) is True


def test_any_of_several_boxes_and_reversed_corners():
    heat = _peak_map(50, 50, 45, 45)
    assert pointing_game_hit(heat, [(0.0, 0.0, 0.1, 0.1), (1.0, 1.0, 0.8, 0.8)], tolerance=0) is True


def test_no_boxes_not_counted_and_flat_is_miss():
    assert pointing_game_hit(np.ones((5, 5)), [], tolerance=0) is None
    assert pointing_game_hit(np.zeros((20, 20)), [(0.0, 0.0, 1.0, 1.0)], tolerance=0) is False
    with pytest.raises(ValueError):
        pointing_game_hit(np.ones((5, 5)), [(0, 0, 1, 1)], tolerance=-1)


def test_box_distance_and_centre_baseline():
    assert box_distance((0.5, 0.5), (0.4, 0.4, 0.6, 0.6), 100, 100) == 0.0
    assert box_distance((0.0, 0.5), (0.1, 0.4, 0.6, 0.6), 100, 100) == pytest.approx(10.0)
    assert centre_hit([(0.4, 0.4, 0.6, 0.6)], 100, 100, tolerance=0)
    assert not centre_hit([(0.0, 0.0, 0.1, 0.1)], 100, 100, tolerance=5)


def test_covered_fraction():
    assert covered_fraction([(0.0, 0.0, 0.5, 0.5)], 100, 100, tolerance=0) == pytest.approx(0.25)
    assert covered_fraction([(0.0, 0.0, 1.0, 1.0)], 10, 10, tolerance=0) == 1.0
    grown = covered_fraction([(0.4, 0.4, 0.6, 0.6)], 100, 100, tolerance=5)
    assert 0.04 < grown < (0.3 * 0.3)


def test_wilson_interval_known_values():
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-3) and high == pytest.approx(0.9433, abs=1e-3)
    assert wilson_interval(0, 0) is None


def test_summary():
    s = pointing_game_summary([True, False, None, True], centre_hits=[True, False, False],
                              random_chance=[0.1, 0.2, 0.3], tolerance=15)
    assert s["n"] == 3 and s["hits"] == 2 and s["hit_rate"] == pytest.approx(2 / 3)
    assert s["centre_baseline"] == pytest.approx(1 / 3) and s["random_baseline"] == pytest.approx(0.2)
    assert s["tolerance_px"] == 15.0
    empty = pointing_game_summary([None])
    assert empty["hit_rate"] is None and empty["ci95"] is None


def test_peak_distance_and_rates_by_tolerance():
    from mura_core.explain.localization import hit_rates_by_tolerance, peak_distance

    heat = _peak_map(100, 200, 10, 10)
    d = peak_distance(heat, [(0.2, 0.2, 0.4, 0.4)])
    assert d == pytest.approx(np.hypot(29.5, 9.5))
    assert peak_distance(heat, []) is None
    assert peak_distance(np.zeros((5, 5)), [(0, 0, 1, 1)]) == float("inf")
    rates = hit_rates_by_tolerance([0.0, 10.0, None, float("inf"), 40.0], [0, 15, 60])
    assert rates == {"0": 0.25, "15": 0.5, "60": 0.75}


# ---------------------------------------------------------------- energy-based pointing game

def test_energy_share_counts_mass_inside_boxes():
    from mura_core.explain.localization import energy_share

    h = np.zeros((10, 10), dtype=np.float32)
    h[1, 1] = 3.0   # inside the box (0, 0, 0.3, 0.3)
    h[8, 8] = 1.0   # outside
    assert energy_share(h, [(0.0, 0.0, 0.3, 0.3)]) == pytest.approx(0.75)
    assert energy_share(h, [(0.0, 0.0, 0.3, 0.3), (0.7, 0.7, 1.0, 1.0)]) == pytest.approx(1.0)
    assert energy_share(h, []) is None
    assert energy_share(np.zeros((4, 4)), [(0, 0, 1, 1)]) == 0.0


def test_energy_share_of_uniform_map_is_box_area():
    from mura_core.explain.localization import covered_fraction, energy_share

    box = (0.1, 0.2, 0.6, 0.4)
    assert energy_share(np.ones((50, 40)), [box]) == pytest.approx(covered_fraction([box], 50, 40, 0.0))
    assert energy_share(np.ones((50, 40)), [box]) == pytest.approx(0.5 * 0.2, abs=0.02)


def test_energy_share_ignores_negative_values():
    from mura_core.explain.localization import energy_share

    h = np.full((10, 10), -5.0)
    h[0, 0] = 1.0
    assert energy_share(h, [(0.0, 0.0, 0.1, 0.1)]) == pytest.approx(1.0)


def test_summary_carries_energy_and_its_baseline():
    from mura_core.explain.localization import pointing_game_summary

    out = pointing_game_summary([True, False, None], energies=[0.5, 0.1, None], area_fractions=[0.2, 0.1])
    assert out["n"] == 2 and out["energy_share"] == pytest.approx(0.3)
    assert out["energy_baseline"] == pytest.approx(0.15)
    assert "energy_share" not in pointing_game_summary([True])
