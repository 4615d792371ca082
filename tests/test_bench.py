"""Smoke tests of mura_core.bench on a tiny random model: the JSON's shape and arithmetic, never timings."""
from __future__ import annotations

import contextlib
import io
import json
import math
import time
from pathlib import Path

import pytest
from fixtures.build import build_manifest_folder

from mura_core import bench
from mura_core.bench import BenchConfig, Subject
from mura_core.explain.cams import FALLBACK_CAM

TINY = ["--random-weights", "--arch", "shallow_cnn", "--image-size", "32", "--quick", "--repeats", "1",
        "--limit", "6", "--profile"]


VALID_ROWS = [
    dict(image=f"images/v{i}.png", split="valid", label=str(i % 2), body_part="WRIST" if i % 2 else "",
         group=f"g{i}", boxes=[[0.2, 0.2, 0.6, 0.6]] if i % 2 else [])
    for i in range(4)
] + [dict(image="images/t.png", split="train", label="0", body_part="", group="t", boxes=[])]
"""A generated manifest: 4 valid images (2 with boxes, so the pointing-game path runs) and 1 train image."""


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str]:
    """One in-process `--quick` bench of a 32 px random shallow CNN on a generated manifest: (JSON, table)."""
    folder = tmp_path_factory.mktemp("bench")
    build_manifest_folder(folder / "data", VALID_ROWS)
    out = folder / "bench.json"
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = bench.main(TINY + ["--in-process", "--data", str(folder / "data"), "--out", str(out)])
    assert code == 0
    return json.loads(out.read_text()), buffer.getvalue()


def test_json_has_every_key_with_sane_types(quick_run: tuple[dict, str]) -> None:
    result, _ = quick_run
    for key, kind in bench.REQUIRED_KEYS.items():
        assert key in result, key
        assert isinstance(result[key], kind), (key, result[key])
    for key in ("cold_start_s", "study_latency_s", "study_latency_naive_s", "naive_ratio",
                "evaluate_images_per_s", "peak_rss_mb"):
        assert math.isfinite(result[key]) and result[key] > 0, (key, result[key])
    assert result["device"] == "cpu"
    assert len(result["load_average"]) == 3 and all(v >= 0 for v in result["load_average"])


def test_naive_ratio_is_naive_over_ours(quick_run: tuple[dict, str]) -> None:
    result, _ = quick_run
    assert result["naive_ratio"] == pytest.approx(result["study_latency_naive_s"] / result["study_latency_s"])
    sub = result["subjects"][0]
    assert sub["naive_ratio_same_method"] == pytest.approx(sub["study_latency_naive_s"] / sub["latency_s"]["gradcam"])


def test_random_weights_are_labelled_and_scenarios_measured(quick_run: tuple[dict, str]) -> None:
    result, table = quick_run
    assert result["random_weights"] is True and "RANDOM WEIGHTS" in result["model"]
    assert "RANDOM WEIGHTS" in table and "Load average" in table
    sub = result["subjects"][0]
    assert sub["image_size"] == 32 and sub["views"] == 3 and sub["views_source"] == "real"
    # shallow_cnn has no pool + Linear head: classic CAM (the table's default) is skipped, Grad-CAM stands in
    assert sub["default_cam"] == FALLBACK_CAM and "cam" not in sub["latency_s"]
    for name in ("scores", "scores_tta", "gradcam", "gradcam_tta", "hirescam", "hirescam_tta"):
        assert sub["latency_s"][name] > 0, name
    assert sub["evaluate_images"] == 4 and "evaluate_dataset" in sub["evaluate_source"]
    assert sub["profile_top_ops"] and all(0 <= op["share"] <= 1 for op in sub["profile_top_ops"])
    assert set(result["targets_met"]) == set(bench.TARGETS) - {"first_page_s"}    # first page: --first-page only
    assert all(isinstance(v, bool) for v in result["targets_met"].values())


