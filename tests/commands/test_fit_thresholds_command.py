"""`python -m mura_core fit-thresholds`: an ensemble's own thresholds, recorded in the index and applied."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.fixtures.score import ensemble_default_folder, tiny_manifest

from mura_core.commands.fit_thresholds import cli_main
from mura_core.evaluation.cards import card_text
from mura_core.evaluation.ensemble_thresholds import fit_from_report
from mura_core.explain.predictor import ENSEMBLE_THRESHOLDS_SOURCE, Predictor


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    return ensemble_default_folder(tmp_path / "weights", tiny_manifest(tmp_path / "data", corrupt=0))


def test_the_fitted_thresholds_go_to_the_index_the_predictor_and_the_card(folder: Path, capsys) -> None:
    before = Predictor.from_weights("pair", device="cpu", weights_dir=folder)
    assert before.thresholds_source == "mean of the ensemble members' model-card thresholds"
    assert cli_main(["pair", "--weights-dir", str(folder)]) == 0
    expected = fit_from_report(folder / "pair.report")
    recorded = json.loads((folder / "index.json").read_text())["ensemble_thresholds"]["pair"]
    assert recorded == pytest.approx(expected) and "pair:" in capsys.readouterr().out
    after = Predictor.from_weights("pair", device="cpu", weights_dir=folder)
    assert after.thresholds == pytest.approx(expected) and after.thresholds != pytest.approx(before.thresholds)
    assert after.thresholds_source == ENSEMBLE_THRESHOLDS_SOURCE
    assert Predictor.from_weights("a", device="cpu", weights_dir=folder).thresholds_source.startswith("model card")
    assert "fitted on this ensemble's own valid predictions" in card_text("pair", folder)


def test_a_checkpoint_or_an_ensemble_without_report_is_refused(folder: Path, tmp_path: Path, capsys) -> None:
    assert cli_main(["a", "--weights-dir", str(folder)]) == 2
    assert "not an ensemble" in capsys.readouterr().err
    bare = ensemble_default_folder(tmp_path / "bare")
    assert cli_main(["pair", "--weights-dir", str(bare)]) == 2
    assert "evaluate on the ensemble first" in capsys.readouterr().err
    assert "ensemble_thresholds" not in json.loads((bare / "index.json").read_text())
