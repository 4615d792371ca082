"""Tests for mura_core.app.views: cache keys, LRU, summary text, results table and image helpers."""
from __future__ import annotations

import threading
from dataclasses import dataclass, field

import cv2
import numpy as np
import pytest

from mura_core.app.views import (ResultCache, card_summary, decision_label, draw_boxes, format_probability,
                              image_sha256, meta_rows, result_nbytes, results_table, score_key, study_summary, view_status,
                              thumbnail, to_png_bytes, to_uint8, view_panels, with_body_part, zoom_crop)


@dataclass
class FakeView:
    name: str
    probability: float | None
    error: str | None = None
    image: np.ndarray | None = None
    heatmap: np.ndarray | None = None
    peak: tuple[float, float] | None = None
    meta: object | None = None
    scope: object | None = None


@dataclass
class FakeScope:
    in_scope: bool


@dataclass
class FakeStudy:
    probability: float | None
    threshold: float
    abnormal: bool | None
    body_part: str
    aggregate: str = "mean"
    views: list = field(default_factory=list)
    driving_view: int | None = None
    model_name: str = "m"


def test_score_key_depends_on_bytes_and_settings_not_display():
    a = score_key("m", [b"one", b"two"], ["a.png", "b.png"], body_part="wrist", cam="gradcam")
    b = score_key("m", [b"one", b"two"], ["a.png", "b.png"], body_part="WRIST", cam="gradcam")
    assert a == b and hash(a) == hash(b)
    assert a != score_key("m", [b"one", b"TWO"], ["a.png", "b.png"], body_part="WRIST", cam="gradcam")
    assert a != score_key("m", [b"one", b"two"], ["a.png", "b.png"], body_part="WRIST", cam="cam")
    assert a != score_key("m", [b"one", b"two"], ["a.png", "b.png"], body_part="WRIST", cam="gradcam", tta=True)
    assert a != score_key("m", [b"one", b"two"], ["a.png", "b.png"], body_part="ELBOW", cam="gradcam")
    assert a.images[0][1] == image_sha256(b"one")


def test_score_key_unreadable_view_keyed_by_name():
    key = score_key("m", [None], ["gone.png"])
    assert key.images == (("gone.png", "unreadable"),)


