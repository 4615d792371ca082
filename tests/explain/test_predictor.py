"""Tests for mura_core.explain.predictor: batching, errors, thresholds, aggregation, TTA, ensembles, threads."""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures.score import ensemble_default_folder, grey_image, tiny_checkpoint, weights_folder, write_png

from mura_core.models.checkpoints import load_checkpoint
from mura_core.explain.cams import DEFAULT_CAM, FALLBACK_CAM, ExplainError
from mura_core.explain.predictor import Predictor, StudyResult, study_probability
from mura_core.imaging.preprocess import PreprocessConfig, to_model_input
from mura_core.data.studies import BodyPart, Study, View

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def ckpt_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ckpt")
    tiny_checkpoint(folder / "mob.pt", "mobilenet_v2", thresholds={"default": 0.5, "WRIST": 0.2, "ELBOW": 0.9})
    tiny_checkpoint(folder / "shallow.pt", "shallow_cnn", seed=1, thresholds={"default": 0.4, "WRIST": 0.3})
    return folder


@pytest.fixture(scope="module")
def predictor(ckpt_dir) -> Predictor:
    return Predictor(load_checkpoint(ckpt_dir / "mob.pt"), device="cpu")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("imgs")
    return [write_png(folder / f"v{i}.png", grey_image(40 + 10 * i, 50 + 7 * i, seed=i)) for i in range(3)]


def _views(paths) -> list[View]:
    return [View(p.name, p) for p in paths]


def _hooks(model) -> int:
    return sum(len(m._forward_hooks) + len(m._backward_hooks) for m in model.modules())


def test_scores_views_and_study_mean(predictor, images):
    result = predictor.predict_study(_views(images))
    assert isinstance(result, StudyResult) and result.model_name == "mob"
    probs = [v.probability for v in result.views]
    assert all(0.0 < p < 1.0 for p in probs)
    assert result.probability == pytest.approx(np.mean(probs))
    assert result.driving_view == int(np.argmax(probs))
    assert result.body_part == "UNKNOWN" and result.threshold == 0.5
    assert result.abnormal == (result.probability >= 0.5)
    assert all(v.heatmap is None and v.peak is None for v in result.views)
    assert [v.image.shape for v in result.views] == [(40, 50), (50, 57), (60, 64)]


def test_batched_scores_equal_single_view_scores(predictor, images):
    together = predictor.predict_study(_views(images))
    for view, expected in zip(_views(images), together.views):
        alone = predictor.predict_study([view])
        assert alone.views[0].probability == pytest.approx(expected.probability, abs=1e-5)


def test_max_aggregate_and_validation(predictor, images):
    result = predictor.predict_study(_views(images), aggregate="max")
    assert result.probability == pytest.approx(max(v.probability for v in result.views))
    assert result.aggregate == "max"
    with pytest.raises(ValueError):
        predictor.predict_study(_views(images), aggregate="median")
    assert study_probability([0.2, 0.4], "mean") == pytest.approx(0.3)
    assert study_probability([], "max") is None


def test_body_part_threshold_from_card(predictor, images):
    views = _views(images)
    assert predictor.predict_study(views, body_part="wrist").threshold == 0.2
    assert predictor.predict_study(views, body_part=BodyPart.ELBOW).threshold == 0.9
    assert predictor.predict_study(views, body_part="HAND").threshold == 0.5  # not in card: default
    study = Study("s1", tuple(views), body_part=BodyPart.ELBOW)
    r = predictor.predict_study(study)
    assert r.body_part == "ELBOW" and r.threshold == 0.9
    assert r.abnormal == (r.probability >= 0.9)
    assert predictor.predict_study(study, body_part="WRIST").body_part == "WRIST"


