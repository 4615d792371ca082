"""The app's services: which models are offered and the facts pages quote about them."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.app import start_app
from tests.fixtures.score import ensemble_default_folder, tiny_manifest


@pytest.fixture(scope="module")
def ensemble_weights(tmp_path_factory) -> Path:
    """Two tiny checkpoints, the ensemble "pair" of both as the index's default, with pair's evaluate report."""
    data = tiny_manifest(tmp_path_factory.mktemp("data"), corrupt=0)
    return ensemble_default_folder(tmp_path_factory.mktemp("weights"), data)


def test_an_ensemble_quotes_the_thresholds_it_decides_with(ensemble_weights: Path, monkeypatch) -> None:
    """An ensemble decides at its members' averaged thresholds; pages must not quote the first member's."""
    from mura_core.app import services

    monkeypatch.setenv("MURA_WEIGHTS_DIR", str(ensemble_weights))
    assert services.model_thresholds("a") == pytest.approx({"default": 0.2, "WRIST": 0.3})
    assert services.model_thresholds("pair") == pytest.approx({"default": 0.4, "WRIST": 0.5})
    assert services.model_thresholds("missing") == {"default": 0.5}


def test_an_ensemble_default_leads_the_picker_and_is_described_from_its_report(ensemble_weights: Path,
                                                                              monkeypatch) -> None:
    from mura_core.app import services

    monkeypatch.setenv("MURA_WEIGHTS_DIR", str(ensemble_weights))
    choice = services.available_models()
    assert choice.default == "pair" and choice.names[0] == "pair" and set(choice.names) == {"pair", "a", "b"}
    shipped = services.shipped_ensemble("pair")
    assert shipped is not None and [m["name"] for m in shipped.members] == ["a", "b"]
    assert [m["image_size"] for m in shipped.members] == [64, 48]
    assert shipped.thresholds == pytest.approx({"default": 0.4, "WRIST": 0.5})
    assert services.shipped_ensemble("a") is None
    assert shipped.maps_from == ("a", "b")  # the report records whose maps the ensemble showed


def test_an_ensemble_showing_one_members_maps_says_so(tmp_path: Path, monkeypatch) -> None:
    from mura_core.app import services
    from mura_core.app.views import ensemble_summary

    data = tiny_manifest(tmp_path / "data", corrupt=0)
    monkeypatch.setenv("MURA_WEIGHTS_DIR", str(ensemble_default_folder(tmp_path / "weights", data, maps_from=["b"])))
    shipped = services.shipped_ensemble("pair")
    assert shipped is not None and shipped.maps_from == ("b",)
    text = ensemble_summary("pair", shipped.members, shipped.thresholds, {"auc": 0.8}, "report")
    assert "probabilities and heat maps averaged" in text  # nothing said about maps: every member's
    text = ensemble_summary("pair", shipped.members, shipped.thresholds, {"auc": 0.8}, "report", None,
                            shipped.maps_from)
    assert "probabilities averaged; heat maps from b only" in text


def test_an_ensemble_report_of_other_files_is_not_quoted(ensemble_weights: Path, tmp_path: Path, monkeypatch) -> None:
    """A report whose members' sha256s differ from the index's describes other files: Home waits for the model."""
    import json
    import shutil

    from mura_core.app import services

    folder = shutil.copytree(ensemble_weights, tmp_path / "w")
    index = json.loads((folder / "index.json").read_text())
    index["models"]["b"]["sha256"] = "0" * 64
    (folder / "index.json").write_text(json.dumps(index))
    monkeypatch.setenv("MURA_WEIGHTS_DIR", str(folder))
    assert services.shipped_ensemble("pair") is None


def test_home_describes_an_ensemble_default(ensemble_weights: Path, monkeypatch) -> None:
    at = start_app(ensemble_weights, monkeypatch)
    text = " ".join(m.value for m in at.markdown)
    assert "**pair** — ensemble of a (`shallow_cnn`, 64 px) and b (`shallow_cnn`, 48 px)" in text
    assert "Default threshold 40.0%" in text


def test_model_card_page_shows_the_ensemble_then_each_member(ensemble_weights: Path, monkeypatch) -> None:
    at = start_app(ensemble_weights, monkeypatch).switch_page("pages/model_card.py").run()
    assert not at.exception, at.exception
    text = " ".join(m.value for m in at.markdown)
    for heading in ("# Model card: pair (ensemble)", "# Model card: a", "# Model card: b"):
        assert heading in text, heading


def test_an_ensemble_without_its_own_loso_quotes_every_members(ensemble_weights: Path, tmp_path: Path,
                                                                monkeypatch) -> None:
    """One member's summary is quoted as it is; with several, every run is kept and tagged with its recipe."""
    import json
    import shutil

    from mura_core.app import services

    folder = shutil.copytree(ensemble_weights, tmp_path / "w")
    monkeypatch.setenv("MURA_WEIGHTS_DIR", str(folder))
    assert services.model_loso("pair") is None
    run = {"held_out": "S", "trained_on": ["T"], "auc": 0.6}
    (folder / "a.loso.json").write_text(json.dumps({"description": "recipe of a", "runs": [run]}))
    one = services.model_loso("pair")
    assert one["description"] == "Recipe of a: recipe of a" and one["runs"][0]["recipe"] == "a"
    assert services.model_loso("b") is None
    (folder / "b.loso.json").write_text(json.dumps({"description": "recipe of b", "runs": [{**run, "auc": 0.7}]}))
    both = services.model_loso("pair")
    assert [(r["recipe"], r["auc"]) for r in both["runs"]] == [("a", 0.6), ("b", 0.7)]
    assert "recipe of a" in both["description"] and "recipe of b" in both["description"]
    assert "recipe" not in services.model_loso("b")["runs"][0]


