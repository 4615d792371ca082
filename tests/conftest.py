"""Shared fixtures: generated images, DICOM files and data folders, plus the real data when present.

Builders live in `tests/fixtures/build.py` (import them as `from fixtures.build import png_bytes`).
"""
from __future__ import annotations

from pathlib import Path

import pytest
from fixtures.build import (
    DEFAULT_MURA_STUDIES,
    build_manifest_folder,
    build_mura_tree,
    dicom_bytes,
    jpeg_bytes,
    png_bytes,
    pydicom_data_file,
)

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent
SHARED_DATA = TESTS_DIR.parents[1] / "shared" / "data" / "bone-fracture-xr"
"""The real bone-fracture-xr data (CC BY 4.0), read in place, never copied."""

REAL_CR_FILES = ("RG3_UNCR.dcm", "RG3_J2KR.dcm", "RG1_UNCR.dcm")
"""Real computed-radiography DICOMs from the `pydicom-data` package (RG3 is an extremity)."""


@pytest.fixture
def png_factory():
    """`png_factory(width, height, mode)` -> PNG bytes."""
    return png_bytes


@pytest.fixture
def jpeg_factory():
    """`jpeg_factory(width, height, mode)` -> JPEG bytes."""
    return jpeg_bytes


@pytest.fixture
def dicom_factory():
    """`dicom_factory(**options)` -> DICOM bytes (see fixtures.build.dicom_bytes)."""
    return dicom_bytes


@pytest.fixture
def grey_png() -> bytes:
    """A 32x24 8-bit grey ramp PNG."""
    return png_bytes(32, 24)


@pytest.fixture
def mura_tree(tmp_path: Path) -> Path:
    """A MURA-v1.1 folder with CSVs, stray files and two missing images (see DEFAULT_MURA_STUDIES)."""
    return build_mura_tree(tmp_path)


@pytest.fixture
def mura_tree_no_csv(tmp_path: Path) -> Path:
    """The same MURA-v1.1 folder without CSVs (read by walking the folders)."""
    return build_mura_tree(tmp_path, with_csv=False)


@pytest.fixture
def mura_studies():
    """The study specs the `mura_tree` fixtures were built from."""
    return DEFAULT_MURA_STUDIES


@pytest.fixture
def manifest_folder(tmp_path: Path) -> Path:
    """A folder with manifest.csv (4 images, 3 studies, boxes) and its images; returns the folder."""
    build_manifest_folder(tmp_path / "manifest_data")
    return tmp_path / "manifest_data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real bone-fracture-xr folder; skips when absent."""
    if not (SHARED_DATA / "manifest.csv").is_file():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def real_radiographs(shared_data: Path) -> list[Path]:
    """A few real radiograph JPEGs (one normal, two abnormal) from the shared data, read in place."""
    import csv

    with (shared_data / "manifest.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    normal = [r for r in rows if r["label"] == "0"][:1]
    abnormal = [r for r in rows if r["label"] == "1"][:2]
    paths = [shared_data / r["image"] for r in normal + abnormal]
    return [p for p in paths if p.is_file()] or pytest.skip("no real images on disk")


@pytest.fixture(params=REAL_CR_FILES)
def real_cr_dicom(request) -> Path:
    """Each real CR DICOM available offline (skips those that are not)."""
    path = pydicom_data_file(request.param)
    if path is None:
        pytest.skip(f"{request.param} not available from pydicom-data")
    return path


@pytest.fixture(autouse=True)
def streamlit_navigation_steady_state(monkeypatch):
    """Run AppTest as a live server runs after its first page load: `st.navigation`, not legacy `pages/` mode.

    AppTest turns Streamlit's legacy `pages/` mode back on before every run; a server leaves it for good
    once app.py has run. The first-visit case (legacy mode, then `app_state.require_app_shell`) is covered
    by the browser tests, which open a page URL first on a fresh server.
    """
    from streamlit.runtime.pages_manager import PagesManager

    original_init = PagesManager.__init__

    def init_without_legacy_mode(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        PagesManager.uses_pages_directory = False

    monkeypatch.setattr(PagesManager, "__init__", init_without_legacy_mode)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch intra-op thread for a test module: tiny models run faster so, and on a shared 2-core
    machine two threads thrash (measured up to ~14x slower)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def int8_weights(tmp_path_factory) -> Path:
    """A weights folder with a tiny CNN (default, quantisable) and a tiny hybrid (not quantisable)."""
    from fixtures.score import weights_folder

    return weights_folder(tmp_path_factory.mktemp("w"), {"tiny": "shallow_cnn", "tok": "hybrid"}, default="tiny",
                          thresholds={"default": 0.5})


@pytest.fixture(scope="module")
def int8_data(tmp_path_factory) -> Path:
    """A tiny manifest with train and valid studies (one corrupt view) for the int8 tests."""
    from fixtures.score import tiny_manifest

    return tiny_manifest(tmp_path_factory.mktemp("m") / "d", n_studies=7, corrupt=1)