def test_unreadable_views_reported_rest_scored(predictor, images, tmp_path):
    views = _views(images[:2]) + [View("broken.png", data=b"nonsense"), View("gone.png", tmp_path / "gone.png")]
    result = predictor.predict_study(views, cam="auto")
    assert result.cam == DEFAULT_CAM  # "auto" resolves to the CAM table's default
    assert [v.probability is None for v in result.views] == [False, False, True, True]
    errors = dict(result.errors)
    assert set(errors) == {"broken.png", "gone.png"}
    assert "not an image" in errors["broken.png"] and "not found" in errors["gone.png"]
    assert result.scored == 2
    assert result.probability == pytest.approx(np.mean([v.probability for v in result.views[:2]]))
    assert result.views[2].heatmap is None


def test_nothing_readable(predictor):
    result = predictor.predict_study([View("a.png", data=b"x"), View("b.png", data=b"")])
    assert result.probability is None and result.abnormal is None and result.driving_view is None
    assert len(result.errors) == 2


@pytest.mark.parametrize("cam", ["cam", "gradcam", "auto"])
def test_heatmaps_at_original_size_with_peaks(predictor, images, cam):
    scores_only = predictor.predict_study(_views(images))
    result = predictor.predict_study(_views(images), cam=cam)
    for view, plain in zip(result.views, scores_only.views):
        assert view.heatmap.shape == view.image.shape
        assert view.heatmap.dtype == np.float32 and 0 <= view.heatmap.min() and view.heatmap.max() <= 1
        assert view.peak is not None and all(0 <= c <= 1 for c in view.peak)
        assert view.probability == pytest.approx(plain.probability, abs=1e-5)  # same numbers as score-only
    assert _hooks(predictor.members[0].model) == 0


def test_deterministic(predictor, images):
    a = predictor.predict_study(_views(images), cam="cam")
    b = predictor.predict_study(_views(images), cam="cam")
    assert [v.probability for v in a.views] == [v.probability for v in b.views]
    for va, vb in zip(a.views, b.views):
        np.testing.assert_array_equal(va.heatmap, vb.heatmap)


def test_tta_averages_original_and_flipped(predictor, images):
    result = predictor.predict_study(_views(images), tta=True)
    config = predictor.members[0].config
    model = predictor.members[0].model
    from mura_core.imaging.decode import decode_view

    for view, path in zip(result.views, images):
        x = to_model_input(decode_view(View(path.name, path)).pixels, config)[None]
        with torch.inference_mode():
            p = torch.sigmoid(model(torch.cat([x, torch.flip(x, dims=[-1])]))[:, 0]).numpy()
        assert view.probability == pytest.approx(float(p.mean()), abs=1e-5)
    with_maps = predictor.predict_study(_views(images), tta=True, cam="cam")
    assert all(v.heatmap.shape == v.image.shape for v in with_maps.views)


def test_an_unflipped_member_scores_the_plain_view_while_the_others_flip(ckpt_dir, images):
    """`unflipped`: with the flip on, that member's probability and map are its plain view's; the other member's
    are its flipped average; flip off, the ensemble equals the plain one."""
    a, b = load_checkpoint(ckpt_dir / "mob.pt"), load_checkpoint(ckpt_dir / "shallow.pt")
    mixed = Predictor([a, b], device="cpu", unflipped=["shallow"], tta=True)
    assert mixed.unflipped_indexes == {1}
    flipped_a = Predictor(a, device="cpu").predict_study(_views(images), tta=True)
    plain_b = Predictor(b, device="cpu").predict_study(_views(images))
    result = mixed.predict_study(_views(images))
    for v, va, vb in zip(result.views, flipped_a.views, plain_b.views):
        assert v.probability == pytest.approx((va.probability + vb.probability) / 2, abs=1e-5)
    plain = Predictor([a, b], device="cpu").predict_study(_views(images))
    np.testing.assert_allclose([v.probability for v in mixed.predict_study(_views(images), tta=False).views],
                               [v.probability for v in plain.views], atol=1e-6)
    maps_only_b = Predictor([a, b], device="cpu", unflipped=["shallow"], maps_from=["shallow"], tta=True)
    with_map = maps_only_b.predict_study(_views(images), cam="gradcam")
    plain_map = Predictor(b, device="cpu").predict_study(_views(images), cam="gradcam")
    for v, vb in zip(with_map.views, plain_map.views):
        np.testing.assert_allclose(v.heatmap, vb.heatmap, atol=1e-5)
    with pytest.raises(ValueError, match="unflipped names nope"):
        Predictor([a, b], device="cpu", unflipped=["nope"])