def test_an_index_entry_can_quote_the_recipe_it_continues(ensemble_weights: Path, tmp_path: Path,
                                                          monkeypatch) -> None:
    """A model trained on from another's checkpoint names that recipe's loso.json in the index; an ensemble
    tags those runs with the recipe's name, not the member's."""
    import json
    import shutil

    from mura_core.app import services
    from mura_core.models.weights import read_index, write_index

    folder = shutil.copytree(ensemble_weights, tmp_path / "w")
    monkeypatch.setenv("MURA_WEIGHTS_DIR", str(folder))
    run = {"held_out": "S", "trained_on": ["T"], "auc": 0.6}
    (folder / "a.loso.json").write_text(json.dumps({"description": "recipe of a", "runs": [run]}))
    (folder / "first_cycle.loso.json").write_text(json.dumps({"description": "recipe b continues",
                                                              "runs": [{**run, "auc": 0.5}]}))
    index = read_index(folder)
    index["models"]["b"]["loso"] = "first_cycle.loso.json"
    write_index(index, folder)
    continued = services.model_loso("b")
    assert continued["description"] == "Recipe of first_cycle: recipe b continues"
    assert continued["runs"][0]["recipe"] == "first_cycle"
    assert "recipe" not in services.model_loso("a")["runs"][0]
    assert [(r["recipe"], r["auc"]) for r in services.model_loso("pair")["runs"]] == [("a", 0.6), ("first_cycle", 0.5)]


def test_the_app_predictor_follows_the_index_on_maps(tmp_path: Path, monkeypatch) -> None:
    """The app's cached Predictor shows the maps the index names (members and default method), as the CLI's does:
    the Study viewer's CAM method starts on the index's default."""
    from mura_core.app import services

    folder = ensemble_default_folder(tmp_path / "weights", maps_from=["b"], default_cam={"pair": "hirescam"})
    monkeypatch.setenv("MURA_WEIGHTS_DIR", str(folder))
    predictor = services.get_predictor("pair")
    assert [m.name for m in predictor.map_members] == ["b"] and predictor.default_cam == "hirescam"
    assert services.cam_methods("pair")[1] == "hirescam"
    at = start_app(folder, monkeypatch).switch_page("pages/study_viewer.py").run()
    assert not at.exception, at.exception
    assert at.selectbox(key="viewer_cam").value == "hirescam"


def test_the_viewer_starts_each_model_at_its_own_default_map(tmp_path: Path, monkeypatch) -> None:
    """Switching models moves the CAM method to the new model's default (its card names it); the reader's own
    choice holds while that model stays selected."""
    folder = ensemble_default_folder(tmp_path / "weights", default_cam={"pair": "hirescam", "a": "gradcam"})
    at = start_app(folder, monkeypatch).switch_page("pages/study_viewer.py").run()
    assert at.selectbox(key="viewer_cam").value == "hirescam"
    at.selectbox(key="sidebar_model").set_value("a").run()
    assert not at.exception, at.exception
    assert at.selectbox(key="viewer_cam").value == "gradcam"
    at.selectbox(key="viewer_cam").set_value("layercam").run()
    at.run()
    assert at.selectbox(key="viewer_cam").value == "layercam"
    at.selectbox(key="sidebar_model").set_value("pair").run()
    assert at.selectbox(key="viewer_cam").value == "hirescam"
