"""The scoring forward leaves each view's pooled features, so the scope heads need no second forward."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fixtures.score import grey_image, weights_folder

from mura_core.data.studies import View
from mura_core.explain.features import predictor_features
from mura_core.explain.predictor import Predictor
from mura_core.explain.triage import view_features

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def predictor(tmp_path_factory) -> Predictor:
    weights = weights_folder(tmp_path_factory.mktemp("w"), {"tiny": "mobilenet_v2"}, default="tiny")
    return Predictor.from_weights("tiny", device="cpu", weights_dir=weights)


def _views() -> list[View]:
    from mura_core.app.views import to_png_bytes

    return [View(f"v{i}.png", data=to_png_bytes(grey_image(50 + 7 * i, 60, seed=i, square=(5 + i, 8, 12))))
            for i in range(3)] + [View("broken.png", data=b"not an image")]


@pytest.mark.parametrize("cam,tta", [(None, False), ("gradcam", False), (None, True), ("cam-ms", False),
                                     ("cam-ms", True), ("gradcam", True), ("cam-zoom", False),
                                     ("cam-zoom", True)])
def test_scoring_features_equal_a_separate_feature_pass(predictor: Predictor, cam: str | None, tta: bool):
    result = predictor.predict_study(_views(), cam=cam, tta=tta)
    good = [v for v in result.views if v.probability is not None]
    assert len(good) == 3 and result.views[3].features is None
    separate = predictor_features(predictor, [v.input_image for v in good])
    assert np.allclose(np.stack([v.features for v in good]), separate, atol=1e-5)


def test_view_features_run_no_forward_when_kept(predictor: Predictor):
    result = predictor.predict_study(_views())
    calls: list[int] = []
    handle = predictor.members[0].model.register_forward_hook(lambda *_: calls.append(1))
    try:
        kept = view_features(predictor, result.views[:3])
        assert calls == []                                       # taken from the scoring forward
        fresh = view_features(predictor, [v.__class__(v.name, image=v.image) for v in result.views[:3]])
        assert calls == [1]                                      # a result without them: one feature pass
    finally:
        handle.remove()
    assert np.allclose(kept, fresh, atol=1e-5)


def test_slow_methods_only_leave_no_features(predictor: Predictor):
    batches = predictor.prepare([grey_image(40, 40, seed=1)])
    prob, maps, features = predictor.run_batches_features(batches, [])
    assert features is not None and features.shape[0] == 1 and prob.shape == (1,)
    from mura_core.explain.cams import SLOW_METHODS

    slow = sorted(m for m in SLOW_METHODS if m in predictor.cam_methods())[:1]
    if slow:
        assert predictor.run_batches_features(batches, slow)[2] is None


def test_multilayer_maps_run_one_view_at_a_time_on_the_cpu_with_the_same_numbers(predictor: Predictor):
    """The whole-network backward's graph (the app's peak memory) holds one view, not the study."""
    from mura_core.explain.cams import MULTILAYER_METHODS

    method = sorted(MULTILAYER_METHODS & set(predictor.cam_methods()))[0]
    images = [grey_image(50 + 7 * i, 60, seed=i, square=(5 + i, 8, 12)) for i in range(3)]
    whole_prob, whole_maps = predictor.run_batches_many(predictor.prepare(images), [method])
    sizes: list[int] = []
    handle = predictor.members[0].model.register_forward_hook(lambda _m, x, _o: sizes.append(int(x[0].shape[0])))
    try:
        prob, maps = predictor.predict_images(images, cam=method)
    finally:
        handle.remove()
    assert sizes and set(sizes) == {1}                               # never more than one view per forward
    assert predictor.chunk_size(method, 3) == 1 and predictor.chunk_size("gradcam", 3) == 3
    assert np.allclose(prob, whole_prob, atol=1e-5)
    combined = [predictor.combine_maps(whole_maps[method], i, img.shape) for i, img in enumerate(images)]
    assert all(np.allclose(a, b, atol=1e-4) for a, b in zip(maps, combined))