def test_plan_subjects_prefers_shipped_densenet169_and_adds_app_default() -> None:
    config = BenchConfig()
    first, second = bench.plan_subjects(config, shipped=["efficientnet_lite0", "densenet169"])
    assert (first.weights, first.random) == ("densenet169", False)
    assert second.weights == "efficientnet_lite0" and "app default" in second.label


def test_plan_subjects_falls_back_to_random_densenet169() -> None:
    (only,) = bench.plan_subjects(BenchConfig(), shipped=[])
    assert only.random and only.arch == "densenet169" and only.image_size == 320
    assert "RANDOM" in only.label
    subjects = bench.plan_subjects(BenchConfig(), shipped=["efficientnet_lite0"])
    assert subjects[0].random and subjects[1].weights == "efficientnet_lite0"
    (chosen,) = bench.plan_subjects(BenchConfig(random_weights=True, arch="resnet50"), shipped=["densenet169"])
    assert chosen.random and chosen.arch == "resnet50"


def test_median_time_warms_up_then_takes_the_median() -> None:
    calls: list[int] = []
    median, times = bench.median_time(lambda: calls.append(1), repeats=5, warmup=2)
    assert len(calls) == 7 and len(times) == 5 and median >= 0


def test_target_checks() -> None:
    assert bench.target_checks({"study_latency_s": 0.5, "naive_ratio": 3.0, "peak_rss_mb": 2000.0}) == {
        "study_latency_s": True, "naive_ratio": False, "peak_rss_mb": False}
    assert bench.target_checks({"overhead_ratio": 1.3, "score_images_per_s": 8.0, "naive_ratio": 10.0}) == {
        "overhead_ratio": True, "score_images_per_s": True, "naive_ratio": True}           # bounds included
    assert bench.target_checks({}) == {}


def test_generated_views_decode(tmp_path: Path) -> None:
    from mura_core.imaging.decode import decode_view

    views, source = bench.bench_views(tmp_path / "absent")
    assert source == "generated" and len(views) == 3
    pixels = decode_view(views[0]).pixels
    assert pixels.shape == (512, 420) and 0.0 <= pixels.min() < pixels.max() <= 1.0


def test_arch_without_random_weights_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench.main(["--arch", "shallow_cnn"]) == 2
    assert "--random-weights" in capsys.readouterr().err


@pytest.mark.slow
def test_isolated_scenario_reports_its_own_peak_memory(tmp_path: Path) -> None:
    subject = Subject("tiny", arch="shallow_cnn", image_size=32)
    config = BenchConfig.quick_config(repeats=1, data=str(tmp_path / "absent"))
    result = bench._run_scenario("study", subject, config)
    assert result["study_latency_s"] > 0 and result["peak_rss_mb"] > 0
    assert result["peak_rss_all_scenarios_mb"] >= result["peak_rss_mb"]


def test_evaluate_without_data_uses_a_labelled_stand_in(tmp_path: Path) -> None:
    subject = Subject("tiny", arch="shallow_cnn", image_size=32)
    config = BenchConfig.quick_config(evaluate_limit=5, data=str(tmp_path / "absent"), isolate=False)
    result = bench.measure_evaluate(subject, config)
    assert result["evaluate_images"] == 5 and result["evaluate_images_per_s"] > 0
    assert result["evaluate_source"].startswith("stand-in")


def test_shipped_weights_path_runs_study_and_naive(tmp_path: Path) -> None:
    from mura_core.models.checkpoints import ModelCard, save_checkpoint
    from mura_core.models.registry import create_model, get_arch

    spec = get_arch("shallow_cnn")
    card = ModelCard(name="tiny", arch="shallow_cnn", image_size=32, mean=spec.mean, std=spec.std)
    path = tmp_path / "tiny.pt"
    save_checkpoint(path, create_model("shallow_cnn"), card, half=True)
    subject = Subject("tiny", weights=str(path))
    config = BenchConfig.quick_config(repeats=1, data=str(tmp_path / "absent"), isolate=False, methods=("gradcam",))
    study = bench.measure_study(subject, config)
    assert study["random_weights"] is False and study["image_size"] == 32 and study["model"] == "tiny"
    naive = bench.measure_naive(subject, config)
    assert naive["study_latency_naive_s"] > 0 and naive["naive_build_load_s"] > 0


