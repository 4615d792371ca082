"""The worklist's per-view scope check: the shipped model's fitted heads on the features of the scoring forward.

Uses the shipped default weights (with their heads) and real radiographs from the shared data when present;
a generated photograph in the folder must be flagged, and the forward must run once per batch.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from mura_core.data.sources import open_dataset
from mura_core.evaluation import worklist as wl
from mura_core.explain.heads import predictor_heads
from mura_core.explain.predictor import Predictor
from mura_core.models.devices import CPU_FORWARD_ROWS
from mura_core.explain.triage import triage_study
from mura_core.imaging.synthetic import generate

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def shipped() -> Predictor:
    predictor = Predictor.from_weights(device="cpu")
    if predictor_heads(predictor)[0] is None:
        pytest.skip("the shipped default model has no fitted heads")
    return predictor


@pytest.fixture
def folder(tmp_path: Path, real_radiographs: list[Path]) -> Path:
    """Two studies: XR_WRIST_real (real radiographs) and XR_WRIST_photo (one generated colour photograph)."""
    real, photo = tmp_path / "XR_WRIST_real", tmp_path / "XR_WRIST_photo"
    real.mkdir()
    photo.mkdir()
    for k, path in enumerate(real_radiographs[:2]):
        shutil.copy(path, real / f"view{k}{path.suffix}")
    name, data = generate("photo", 7)
    (photo / name).write_bytes(data)
    return tmp_path


def _count_forwards(predictor: Predictor) -> list[int]:
    calls: list[int] = []
    predictor.members[0].model.register_forward_hook(lambda _m, inputs, _o: calls.append(int(inputs[0].shape[0])))
    return calls


def test_photo_in_a_worklist_folder_gets_a_scope_warning(folder: Path, shipped: Predictor, tmp_path: Path):
    result = wl.score_worklist(folder, predictor=shipped, out=tmp_path / "out", workers=0, batch_size=4,
                               progress=False)
    rows = {r["study"]: r for r in _csv(tmp_path / "out" / "worklist.csv")}
    photo = rows["XR_WRIST_photo"]
    assert "photo_0007.jpg" in photo["scope"] and "outside what this model was trained for" in photo["scope"]
    assert wl.NOT_CHECKED not in {r["scope"] for r in rows.values()}       # every view got a verdict
    assert photo["probability"]                                            # warned, still scored
    assert not any("scope check" in p for p in result.problems)


def test_worklist_verdicts_equal_the_viewers_and_cost_no_second_forward(folder: Path, shipped: Predictor):
    calls = _count_forwards(shipped)
    index = open_dataset(folder)
    views = sum(len(s.views) for s in index.studies)
    rows = {r.study: r for r in wl.score_worklist(folder, predictor=shipped, workers=0, batch_size=2, amp=False,
                                                  progress=False).rows}
    flips = 2 if shipped.tta else 1                                        # the model's own test-time flip
    assert views == 3 and sum(calls) == flips * views                     # each row forwarded once, no second pass
    assert max(calls) <= CPU_FORWARD_ROWS                                  # in the CPU's few-row forwards
    del calls[:]
    for study in index.studies:                                            # the study viewer's own check
        triage = triage_study(shipped, shipped.predict_study(study))
        flagged = [v.name for v, s in zip(study.views, triage.scopes) if s is not None and not s.in_scope]
        assert all(name in rows[study.study_id].scope for name in flagged)
        assert (rows[study.study_id].scope == "in scope") == (not flagged)
    assert sum(calls) == flips * views                                     # triage reused the scoring forward


def test_a_model_without_heads_reads_not_checked_but_dicom_tags_still_count(tmp_path: Path, dicom_factory):
    from fixtures.score import weights_folder

    weights = weights_folder(tmp_path / "w", {"tiny": "mobilenet_v2"}, default="tiny")
    predictor = Predictor.from_weights("tiny", device="cpu", weights_dir=weights)
    (tmp_path / "d" / "a").mkdir(parents=True)
    (tmp_path / "d" / "a" / "chest.dcm").write_bytes(dicom_factory(body_part="CHEST"))
    (tmp_path / "d" / "b").mkdir()
    (tmp_path / "d" / "b" / "hand.png").write_bytes(generate("photo", 1)[1])
    rows = {Path(r.driving_view).name: r for r in wl.score_worklist(tmp_path / "d", predictor=predictor, workers=0,
                                                        progress=False).rows}
    assert "chest radiograph (from the DICOM tags)" in rows["chest.dcm"].scope
    assert rows["hand.png"].scope == wl.NOT_CHECKED                      # no heads: the image is not judged


def _csv(path: Path) -> list[dict[str, str]]:
    import csv

    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))
