"""The fitted scope check on real images (issue #13): flags generated non-radiographs and FracAtlas lower
limbs, passes upper-limb radiographs, and its measured rates are in the model card.

Runs for every checkpoint (indexed in weights/, or under runs/) whose heads `fit-heads` wrote; skips when
there are none or the shared data is absent. Images come from the held-out half of the valid splits
(never fitted on, never used to calibrate), from generated images of a seed the fit never used, and from
real CR files of pydicom-data (a chest film and a lower leg; skipped when not installed).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mura_core.data.sources import open_dataset
from mura_core.data.studies import BodyPart, View
from mura_core.explain.features import pooled_features
from mura_core.explain.fit_heads import CARD_START, _stable
from mura_core.explain.heads import heads_for
from mura_core.explain.scope import check_scope
from mura_core.imaging.decode import decode_image, decode_view
from mura_core.imaging.preprocess import PreprocessConfig
from mura_core.imaging.synthetic import CATEGORIES, generate
from mura_core.models.checkpoints import load_checkpoint
from mura_core.models.registry import get_arch

REPO = Path(__file__).resolve().parents[2]
DATA = REPO.parent / "shared" / "data"
PER_GROUP = 20
MIN_LOWER_LIMB_FLAGGED = 0.5
"""Measured 99% (lite0 in multi-source training) and 75% (hybrid, trained on bone-fracture-xr only)."""


def _checkpoints() -> list[Path]:
    found = []
    index = REPO / "weights" / "index.json"
    if index.is_file():
        for entry in json.loads(index.read_text()).get("models", {}).values():
            if entry.get("heads_sha256"):
                found.append(REPO / "weights" / entry["file"])
    found += sorted(p.with_name(p.name.replace(".heads.json", ".pt")) for p in (REPO / "runs").glob("*.heads.json"))
    return [p for p in found if p.is_file()]


def _held_out(root: str, want: set[BodyPart]) -> list:
    index = open_dataset(DATA / root, split="valid")
    views = []
    for study in index.studies:
        if BodyPart(study.body_part) in want:
            for view in study.views:
                if _stable("calib:" + f"{root}/{view.path or view.name}") % 2 == 1:
                    views.append(view)
    views.sort(key=lambda v: _stable(str(v.path)))
    return views[:PER_GROUP]


@pytest.fixture(scope="module", params=_checkpoints() or [None], ids=lambda p: getattr(p, "name", "none"))
def scope_of(request):
    if request.param is None:
        pytest.skip("no checkpoint with fitted heads (run python -m mura_core fit-heads)")
    if not (DATA / "FracAtlas").is_dir() or not (DATA / "bone-fracture-xr").is_dir():
        pytest.skip("shared data not present")
    loaded = load_checkpoint(request.param)
    heads, problem = heads_for(request.param, loaded.sha256)
    assert heads is not None, problem
    card = loaded.card
    config = PreprocessConfig(image_size=int(card.image_size), mean=tuple(card.mean), std=tuple(card.std))

    def run(images: list[np.ndarray]) -> np.ndarray:
        feats = pooled_features(loaded.model.eval(), get_arch(card.arch), config, images)
        return np.array([not s.in_scope for s in check_scope(heads, feats, [None] * len(images))])

    run.checkpoint = request.param
    return run


def _flagged_generated(scope_of, categories: tuple[str, ...], per_category: int = 3) -> np.ndarray:
    images = [decode_image(data, name).pixels for c in categories for name, data in
              (generate(c, 900_000 + i) for i in range(per_category))]
    return scope_of(images)


def test_generated_photographs_and_ct_mr_slices_are_flagged(scope_of) -> None:
    flagged = _flagged_generated(scope_of, ("photo", "ct_mr"))
    assert flagged.mean() >= 0.75, flagged


def test_generated_chest_films_and_documents_are_flagged(scope_of) -> None:
    flagged = _flagged_generated(scope_of, ("chest", "document"))
    assert flagged.mean() >= 0.75, flagged


MISSES_REAL_DICOM: dict[tuple[str, str], str] = {
    ("lite2_windows_768_cycle5", "RG1_UNCR.dcm"): "the window model's heads (session 36, fitted at 768 px) miss the "
                                                  "chest CR; the default ensemble scopes with its Lite0 member's",
}
"""(checkpoint, file) -> reason, for fitted heads known to miss a real pydicom-data CR (README, Scope check); strict,
so a refit that catches them fails here until the entry goes. `lite2_320_box` (removed in session 24),
`hybrid_multisource` (removed in session 29), `lite2_windows_768_long` (removed in session 33) and
`lite2_windows_768_cycle4` (removed in session 36) missed the chest CR too."""


@pytest.mark.parametrize("name", ["RG1_UNCR.dcm", "RG3_UNCR.dcm"])
def test_real_dicom_chest_and_leg_are_flagged_from_the_image_alone(scope_of, name: str, request) -> None:
    """Real CR files shipped by pydicom-data (a chest film and a lower leg); the image decides, not the tags."""
    known = MISSES_REAL_DICOM.get((scope_of.checkpoint.stem, name))
    if known:
        request.applymarker(pytest.mark.xfail(strict=True, reason=known))
    data = pytest.importorskip("pydicom.data")
    try:
        path = Path(data.get_testdata_file(name))
    except (OSError, ValueError) as error:
        pytest.skip(f"{name} not installed: {error}")
    if not path.is_file():
        pytest.skip(f"{name} not installed")
    pixels = decode_view(View(name=name, path=path)).pixels
    assert scope_of([pixels]).tolist() == [True]


def test_lower_limb_radiographs_are_flagged(scope_of) -> None:
    views = _held_out("FracAtlas", {BodyPart.LEG, BodyPart.HIP})
    flagged = scope_of([decode_view(v).pixels for v in views])
    assert flagged.mean() >= MIN_LOWER_LIMB_FLAGGED, flagged


def test_upper_limb_radiographs_pass(scope_of) -> None:
    views = _held_out("FracAtlas", {BodyPart.HAND_WRIST_FOREARM, BodyPart.SHOULDER_HUMERUS})
    views += _held_out("bone-fracture-xr", set(BodyPart.known()) | {BodyPart.UNKNOWN})
    flagged = scope_of([decode_view(v).pixels for v in views])
    assert flagged.mean() <= 0.2, flagged


def test_rates_are_in_the_report_and_card(scope_of) -> None:
    checkpoint = scope_of.checkpoint
    report = json.loads(checkpoint.with_name(f"{checkpoint.stem}.heads.json").read_text())
    rates = report["scope_held_out"]
    assert any(k.startswith("upper_limb") for k in rates) and "lower_limb (all) - true alarms" in rates
    assert all(f"generated {c} - true alarms" in rates for c in CATEGORIES)
    assert report["body_part_valid"]["per_class"]
    card = checkpoint.with_suffix(".md")
    if card.is_file():
        assert CARD_START in card.read_text() and "called out of scope" in card.read_text()