def test_an_indexed_ensemble_is_benched_with_every_member(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The app's default may be an ensemble: the naive request then reloads and runs every member, and the
    shipped index's ensemble default is planned as a subject (it was skipped before)."""
    from fixtures.score import ensemble_default_folder

    from mura_core.models.weights import MURA_WEIGHTS_ENV

    monkeypatch.setenv(MURA_WEIGHTS_ENV, str(ensemble_default_folder(tmp_path / "w")))
    config = BenchConfig.quick_config(repeats=1, naive_repeats=1, data=str(tmp_path / "absent"), isolate=False,
                                      methods=("cam",))
    (subject,) = [s for s in bench.plan_subjects(config) if s.weights == "pair"]
    assert subject.label == "pair (app default)"
    members = bench._naive_members(subject, tmp_path)
    assert [(p.name, c.image_size) for p, _, c in members] == [("a.pt", 64), ("b.pt", 48)]
    views, _ = bench.bench_views(tmp_path / "absent")
    probabilities = bench._naive_request(members, views, "cpu")
    alone = [bench._naive_request([m], views, "cpu") for m in members]
    assert probabilities == pytest.approx([(a + b) / 2 for a, b in zip(*alone)])
    naive = bench.measure_naive(subject, config)
    assert naive["naive_models"] == 2 and naive["study_latency_naive_s"] > 0


def test_paired_medians_time_each_callable_alternately() -> None:
    calls: list[str] = []
    first, second = bench.paired_medians(lambda: calls.append("a"), lambda: (calls.append("b"), time.sleep(0.01)),
                                         repeats=3, warmup=1)
    assert calls == ["a", "b"] * 4
    assert second >= 0.01 > first


def test_overhead_ratio_and_score_throughput_are_reported(quick_run: tuple[dict, str]) -> None:
    result, table = quick_run
    sub = result["subjects"][0]
    pair = sub["overhead_pair_s"]
    assert sub["overhead_ratio"] == pytest.approx(pair["study_with_maps"] / pair["bare_forward"])
    assert sub["overhead_ratio_sequential"] == pytest.approx(sub["study_latency_s"] / sub["bare_forward_s"])
    assert sub["bare_forward_s"] == sub["breakdown_s"]["forward_s"]
    assert result["overhead_ratio"] == sub["overhead_ratio"]
    assert sub["default_cam"] == "gradcam" and sub["overhead_ratio_cam"] is None  # no classic CAM to compare
    assert sub["score_images"] == 4 and sub["score_studies"] == 4 and "valid split" in sub["score_source"]
    assert result["score_images_per_s"] == pytest.approx(sub["score_images"] / sub["score_s"])
    assert "overhead_ratio" in table and "score throughput" in table


def test_int8_score_throughput_is_reported(quick_run: tuple[dict, str]) -> None:
    from mura_core.explain.quantize import engine_available

    if not engine_available():
        pytest.skip("this torch build has no x86 (fbgemm) quantised engine")
    result, table = quick_run
    sub = result["subjects"][0]
    assert sub["score_int8_images"] == 4 and "valid split" in sub["score_int8_source"]
    assert sub["score_int8_images_per_s"] == pytest.approx(sub["score_int8_images"] / sub["score_int8_s"])
    assert sub["score_int8_build_s"] > 0 and sub["score_int8_calibration"].startswith("1 images, train split")
    assert result["score_int8_images_per_s"] == sub["score_int8_images_per_s"]
    assert "score throughput, int8" in table
