"""The shipped card files: a checkpoint's, and an ensemble's naming its members."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.score import ensemble_default_folder, tiny_manifest

from mura_core.evaluation.cards import card_text, write_card


def test_an_ensemble_card_names_members_rule_thresholds_and_its_own_report(tmp_path: Path) -> None:
    data = tiny_manifest(tmp_path / "data", corrupt=0)
    folder = ensemble_default_folder(tmp_path / "weights", data)
    text = card_text("pair", folder)
    assert text.startswith("# Model card: pair (ensemble)")
    for needle in ("| a | `shallow_cnn` | 64 px |", "| b | `shallow_cnn` | 48 px |", "`a.md`",
                   "mean of the members' calibrated probabilities", "default 0.400, WRIST 0.500",
                   "quoted from the evaluate report `pair.report/report.json`", "Not a medical device",
                   "**Licence of the data** (the members' training data): CC BY 4.0", "optimistic"):
        assert needle in text, needle
    member = card_text("a", folder)
    assert member.startswith("# Model card: a") and "No evaluate report ships" in member
    assert write_card("pair", folder).read_text() == text


def test_a_card_says_in_words_what_the_weights_are(tmp_path: Path) -> None:
    from mura_core.models.weights import read_index, write_index

    data = tiny_manifest(tmp_path / "data", corrupt=0)
    folder = ensemble_default_folder(tmp_path / "weights", data)
    index = read_index(folder)
    index["models"]["a"]["description"] = "A shallow CNN taught by b, 64 px"
    write_index(index, folder)
    assert "\n**These weights**: A shallow CNN taught by b, 64 px.\n" in card_text("a", folder)
    del index["models"]["a"]["description"]
    write_index(index, folder)
    assert "These weights" not in card_text("a", folder)


def test_a_card_names_the_default_map_its_index_chose(tmp_path: Path) -> None:
    data = tiny_manifest(tmp_path / "data", corrupt=0)
    folder = ensemble_default_folder(tmp_path / "weights", data, default_cam={"pair": "hirescam"})
    assert "**Default heat map**: `hirescam`" in card_text("pair", folder)
    assert "Default heat map" not in card_text("pair", ensemble_default_folder(tmp_path / "plain", data))


def test_an_ensemble_card_says_whose_heat_maps_it_shows(tmp_path: Path) -> None:
    folder = ensemble_default_folder(tmp_path / "weights", maps_from=["b"])
    text = card_text("pair", folder)
    assert "Heat maps come from b only" in text and "heat maps are averaged" not in text.lower()
    assert "Heat maps are averaged" in card_text("pair", ensemble_default_folder(tmp_path / "all"))


def test_a_model_that_flips_by_default_says_so_and_its_report_was_scored_that_way(tmp_path: Path) -> None:
    import json

    from mura_core.explain.predictor import Predictor

    data = tiny_manifest(tmp_path / "data", corrupt=0)
    folder = ensemble_default_folder(tmp_path / "weights", data, default_tta={"pair": True})
    assert Predictor.from_weights("pair", device="cpu", weights_dir=folder).tta
    assert json.loads((folder / "pair.report" / "report.json").read_text())["tta"] is True
    assert "**Test-time flip**: on by default" in card_text("pair", folder)
    plain = ensemble_default_folder(tmp_path / "plain", data)
    assert "Test-time flip" not in card_text("pair", plain)
    assert json.loads((plain / "pair.report" / "report.json").read_text())["tta"] is False


def test_an_ensemble_card_and_report_name_the_members_that_skip_the_flip(tmp_path: Path) -> None:
    import json

    data = tiny_manifest(tmp_path / "data", corrupt=0)
    folder = ensemble_default_folder(tmp_path / "weights", data, default_tta={"pair": True}, unflipped=["b"])
    assert "Except b, which scores the plain view only" in card_text("pair", folder)
    assert json.loads((folder / "pair.report" / "report.json").read_text())["model"]["unflipped"] == ["b"]
    every = ensemble_default_folder(tmp_path / "every", data, default_tta={"pair": True})
    assert "plain view only" not in card_text("pair", every)
    assert json.loads((every / "pair.report" / "report.json").read_text())["model"]["unflipped"] == []


@pytest.mark.parametrize("method,cost", [("cam-zoom", "With `cam-zoom` the flip needs no extra forward"),
                                         ("hirescam", "Scores and maps take two forwards")])
def test_the_flip_sentence_names_what_the_default_map_costs(tmp_path: Path, method: str, cost: str) -> None:
    data = tiny_manifest(tmp_path / "data", corrupt=0)
    folder = ensemble_default_folder(tmp_path / "weights", data, default_tta={"pair": True},
                                     default_cam={"pair": method})
    assert cost in card_text("pair", folder)


def test_a_card_whose_default_map_is_no_better_than_the_centre_says_so(tmp_path: Path) -> None:
    import json

    data = tiny_manifest(tmp_path / "data", corrupt=0)
    folder = ensemble_default_folder(tmp_path / "weights", data, default_cam={"pair": "hirescam"})
    report_file = folder / "pair.report" / "report.json"
    report = json.loads(report_file.read_text())
    report.pop("by_source", None)
    report["pointing_game"] = {"methods": {"hirescam": {"n": 30, "hit_rate": 0.1, "ci95": [0.03, 0.25],
                                                        "centre_baseline": 0.2}}}
    report_file.write_text(json.dumps(report))
    assert "**Heat-map caution**" in card_text("pair", folder) and "`hirescam`" in card_text("pair", folder)
    report["pointing_game"]["methods"]["hirescam"].update(hit_rate=0.7, ci95=[0.55, 0.82])
    report_file.write_text(json.dumps(report))
    assert "Heat-map caution" not in card_text("pair", folder)


def test_a_card_quotes_kappa_at_thresholds_fitted_out_of_fold(tmp_path: Path) -> None:
    from mura_core.evaluation.cross_fitted import cross_fitted_figures, cross_fitted_markdown
    from mura_core.evaluation.reports import read_predictions

    data = tiny_manifest(tmp_path / "data", corrupt=0)
    folder = ensemble_default_folder(tmp_path / "weights", data)
    assert "fitted out of fold" not in card_text("pair", folder)     # too few studies of a class for 5 folds
    study_csv = folder / "pair.report" / "study_predictions.csv"
    rows = ["study,body_part,label,probability,source"] + [
        f"s{i},WRIST,{i % 2},{0.3 + 0.4 * (i % 2) + 0.01 * (i % 13):.4f},X" for i in range(40)]
    study_csv.write_text("\n".join(rows) + "\n", encoding="utf-8")
    text = card_text("pair", folder)
    section = cross_fitted_markdown(cross_fitted_figures(read_predictions(study_csv)))
    assert "### Kappa at thresholds fitted out of fold" in section and section in text
    assert "| overall | 40 |" in section