def test_the_models_own_flip_applies_unless_a_call_says_otherwise(ckpt_dir, images):
    """`Predictor(tta=True)`: calls that leave tta None score with the flip, and cam-ms's map and scores equal
    those of the flip done by hand (its mirror pass is the flip's forward)."""
    flipping = Predictor(load_checkpoint(ckpt_dir / "mob.pt"), device="cpu", tta=True)
    plain = Predictor(load_checkpoint(ckpt_dir / "mob.pt"), device="cpu")
    assert flipping.resolve_tta(None) and not flipping.resolve_tta(False) and not plain.resolve_tta(None)
    by_default = flipping.predict_study(_views(images))
    explicit = plain.predict_study(_views(images), tta=True)
    assert by_default.tta and explicit.tta and not plain.predict_study(_views(images)).tta
    np.testing.assert_allclose([v.probability for v in by_default.views], [v.probability for v in explicit.views])
    switched_off = flipping.predict_study(_views(images), tta=False)
    assert not switched_off.tta
    np.testing.assert_allclose([v.probability for v in switched_off.views],
                               [v.probability for v in plain.predict_study(_views(images)).views])
    with_map = flipping.predict_study(_views(images), cam="cam-ms")
    np.testing.assert_allclose([v.probability for v in with_map.views], [v.probability for v in explicit.views],
                               atol=1e-6)
    for flipped, unflipped in zip(with_map.views, plain.predict_study(_views(images), cam="cam-ms").views):
        np.testing.assert_allclose(flipped.heatmap, unflipped.heatmap, atol=1e-6)


def test_default_cam_and_methods(ckpt_dir):
    mob = Predictor(load_checkpoint(ckpt_dir / "mob.pt"), device="cpu")
    shallow = Predictor(load_checkpoint(ckpt_dir / "shallow.pt"), device="cpu")
    assert mob.default_cam == DEFAULT_CAM and "cam" in mob.cam_methods()
    assert DEFAULT_CAM == "cam" and shallow.default_cam == FALLBACK_CAM and "cam" not in shallow.cam_methods()
    with pytest.raises(ExplainError):
        shallow.predict_study([View("x", data=b"x")], cam="cam")
    with pytest.raises(ExplainError):
        mob.predict_study([View("x", data=b"x")], cam="bogus")


def test_ensemble_maps_from_one_member(ckpt_dir, images):
    """maps_from: scores average every member, the heat maps are the named member's alone (and its default)."""
    a, b = load_checkpoint(ckpt_dir / "mob.pt"), load_checkpoint(ckpt_dir / "shallow.pt")
    ens = Predictor([a, b], device="cpu", maps_from=["mob"])
    alone = Predictor(a, device="cpu").predict_study(_views(images), cam="auto")
    rb = Predictor(b, device="cpu").predict_study(_views(images))
    r = ens.predict_study(_views(images), cam="auto")
    assert [m.name for m in ens.map_members] == ["mob"] and r.cam == DEFAULT_CAM == ens.default_cam
    assert "cam" in ens.cam_methods()  # the shallow member (no pooled head) no longer limits the methods
    for v, va, vb in zip(r.views, alone.views, rb.views):
        assert v.probability == pytest.approx((va.probability + vb.probability) / 2, abs=1e-5)
        np.testing.assert_allclose(v.heatmap, va.heatmap, atol=1e-6)
    with pytest.raises(ValueError, match="nope"):
        Predictor([a, b], device="cpu", maps_from=["nope"])


