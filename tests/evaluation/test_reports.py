"""Tests for mura_core.evaluation.reports: the one reader/writer of evaluate outputs, one study averaging."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from mura_core.app.validation import describe_report
from mura_core.evaluation import reports as M
from mura_core.evaluation.reports import find_reports, load_report, read_predictions, thresholds_of


def test_read_predictions_image_rows_averaged(tmp_path: Path):
    csv = tmp_path / "predictions.csv"
    csv.write_text("study_id,image,body_part,label,probability,split\n"
                   "s1,a.png,WRIST,1,0.8,valid\n"
                   "s1,b.png,WRIST,1,0.4,valid\n"
                   "s2,c.png,,0,0.1,valid\n"
                   "s3,d.png,,0,,valid\n")
    preds = {p.study_id: p for p in read_predictions(csv)}
    assert preds["s1"].probability == pytest.approx(0.6) and preds["s1"].body_part == "WRIST"
    assert preds["s2"].body_part == "UNKNOWN" and preds["s2"].label == 0
    assert preds["s3"].probability is None


def test_read_predictions_study_level_rows_preferred(tmp_path: Path):
    csv = tmp_path / "predictions.csv"
    csv.write_text("level,study_id,label,probability\n"
                   "image,s1,1,0.1\nimage,s1,1,0.3\nstudy,s1,1,0.9\n")
    (pred,) = read_predictions(csv)
    assert pred.probability == pytest.approx(0.9)


def test_read_predictions_rejects_unknown_columns(tmp_path: Path):
    csv = tmp_path / "predictions.csv"
    csv.write_text("foo,bar\n1,2\n")
    with pytest.raises(ValueError, match="study id"):
        read_predictions(csv)


def test_find_and_load_reports(tmp_path: Path):
    rep = tmp_path / "tiny.report"
    rep.mkdir()
    (rep / "report.json").write_text(json.dumps({"thresholds": {"default": 0.4, "WRIST": 0.6}, "split": "valid"}))
    (rep / "predictions.csv").write_text("study_id,body_part,label,probability\ns1,WRIST,1,0.7\n")
    other = tmp_path / "runs" / "eval1"
    other.mkdir(parents=True)
    (other / "report.json").write_text("{}")
    refs = find_reports([tmp_path])
    assert [r.name for r in refs] == ["runs/eval1", "tiny"]
    assert refs[0].predictions is None
    report, preds = load_report(refs[1])
    assert thresholds_of(report) == {"default": 0.4, "WRIST": 0.6}
    assert preds[0].probability == pytest.approx(0.7)
    assert "split: valid" in describe_report(report) and "flip" not in describe_report(report)
    assert describe_report({**report, "tta": True}).endswith("scored with test-time flip")
    skipped = {**report, "tta": True, "model": {"name": "pair", "unflipped": ["b"]}}
    assert describe_report(skipped).endswith("scored with test-time flip (b unflipped)")
    assert find_reports([tmp_path / "missing"]) == []
    (rep / "study_predictions.csv").write_text("study,body_part,label,probability,level\ns1,WRIST,1,0.9,study\n")
    ref = find_reports([tmp_path])[1]
    assert ref.predictions.name == "study_predictions.csv"
    assert load_report(ref)[1][0].probability == pytest.approx(0.9)


def test_thresholds_of_fallbacks():
    assert thresholds_of({}) == {"default": 0.5}
    assert thresholds_of({"card": {"thresholds": {"default": 0.3}}}) == {"default": 0.3}


def test_aggregate_studies_mean_max_and_errors():
    rows = [
        ("s1", "WRIST", 1, 0.2), ("s1", "WRIST", 1, 0.8), ("s1", "WRIST", 1, None),
        ("s2", "", 0, 0.1), ("s2", "ELBOW", 0, 0.3),
        ("s3", None, None, None),
    ]
    mean = M.aggregate_studies(rows, "mean")
    assert [r.study_id for r in mean] == ["s1", "s2", "s3"]
    assert mean[0].probability == pytest.approx(0.5) and mean[0].n_images == 3
    assert mean[1].body_part == "ELBOW" and mean[1].label == 0
    assert mean[2].probability is None and mean[2].label is None and mean[2].body_part == "UNKNOWN"
    mx = M.aggregate_studies(rows, "max")
    assert mx[0].probability == pytest.approx(0.8)
    with pytest.raises(ValueError):
        M.aggregate_studies(rows, "median")


def test_report_card_only_for_the_checkpoint_it_scored():
    card = {"name": "m", "arch": "shallow_cnn", "image_size": 64, "mean": [0.5] * 3, "std": [0.5] * 3,
            "thresholds": {"default": 0.4, "WRIST": 0.3}}
    report = {"model": {"name": "m", "sha256": "abc", "card": card}}
    found = M.report_card(report, "abc")
    assert (found.name, found.image_size, found.threshold_for("WRIST")) == ("m", 64, 0.3)
    assert M.report_card(report, "other") is None               # another file: the report cannot vouch for it
    assert M.report_card(report, None) is None
    assert M.report_card({"model": {"sha256": "abc", "card": {"name": "m"}}}, "abc") is None  # incomplete card


def test_per_source_headlines_keep_sources_with_an_auc():
    report = {"by_source": {
        "FracAtlas": {"image_level": {"overall": {"n": 257, "auc": 0.84, "kappa": 0.3, "ci": {}}}},
        "one-class": {"image_level": {"overall": {"n": 10, "auc": None}}}}}
    assert M.per_source_headlines(report) == {"FracAtlas": {"n": 257.0, "auc": 0.84, "kappa": 0.3}}
    assert M.per_source_headlines({}) == {}


def test_card_metrics_quote_leave_one_source_out_with_the_recipe_each_run_measures():
    """A model's own runs read "this model"; an ensemble's tagged runs name the member whose recipe was held out."""
    report = {"image_level": {"overall": {"n": 3, "auc": 0.8}}, "study_level": {"overall": {}}}
    run = {"held_out": "FracAtlas", "trained_on": ["bone-fracture-xr"], "n_images": 257, "auc": 0.533,
           "auc_ci": [0.45, 0.61]}
    own = M.metrics_markdown(report, "x.report", {"description": "one recipe", "runs": [run]})
    assert "| this model | FracAtlas | bone-fracture-xr | 257 | 0.533" in own
    tagged = M.metrics_markdown(report, "x.report", {"description": "two", "runs": [{**run, "recipe": "lite2"}]})
    assert "| lite2 | FracAtlas |" in tagged
    assert "Leave-one-source-out" not in M.metrics_markdown(report, "x.report", None)


def _game(rate: float, low: float, high: float, centre: float) -> dict:
    return {"methods": {"cam": {"n": 50, "hit_rate": rate, "ci95": [low, high], "centre_baseline": centre}}}


def test_map_caution_names_the_sources_where_the_map_is_no_better_than_the_centre() -> None:
    from mura_core.evaluation.reports import map_caution

    report = {"by_source": {"A": {"pointing_game": _game(0.80, 0.70, 0.88, 0.15)},
                            "B": {"pointing_game": _game(0.42, 0.35, 0.49, 0.36)}}}
    caution = map_caution(report, "cam")
    assert caution is not None and "B 0.42 [0.35–0.49] against 0.36" in caution and "A " not in caution
    report["by_source"]["B"]["pointing_game"] = _game(0.60, 0.50, 0.70, 0.36)
    assert map_caution(report, "cam") is None                  # clearly better than the centre on every source
    assert map_caution(report, "gradcam") is None              # not measured: nothing to say
    assert map_caution(None, "cam") is None
    single = {"data": {"name": "/data/MURA-v1.1"}, "pointing_game": _game(0.10, 0.05, 0.20, 0.20)}
    assert "MURA-v1.1 0.10" in map_caution(single, "cam")
