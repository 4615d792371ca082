"""Issue 7: scoring with heat maps does not leak (hooks, autograd graphs, cached results).

Resident memory (psutil RSS) is measured after a warm-up and again after many predictions, with
`gc.collect()` before each reading; it must grow by less than 100 MB. The model is a 64-px random
MobileNetV2 (classic CAM and gradient methods both available) on small images, so the test measures
what is kept between calls, not what one call needs.
"""
from __future__ import annotations

import gc
from pathlib import Path

import psutil
import pytest

from fixtures.build import dicom_bytes
from fixtures.harden import good_png, tiny_checkpoint, tiny_weights_dir
from mura_core.data.studies import Study, View

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LIMIT_MB = 100.0
RUNS = 200
METHODS = ("cam", "gradcam", "hirescam")


def rss_mb() -> float:
    """This process's resident memory in MB, after a full garbage collection."""
    gc.collect()
    return psutil.Process().memory_info().rss / 1e6


def _study() -> Study:
    """A PNG, a DICOM and a broken file: the success and the error paths both run every time."""
    return Study("mem", (View("a.png", data=good_png(seed=1)),
                         View("b.dcm", data=dicom_bytes(rows=64, cols=48)),
                         View("broken.png", data=b"\x89PNG\r\n\x1a\n" + bytes(64))))


@pytest.mark.slow
def test_200_predictions_with_heat_maps_do_not_grow_memory(tmp_path: Path):
    """200 `predict_study` calls cycling cam / gradcam / hirescam grow RSS by < 100 MB and leave no
    hooks behind."""
    from mura_core.models.checkpoints import load_checkpoint
    from mura_core.explain.predictor import Predictor

    path, sha = tiny_checkpoint(tmp_path, arch="mobilenet_v2")
    predictor = Predictor(load_checkpoint(path, expected_sha256=sha), device="cpu")
    study = _study()
    for i in range(20):  # warm-up: allocator pools, oneDNN kernels, lazy imports
        predictor.predict_study(study, cam=METHODS[i % 3])
    before = rss_mb()
    for i in range(RUNS):
        result = predictor.predict_study(study, cam=METHODS[i % 3])
        assert result.scored == 2 and result.views[0].heatmap is not None
    del result
    after = rss_mb()
    print(f"\nRSS after warm-up {before:.1f} MB, after {RUNS} predictions {after:.1f} MB, "
          f"growth {after - before:+.1f} MB")
    assert after - before < LIMIT_MB
    model = predictor.members[0].model
    assert sum(len(m._forward_hooks) for m in model.modules()) == 0


@pytest.mark.slow
def test_app_result_cache_stays_bounded_over_many_studies(tmp_path: Path):
    """200 different uploaded studies through `app_state.score_study` (the viewer's path): the shared
    result cache keeps at most its bound and RSS grows by < 100 MB."""
    folder, name = tiny_weights_dir(tmp_path / "weights", arch="mobilenet_v2")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MURA_WEIGHTS_DIR", str(folder))
        from mura_core.app import services as app_state

        cache = app_state.result_cache()
        cache.clear()

        def upload(i: int) -> Study:
            return Study(f"up{i}", (View(f"u{i}.png", data=good_png(seed=1000 + i)),))

        for i in range(20):
            app_state.score_study(name, upload(i), cam="cam")
        before = rss_mb()
        for i in range(20, 20 + RUNS):
            result, cached = app_state.score_study(name, upload(i), cam="cam")
            assert not cached and result.views[0].heatmap is not None
        del result
        after = rss_mb()
        print(f"\nRSS after warm-up {before:.1f} MB, after {RUNS} distinct studies {after:.1f} MB, "
              f"growth {after - before:+.1f} MB; cache holds {len(cache)} of max {cache.max_entries}")
        assert len(cache) == cache.max_entries
        assert after - before < LIMIT_MB
        cache.clear()
