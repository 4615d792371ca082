"""Tests for mura_core.evaluation.worklist: every study scored, sorted, resumable, safe on bad files."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest
from fixtures.build import build_mura_tree, dicom_bytes
from fixtures.score import grey_image, tiny_manifest, weights_folder, write_png

from mura_core.data.sources import open_dataset
from mura_core.evaluation import worklist as wl
from mura_core.explain.predictor import Predictor

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    return weights_folder(tmp_path_factory.mktemp("w"), {"tiny": "mobilenet_v2", "other": "shallow_cnn"},
                          default="tiny", thresholds={"default": 0.5, "WRIST": 0.1})


@pytest.fixture(scope="module")
def predictor(weights: Path) -> Predictor:
    return Predictor.from_weights("tiny", device="cpu", weights_dir=weights)


@pytest.fixture
def mura(tmp_path: Path) -> Path:
    root = build_mura_tree(tmp_path, image_size=40)
    for i, png in enumerate(sorted(root.rglob("image*.png"))):   # different images, different scores
        write_png(png, grey_image(40 + 3 * i, 44, seed=i, square=(5 + i, 6, 9)))
    (root / "train/XR_WRIST/patient00003/study1_positive/image1.png").write_bytes(b"broken")  # its only view
    return root


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_every_study_one_row_sorted_and_equal_to_predict_study(mura: Path, predictor: Predictor, tmp_path: Path):
    result = wl.score_worklist(mura, predictor=predictor, out=tmp_path / "out", workers=0, batch_size=4,
                               amp=False, progress=False)
    rows = _csv(tmp_path / "out" / "worklist.csv")
    index = open_dataset(mura)
    assert len(rows) == len(index.studies) == 6 and result.scored_now == 6
    assert [r["rank"] for r in rows] == [str(k) for k in range(1, 7)]
    probs = [float(r["probability"]) for r in rows if r["probability"]]
    assert probs == sorted(probs, reverse=True) and len(probs) == 5
    assert rows[-1]["decision"] == "not scored" and rows[-1]["study"].endswith("patient00003/study1")
    assert "image1.png: not an image" in rows[-1]["unreadable"]
    assert any("image4.png" in p for p in result.problems)    # listed but missing on disk: the reader says so
    for study in index.studies:                                # the same numbers as the viewer's scorer
        row = next(r for r in rows if r["study"] == study.study_id)
        expected = predictor.predict_study(study)
        if expected.probability is None:
            continue
        assert float(row["probability"]) == pytest.approx(expected.probability, abs=1e-5)
        assert row["decision"] == ("abnormal" if expected.abnormal else "normal")
        assert float(row["threshold"]) == pytest.approx(expected.threshold)
        assert row["driving_view"] == expected.views[expected.driving_view].name
        assert row["scope"] == wl.NOT_CHECKED


@pytest.mark.parametrize("native,tolerance,bf16", [(True, 1.0, True), (True, 0.0, False), (False, 1.0, False)])
def test_automatic_bf16_needs_the_hardware_and_a_first_batch_that_agrees(
        monkeypatch, capsys, mura: Path, predictor: Predictor, native: bool, tolerance: float, bf16: bool):
    from mura_core.models import devices

    monkeypatch.setattr(devices, "native_bf16", lambda device: native)
    monkeypatch.setattr(wl, "BF16_TOLERANCE", tolerance)
    result = wl.score_worklist(mura, predictor=predictor, workers=0, batch_size=4, progress=False)
    exact = {r.study: r.probability for r in wl.score_worklist(mura, predictor=predictor, workers=0, batch_size=4,
                                                               amp=False, progress=False).rows}
    scored = [r for r in result.rows if r.probability is not None]
    assert scored and all(r.model == predictor.name + (" (bf16)" if bf16 else "") for r in result.rows)
    for row in scored:
        assert row.probability == pytest.approx(exact[row.study], abs=0.05 if bf16 else 1e-6)
    assert bf16 == any(row.probability != exact[row.study] for row in scored)
    assert ("scoring in float32" in capsys.readouterr().err) == (native and not bf16)


def test_bad_files_are_named_with_their_reason(tmp_path: Path, predictor: Predictor):
    data = tiny_manifest(tmp_path / "m", n_studies=4, corrupt=2)
    result = wl.score_worklist(data, predictor=predictor, out=tmp_path / "out", workers=1, progress=False)
    broken = [r for r in result.rows if r.unreadable]
    assert len(broken) == 2
    assert all("broken" in r.unreadable and "not an image" in r.unreadable for r in broken)
    assert all(r.decision == "not scored" for r in broken) and result.rows[-1] in broken
    assert sum(r.probability is not None for r in result.rows) == 4


def test_interrupted_run_resumes_to_the_same_worklist(mura: Path, predictor: Predictor, tmp_path: Path):
    full = wl.score_worklist(mura, predictor=predictor, out=tmp_path / "full", workers=0, batch_size=2,
                             progress=False)

    def stop_after_two_batches(done: int, total: int) -> None:
        if done >= 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        wl.score_worklist(mura, predictor=predictor, out=tmp_path / "cut", workers=0, batch_size=2,
                          progress=stop_after_two_batches)
    assert not (tmp_path / "cut" / "worklist.csv").exists()
    partial = tmp_path / "cut" / "partial" / "rank0-of-1.csv"
    first = len(wl.read_rows(partial))
    assert 0 < first < 6
    with partial.open("a") as handle:                          # a line half-written when the run was killed
        handle.write("patient99999/study1,0.9")
    resumed = wl.score_worklist(mura, predictor=predictor, out=tmp_path / "cut", workers=0, batch_size=2,
                                progress=False)
    assert resumed.resumed == first and resumed.scored_now == 6 - first
    assert [(r.study, r.probability) for r in resumed.rows] == [(r.study, r.probability) for r in full.rows]
    assert len(wl.read_rows(partial)) == 6


def test_another_model_does_not_resume(mura: Path, predictor: Predictor, weights: Path, tmp_path: Path):
    wl.score_worklist(mura, predictor=predictor, out=tmp_path / "o", workers=0, progress=False)
    other = Predictor.from_weights("other", device="cpu", weights_dir=weights)
    again = wl.score_worklist(mura, predictor=other, out=tmp_path / "o", workers=0, progress=False)
    assert again.resumed == 0 and again.scored_now == 6
    assert {r.model.removesuffix(" (bf16)") for r in again.rows} == {"other"}


def test_scope_column(tmp_path: Path, predictor: Predictor):
    rows = [{"image": f"images/{p}.png", "split": "valid", "label": "1", "body_part": p, "group": p, "boxes": "[]"}
            for p in ("WRIST", "LEG")]
    from fixtures.build import build_manifest_folder

    build_manifest_folder(tmp_path / "d", rows)
    for p in ("WRIST", "LEG"):
        write_png(tmp_path / "d" / "images" / f"{p}.png", grey_image(40, 40))
    plain = {r.body_part: r.scope for r in wl.score_worklist(tmp_path / "d", predictor=predictor, workers=0,
                                                             progress=False).rows}
    assert plain["WRIST"] == "not checked" and plain["LEG"].startswith("out of scope: leg")
    checked = {r.body_part: r.scope for r in wl.score_worklist(
        tmp_path / "d", predictor=predictor, workers=0, progress=False,
        scope=lambda image: "too dark" if image.mean() < 0.9 else None).rows}
    assert checked["WRIST"] == "images/WRIST.png: too dark"
    bright = wl.score_worklist(tmp_path / "d", predictor=predictor, workers=0, progress=False,
                               scope=lambda image: None).rows
    assert {r.body_part: r.scope for r in bright}["WRIST"] == "in scope"


def test_dicom_folder_grouped_by_study_and_no_identifying_tags(tmp_path: Path, predictor: Predictor):
    import io

    import pydicom

    for k, uid in enumerate(["1.2.826.1", "1.2.826.1", "1.2.826.2"]):
        ds = pydicom.dcmread(io.BytesIO(dicom_bytes(rows=48, cols=40)))
        ds.StudyInstanceUID = uid
        ds.save_as(tmp_path / "in" / f"v{k}.dcm" if (tmp_path / "in").mkdir(exist_ok=True) or True else None,
                   enforce_file_format=True)
    result = wl.score_worklist(tmp_path / "in", predictor=predictor, out=tmp_path / "o", workers=0, progress=False)
    assert sorted(r.views for r in result.rows) == [1, 2]
    assert all(r.body_part == "WRIST" and r.threshold == pytest.approx(0.1) for r in result.rows)
    text = (tmp_path / "o" / "worklist.csv").read_text()
    assert "SECRET" not in text and "1.2.826" not in text and "19000101" not in text


def test_a_pipe_in_a_plain_folder_is_refused_by_name(tmp_path: Path, predictor: Predictor):
    import os

    write_png(tmp_path / "in" / "s1" / "good.png", grey_image(40, 40))
    os.mkfifo(tmp_path / "in" / "s1" / "pipe.png")
    (tmp_path / "in" / "s2").mkdir()
    (tmp_path / "in" / "s2" / "empty.jpg").write_bytes(b"")
    result = wl.score_worklist(tmp_path / "in", predictor=predictor, workers=1, progress=False)
    rows = {r.study: r for r in result.rows}
    assert rows["s1"].scored == 1 and "pipe.png: not a regular file" in rows["s1"].unreadable
    assert rows["s2"].decision == "not scored" and "s2/empty.jpg: empty file" in rows["s2"].unreadable


def test_a_model_that_flips_by_default_is_scored_as_the_viewer_scores_it(mura: Path, weights: Path, tmp_path: Path):
    """The worklist uses the model's own test-time flip, like the viewer, and its model column says so."""
    flipping = Predictor.from_weights("other", device="cpu", weights_dir=weights)
    flipping.tta = True
    wl.score_worklist(mura, predictor=flipping, out=tmp_path / "out", workers=0, batch_size=4, amp=False,
                      progress=False)
    rows = [r for r in _csv(tmp_path / "out" / "worklist.csv") if r["probability"]]
    assert rows and all(r["model"] == "other" + wl.FLIP_MARK for r in rows)
    moved = []
    for study in open_dataset(mura).studies:
        row = next((r for r in rows if r["study"] == study.study_id), None)
        if row is not None:
            flipped = flipping.predict_study(study)
            assert flipped.tta and float(row["probability"]) == pytest.approx(flipped.probability, abs=1e-5)
            moved.append(abs(flipped.probability - flipping.predict_study(study, tta=False).probability))
    assert max(moved) > 1e-4  # the flip changed scores: the worklist did not score without it
