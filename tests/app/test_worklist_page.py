"""AppTest: the Worklist page scores a folder, sorts and filters it, opens a study, offers CSV and report."""
from __future__ import annotations

from pathlib import Path

import pytest
from fixtures.app import build_tiny_weights, open_page
from fixtures.score import tiny_manifest
from streamlit.testing.v1 import AppTest

from mura_core.app import worklist as app_worklist
from mura_core.evaluation.worklist import WorklistRow


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    return build_tiny_weights(tmp_path_factory.mktemp("weights"))


@pytest.fixture
def page(weights: Path, monkeypatch) -> AppTest:
    return open_page(weights, monkeypatch, "pages/worklist.py")


def _score(at: AppTest, folder: Path) -> AppTest:
    at.text_input(key="worklist_path").set_value(str(folder)).run()
    at.button(key="worklist_run").click().run()
    assert not at.exception, at.exception
    return at


def test_scores_sorts_filters_and_offers_downloads(page: AppTest, tmp_path: Path):
    folder = tiny_manifest(tmp_path / "m", n_studies=6, corrupt=1)
    at = _score(page, folder)
    table = at.dataframe[0].value
    assert len(table) == 7
    probs = [p for p in table["probability (%)"] if p == p]
    assert probs == sorted(probs, reverse=True) and len(probs) == 6
    assert table["decision"].iloc[-1] == "not scored" and "not an image" in table["unreadable"].iloc[-1]
    assert [b.proto.label for b in at.get("download_button")] == ["Download worklist.csv (every study)"]
    at.multiselect(key="worklist_decisions").set_value(["not scored"]).run()
    assert len(at.dataframe[0].value) == 1
    at.multiselect(key="worklist_decisions").set_value([]).run()
    at.button(key="worklist_report_make").click().run()
    assert not at.exception, at.exception
    assert "Download the report (HTML)" in [b.proto.label for b in at.get("download_button")]


def test_unreadable_folder_is_a_message(page: AppTest, tmp_path: Path):
    (tmp_path / "empty").mkdir()
    at = _score(page, tmp_path / "empty")
    assert any("not a data set" in e.value for e in at.error)


def test_open_in_viewer_shows_the_study_with_a_report_button(page: AppTest, tmp_path: Path):
    folder = tiny_manifest(tmp_path / "m", n_studies=3, corrupt=0)
    at = _score(page, folder)
    first = at.selectbox(key="worklist_study").value
    at.button(key="worklist_open").click().run()
    assert not at.exception, at.exception
    assert at.title[0].value == "Study viewer"
    assert any(first in i.value for i in at.info)
    assert "Download study report (HTML, printable)" in [b.proto.label for b in at.get("download_button")]


def _row(study: str, p: float | None, part: str, scope: str) -> WorklistRow:
    return WorklistRow(study, p, "not scored" if p is None else ("abnormal" if p > 0.5 else "normal"), 0.5, part,
                       "", p, 1, int(p is not None), scope, "", "unlabelled", "folder", "m", "")


def test_filters_combine():
    rows = [_row("a", 0.9, "WRIST", "not checked"), _row("b", 0.2, "LEG", "out of scope: leg"),
            _row("c", None, "WRIST", "a.png: too dark")]
    assert [r.study for r in app_worklist.filter_rows(rows, body_parts=["WRIST"])] == ["a", "c"]
    assert [r.study for r in app_worklist.filter_rows(rows, scopes=["out of scope"])] == ["b"]
    assert [r.study for r in app_worklist.filter_rows(rows, scopes=["warning"], decisions=["not scored"])] == ["c"]
    assert app_worklist.filter_rows(rows, body_parts=["WRIST"], decisions=["normal"]) == []


def test_shipped_model_checks_every_views_scope(monkeypatch, tmp_path: Path):
    """With the shipped default model's heads, a generated photograph in the folder is flagged and filterable."""
    from mura_core.imaging.synthetic import generate

    (tmp_path / "d" / "XR_HAND_photo").mkdir(parents=True)
    name, data = generate("photo", 5)
    (tmp_path / "d" / "XR_HAND_photo" / name).write_bytes(data)
    at = _score(open_page(Path(__file__).resolve().parents[2] / "weights", monkeypatch, "pages/worklist.py"),
                tmp_path / "d")
    (scope,) = at.dataframe[0].value["scope"]
    assert name in scope and "outside what this model was trained for" in scope
    at.multiselect(key="worklist_scopes").set_value(["warning"]).run()
    assert len(at.dataframe[0].value) == 1
    at.multiselect(key="worklist_scopes").set_value(["not checked"]).run()
    assert len(at.dataframe) == 0 or len(at.dataframe[0].value) == 0
