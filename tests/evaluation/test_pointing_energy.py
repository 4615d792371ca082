"""The pointing-game part of mura_core.evaluation.evaluate: energy share and its uniform-map baseline."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mura_core.data.studies import View
from mura_core.evaluation.evaluate import ImageRow, _score_boxed, _Scoring, pointing_game_report


class _FakePredictor:
    """Gives one fixed heat map per image: all its mass in the top-left quarter."""

    def run_batches_many(self, batches, methods, tta=False):
        n = 2
        heat = np.zeros((n, 8, 8), dtype=np.float32)
        heat[:, :4, :4] = 1.0
        return np.full(n, 0.9), {m: [heat] for m in methods}

    @staticmethod
    def combine_maps(member_maps, index, size):
        from mura_core.explain.cams import resize_heatmap
        return resize_heatmap(member_maps[0][index], size)


def _row(i: int, box: tuple[float, float, float, float]) -> ImageRow:
    return ImageRow(image=f"i{i}.png", study=f"s{i}", body_part="HAND", label=1, split="valid",
                    boxes=(box,), view=View(name=f"i{i}.png", path=Path(f"i{i}.png"), boxes=(box,)))


def test_energy_share_in_report(monkeypatch):
    import mura_core.evaluation.evaluate as ev

    monkeypatch.setattr(ev, "_stack", lambda items, configs: {})
    rows = [_row(0, (0.0, 0.0, 0.5, 0.5)), _row(1, (0.5, 0.5, 1.0, 1.0))]
    items = [{"index": 0, "shape": (80, 80)}, {"index": 1, "shape": (80, 80)}]
    scoring = _Scoring({"cam": []})
    _score_boxed(_FakePredictor(), rows, items, [], ["cam"], scoring, 15.0, False)
    report = pointing_game_report(rows, ["cam"], scoring, 15.0)
    cam = report["methods"]["cam"]
    # image 0: all mass inside its box; image 1: (almost) none -- bilinear resizing bleeds a little
    assert cam["energy_share"] == pytest.approx(0.5, abs=0.05)
    assert cam["energy_baseline"] == pytest.approx(0.25)
    assert cam["hits"] == 1 and cam["n"] == 2
    assert "energy_description" in report