def test_ensemble_averages_members(ckpt_dir, images):
    a, b = load_checkpoint(ckpt_dir / "mob.pt"), load_checkpoint(ckpt_dir / "shallow.pt")
    ens = Predictor([a, b], device="cpu")
    ra = Predictor(a, device="cpu").predict_study(_views(images))
    rb = Predictor(b, device="cpu").predict_study(_views(images))
    r = ens.predict_study(_views(images), cam="auto")
    assert r.cam == "auto"  # the members' defaults differ (mob: classic CAM; shallow has no pooled head: Grad-CAM)
    for v, va, vb in zip(r.views, ra.views, rb.views):
        assert v.probability == pytest.approx((va.probability + vb.probability) / 2, abs=1e-5)
        assert v.heatmap.shape == v.image.shape and v.heatmap.max() == pytest.approx(1.0, abs=1e-3)
    assert ens.is_ensemble and ens.name == "mob+shallow"
    # thresholds: mean over keys shared by both members
    assert ens.thresholds == {"default": pytest.approx(0.45), "WRIST": pytest.approx(0.25)}
    assert ens.default_cam == FALLBACK_CAM


def test_from_weights_index_and_ensemble(tmp_path, images):
    folder = weights_folder(tmp_path / "w", {"m1": "mobilenet_v2", "m2": "shallow_cnn"}, default="m1",
                            ensembles={"both": ["m1", "m2"]})
    single = Predictor.from_weights(None, device="cpu", weights_dir=folder)
    assert single.name == "m1" and not single.is_ensemble and len(single.sha256) == 64
    both = Predictor.from_weights("both", device="cpu", weights_dir=folder)
    assert both.name == "both" and len(both.members) == 2
    assert both.predict_study(_views(images)).probability is not None


def test_an_ensemble_named_as_the_default_loads_whole(tmp_path, images):
    """The index's default may be an ensemble: the default Predictor is then every member, not the first."""
    default = Predictor.from_weights(None, device="cpu", weights_dir=ensemble_default_folder(tmp_path))
    assert default.name == "pair" and [m.name for m in default.members] == ["a", "b"]
    assert default.thresholds == {"default": pytest.approx(0.4), "WRIST": pytest.approx(0.5)}
    assert default.predict_study(_views(images)).probability is not None
    assert [m.name for m in default.map_members] == ["a", "b"]  # no "ensemble_maps_from": every member's maps
    assert default.unflipped_indexes == frozenset()  # no "ensemble_unflipped": every member flips
    skipping = Predictor.from_weights(None, device="cpu",
                                      weights_dir=ensemble_default_folder(tmp_path / "skip", unflipped=["b"]))
    assert skipping.unflipped_indexes == {1}


def test_a_model_can_name_its_own_default_map(ckpt_dir, images):
    """default_cam: "auto" means the named method where every map member supports it, else the library rule."""
    mob = Predictor(load_checkpoint(ckpt_dir / "mob.pt"), device="cpu", default_cam="cam-ms")
    assert mob.default_cam == "cam-ms" and mob.resolve_cam("auto") == "cam-ms"
    auto = mob.predict_study(_views(images), cam="auto")
    named = mob.predict_study(_views(images), cam="cam-ms")
    assert auto.cam == "cam-ms"
    for a, b in zip(auto.views, named.views):
        np.testing.assert_allclose(a.heatmap, b.heatmap, atol=1e-6)
    shallow = Predictor(load_checkpoint(ckpt_dir / "shallow.pt"), device="cpu", default_cam="cam-ms")
    assert shallow.default_cam == FALLBACK_CAM == shallow.predict_study(_views(images), cam="auto").cam