def test_result_cache_is_lru_and_counts():
    cache = ResultCache(max_entries=2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1          # a becomes most recent
    cache.put("c", 3)                   # evicts b
    assert "b" not in cache and cache.get("b") is None
    assert cache.get("a") == 1 and cache.get("c") == 3
    assert (cache.hits, cache.misses) == (3, 1)
    cache.clear()
    assert len(cache) == 0
    with pytest.raises(ValueError):
        ResultCache(0)


def test_result_cache_byte_budget():
    cache = ResultCache(max_entries=10, max_bytes=100, sizeof=len)
    cache.put("a", "x" * 40)
    cache.put("b", "x" * 40)
    cache.put("c", "x" * 40)              # 120 > 100: evicts a
    assert "a" not in cache and cache.nbytes == 80
    cache.put("huge", "x" * 500)          # the newest entry is kept even alone over budget
    assert list(cache._items) == ["huge"] and cache.nbytes == 500
    cache.put("huge", "x")                # replacing a key updates the byte count
    assert cache.nbytes == 1


def test_result_nbytes_counts_images_and_heatmaps():
    views = [FakeView("a", 0.5, image=np.zeros((10, 10), np.float32), heatmap=np.zeros((10, 10), np.float32)),
             FakeView("b", None, error="x")]
    assert result_nbytes(FakeStudy(0.5, 0.5, False, "WRIST", views=views)) == 800


def test_with_body_part():
    from mura_core.data.studies import BodyPart, Study

    study = Study("s", (), BodyPart.UNKNOWN)
    assert with_body_part(study, "wrist").body_part is BodyPart.WRIST
    assert study.body_part is BodyPart.UNKNOWN           # the original is untouched


def test_result_cache_threads():
    cache = ResultCache(max_entries=50)

    def work(offset: int) -> None:
        for i in range(200):
            cache.put((offset, i % 60), i)
            cache.get((offset, (i * 7) % 60))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(cache) == 50


def test_study_summary_abnormal_names_driving_view_and_unreadable():
    views = [FakeView("a.png", 0.3), FakeView("b.png", 0.9), FakeView("bad.png", None, error="bad.png: not an image")]
    res = FakeStudy(0.6, 0.5, True, "WRIST", views=views, driving_view=1)
    text = study_summary(res)
    assert "**Abnormal**" in text and "60.0%" in text and "wrist threshold 50.0%" in text
    assert "b.png" in text and "90.0%" in text
    assert "1 file was unreadable" in text
    assert decision_label(res) == "Abnormal"


def test_study_summary_normal_and_nothing_scored():
    res = FakeStudy(0.2, 0.5, False, "UNKNOWN", views=[FakeView("a.png", 0.2)], driving_view=0)
    assert "**Normal**" in study_summary(res) and "below the default threshold" in study_summary(res)
    res.threshold_reason = "global threshold 50.0%: no body part given"
    assert "below the global threshold 50.0%: no body part given." in study_summary(res)
    none = FakeStudy(None, 0.5, None, "UNKNOWN", views=[FakeView("x.png", None, error="x")])
    assert "No view could be scored" in study_summary(none)
    assert decision_label(none) == "Not scored"


def test_study_summary_counts_unreadable_and_out_of_scope_views_apart():
    views = [FakeView("hand.png", 0.8), FakeView("hip.png", None, scope=FakeScope(False)),
             FakeView("empty.png", None, error="empty file"), FakeView("notes.txt", None, error="not an image")]
    res = FakeStudy(0.8, 0.5, True, "UNKNOWN", views=views, driving_view=0)
    text = study_summary(res)
    assert "mean of 1 view" in text
    assert "2 files were unreadable and left out." in text
    assert "1 view left out as outside the model's scope." in text
    assert [view_status(v) for v in views] == [
        "ok", "left out: outside the model's scope", "unreadable: empty file", "unreadable: not an image"]
    assert [row["status"] for row in results_table(res)] == [view_status(v) for v in views]


def test_study_summary_when_every_readable_view_is_out_of_scope():
    views = [FakeView("hip.png", None, scope=FakeScope(False)), FakeView("bad.png", None, error="empty file")]
    text = study_summary(FakeStudy(None, 0.5, None, "UNKNOWN", views=views))
    assert "Every readable view is outside the model's scope" in text
    assert "1 file was unreadable and left out." in text
    kept = FakeView("hip.png", 0.7, scope=FakeScope(False))             # scored anyway: counted as a view
    assert "left out" not in study_summary(FakeStudy(0.7, 0.5, True, "UNKNOWN", views=[kept], driving_view=0))


def test_results_table_rows():
    views = [FakeView("a.png", 0.25, peak=(0.1, 0.9)), FakeView("bad.png", None, error="broken")]
    rows = results_table(FakeStudy(0.25, 0.5, False, "ELBOW", views=views, driving_view=0))
    assert rows[0]["probability"] == 25.0 and rows[0]["drives study"] is True
    assert rows[0]["heat-map peak (x, y)"] == "(0.10, 0.90)"
    assert rows[1]["probability"] is None and "broken" in rows[1]["status"]


def test_format_probability():
    assert format_probability(None) == "—"
    assert format_probability(0.12345) == "12.3%"


def test_png_roundtrip_grey_and_rgb():
    grey = np.linspace(0, 1, 20 * 30, dtype=np.float32).reshape(20, 30)
    png = to_png_bytes(grey)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    back = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
    assert back.shape == (20, 30) and np.array_equal(back, to_uint8(grey))
    rgb = np.zeros((5, 6, 3), np.uint8)
    rgb[..., 0] = 255  # red
    back = cv2.imdecode(np.frombuffer(to_png_bytes(rgb), np.uint8), cv2.IMREAD_COLOR)
    assert back[0, 0].tolist() == [0, 0, 255]  # BGR on disk, red stays red


def test_zoom_crop_centres_and_clamps():
    img = np.arange(100 * 200).reshape(100, 200)
    assert zoom_crop(img, 1.0) is img
    crop = zoom_crop(img, 2.0, (0.5, 0.5))
    assert crop.shape == (50, 100) and crop[0, 0] == img[25, 50]
    corner = zoom_crop(img, 4.0, (0.99, 0.01))   # clamped inside, top-right
    assert corner.shape == (25, 50) and corner[0, -1] == img[0, 199]


def test_draw_boxes_outlines_box_only():
    img = np.zeros((100, 100), np.float32)
    out = draw_boxes(img, [(0.2, 0.2, 0.6, 0.6)], colour=(0, 255, 0), thickness=1)
    assert out.shape == (100, 100, 3)
    assert out[20, 40].tolist() == [0, 255, 0]      # on the top edge
    assert out[40, 40].tolist() == [0, 0, 0]        # inside stays untouched
    assert draw_boxes(img, []).sum() == 0


def test_thumbnail_keeps_aspect():
    img = np.zeros((400, 200), np.uint8)
    assert thumbnail(img, 100).shape == (100, 50)
    small = np.zeros((50, 40), np.uint8)
    assert thumbnail(small, 100).shape == (50, 40)
    tall = np.full((400, 200), 255, np.uint8)
    sq = thumbnail(tall, 100, square=True)
    assert sq.shape == (100, 100) and sq[:, 25:75].min() == 255 and sq[:, :24].max() == 0


def test_view_panels_same_crop_and_overlay_from_heatmap():
    image = np.zeros((64, 64), np.float32)
    heat = np.zeros((64, 64), np.float32)
    heat[40:50, 40:50] = 1.0
    calls = []

    def fake_overlay(img, hm, colormap, alpha):
        calls.append((colormap, alpha))
        rgb = np.zeros(img.shape + (3,), np.uint8)
        rgb[..., 0] = (hm * 255).astype(np.uint8)
        return rgb

    view = FakeView("a.png", 0.7, image=image, heatmap=heat, peak=(0.7, 0.7))
    plain, over = view_panels(view, fake_overlay, colormap="inferno", alpha=0.3, zoom=2.0)
    assert calls == [("inferno", 0.3)]
    assert plain.shape == over.shape == (32, 32, 3)
    assert over[..., 0].max() == 255    # the crop around the peak contains the hot spot
    view.heatmap = None
    _, none = view_panels(view, fake_overlay)
    assert none is None


def test_meta_rows_skips_empty_and_formats_tuples():
    @dataclass
    class Meta:
        format: str = "DICOM"
        width: int = 10
        height: int = 20
        modality: str | None = "CR"
        body_part: str | None = None
        view_position: str | None = ""
        pixel_spacing: tuple | None = (0.1, 0.1)
        photometric: str | None = None
        bits_stored: int | None = 12
        window: tuple | None = None

    rows = dict(meta_rows(Meta()))
    assert rows["Format"] == "DICOM" and rows["Pixel spacing (mm)"] == "0.1, 0.1"
    assert "Body part (file)" not in rows and "View position" not in rows
    assert meta_rows(None) == []


def test_card_summary_mentions_arch_metrics_threshold():
    @dataclass
    class Card:
        name: str = "tiny"
        arch: str = "shallow_cnn"
        image_size: int = 64
        training_data: str = "bone-fracture-xr, CC BY 4.0"
        metrics: dict = field(default_factory=lambda: {"auc": 0.81, "kappa": 0.4})
        thresholds: dict = field(default_factory=lambda: {"default": 0.42, "WRIST": 0.5})

    text = card_summary(Card())
    assert "tiny" in text and "shallow_cnn" in text and "auc 0.810" in text and "42.0%" in text
    assert card_summary(None) == "No model card."
    two = card_summary(Card(), {"auc": 0.7}, "report", {"FracAtlas": {"n": 257, "auc": 0.84, "kappa": 0.35},
                                                        "bone-fracture-xr": {"n": 311, "auc": 0.82}})
    assert "pooled over sources" in two and "FracAtlas auc 0.840, kappa 0.350 (257 in-scope images)" in two
    assert "bone-fracture-xr auc 0.820 (311" in two and "pooled" not in card_summary(Card(), {"auc": 0.7})
    assert "Trained on: bone-fracture-xr, CC BY 4.0 (data" in text

    @dataclass
    class MultiSource(Card):
        recipe: dict = field(default_factory=lambda: {"data": ["../shared/data/FracAtlas", "/x/bone-fracture-xr"]})

    assert "Trained on: FracAtlas, bone-fracture-xr (data, counts" in card_summary(MultiSource())


def test_report_source_says_when_the_figures_were_scored_with_the_flip():
    from mura_core.app.views import report_source

    assert report_source("weights/m.report", {"tta": False}) == "evaluate report weights/m.report"
    assert report_source("weights/m.report", None) == "evaluate report weights/m.report"
    assert "test-time flip" in report_source("weights/m.report", {"tta": True})
    skipped = report_source("weights/m.report", {"tta": True, "model": {"unflipped": ["w"]}})
    assert "test-time flip; w on the view as it is" in skipped