def test_multiscale_cam_keeps_the_scope_features_of_every_view(predictor, images):
    """The scope check's pooled features come from the scoring forward: cam-ms must run it over every view at once."""
    plain = predictor.predict_study(_views(images), cam="cam")
    multi = predictor.predict_study(_views(images), cam="cam-ms")
    for a, b in zip(plain.views, multi.views):
        assert a.features is not None and b.features is not None
        np.testing.assert_allclose(a.features, b.features, atol=1e-5)
        assert a.probability == pytest.approx(b.probability, abs=1e-6)


def test_the_index_names_default_maps(tmp_path):
    folder = ensemble_default_folder(tmp_path, default_cam={"pair": "hirescam", "b": "cam-ms"})
    assert Predictor.from_weights("pair", device="cpu", weights_dir=folder).default_cam == "hirescam"
    assert Predictor.from_weights(None, device="cpu", weights_dir=folder).default_cam == "hirescam"
    assert Predictor.from_weights("a", device="cpu", weights_dir=folder).default_cam == FALLBACK_CAM
    assert Predictor.from_weights("b", device="cpu", weights_dir=folder).default_cam == FALLBACK_CAM  # no pooled head


def test_an_indexed_ensemble_shows_the_maps_its_index_names(tmp_path, images):
    chosen = Predictor.from_weights("pair", device="cpu",
                                    weights_dir=ensemble_default_folder(tmp_path, maps_from=["b"]))
    assert [m.name for m in chosen.members] == ["a", "b"] and [m.name for m in chosen.map_members] == ["b"]
    result = chosen.predict_study(_views(images), cam="gradcam")
    assert all(v.heatmap.shape == v.image.shape for v in result.views)


def test_threads_share_one_predictor(predictor, tmp_path):
    paths = [write_png(tmp_path / f"t{i}.png", grey_image(30 + i, 40, seed=100 + i, square=(5, 5 + i, 8)))
             for i in range(8)]
    methods = ["cam", "gradcam", None, "hirescam"] * 2
    expected = [predictor.predict_study([View(p.name, p)], cam=m) for p, m in zip(paths, methods)]
    got: list = [None] * 8
    barrier = threading.Barrier(8)

    def work(i: int) -> None:
        barrier.wait()
        got[i] = predictor.predict_study([View(paths[i].name, paths[i])], cam=methods[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for e, g in zip(expected, got):
        assert g.views[0].probability == e.views[0].probability
        if e.views[0].heatmap is not None:
            np.testing.assert_array_equal(g.views[0].heatmap, e.views[0].heatmap)
    assert _hooks(predictor.members[0].model) == 0


def test_prepare_uses_card_preprocessing(predictor):
    img = np.random.default_rng(0).random((30, 20)).astype(np.float32)
    (config, batch), = predictor.prepare([img]).items()
    assert config == PreprocessConfig(64, predictor.card.mean, predictor.card.std)
    assert batch.shape == (1, 3, 64, 64)


def test_card_temperature_calibrates_probabilities_and_the_threshold_reason_says_why(tmp_path: Path) -> None:
    tiny_checkpoint(tmp_path / "t.pt", thresholds={"default": 0.4, "WRIST": 0.3})
    image = grey_image(64, 64, seed=3)
    plain = Predictor(load_checkpoint(tmp_path / "t.pt"), device="cpu")
    hot = load_checkpoint(tmp_path / "t.pt")
    hot.card.temperature = 2.0
    calibrated = Predictor(hot, device="cpu")
    p1 = float(plain.predict_images([image])[0][0])
    p2 = float(calibrated.predict_images([image])[0][0])
    logit = np.log(p1 / (1 - p1))
    assert p2 == pytest.approx(1 / (1 + np.exp(-logit / 2.0)), rel=1e-5)
    assert "wrist's own threshold 30.0%" in plain.threshold_reason(BodyPart.WRIST)
    assert "too few" in plain.threshold_reason(BodyPart.HAND_WRIST_FOREARM)
    assert "no body part given" in plain.threshold_reason(None)
