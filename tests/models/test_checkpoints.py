"""Tests for mura_core.models.checkpoints: format, weights_only loading, sha256 index, cards."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from mura_core.models.checkpoints import FORMAT, CheckpointError, ModelCard, load_checkpoint, render_card_markdown, save_checkpoint, sha256_file
from mura_core.models.weights import (default_name, list_weights, load_weights, read_index, register_weights,
                                     resolve_weights)
from mura_core.models.registry import create_model, get_arch, list_models

torch.set_num_threads(2)
SIZE = 64


def _card(arch: str, name: str | None = None, **kw) -> ModelCard:
    spec = get_arch(arch)
    fields = {"thresholds": {"default": 0.4, "WRIST": 0.3}, "training_data": "generated", "licence": "CC0",
              "recipe": {"epochs": 1}, "metrics": {"auc": 0.5}, **kw}
    return ModelCard(name=name or arch, arch=arch, image_size=SIZE, mean=spec.mean, std=spec.std, **fields)


def _x() -> torch.Tensor:
    return torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))


@pytest.fixture
def saved(tmp_path: Path) -> tuple[Path, str, torch.nn.Module]:
    model = create_model("shallow_cnn").eval()
    path = tmp_path / "shallow.pt"
    return path, save_checkpoint(path, model, _card("shallow_cnn")), model


@pytest.mark.parametrize("name", [n for n in list_models() if n != "vgg19_bn"] + [
    pytest.param("vgg19_bn", marks=pytest.mark.slow)])
def test_round_trip_gives_identical_outputs(tmp_path: Path, name: str) -> None:
    model = create_model(name).eval()
    path = tmp_path / f"{name}.pt"
    sha = save_checkpoint(path, model, _card(name))
    loaded = load_checkpoint(path, expected_sha256=sha)
    assert not loaded.model.training
    assert loaded.sha256 == sha == sha256_file(path)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(_x()), model(_x()), rtol=0, atol=0)
    assert loaded.card.thresholds == {"default": 0.4, "WRIST": 0.3}
    assert loaded.card.arch == name


def test_file_is_plain_tensors_and_primitives(saved) -> None:
    path, _, _ = saved
    payload = torch.load(path, weights_only=True)
    assert payload["format"] == FORMAT and payload["dtype"] == "float32"
    assert all(isinstance(v, torch.Tensor) for v in payload["state_dict"].values())
    json.dumps(payload["card"])  # primitives only


def test_half_storage_is_smaller_and_loads_as_float32(tmp_path: Path) -> None:
    model = create_model("shallow_cnn").eval()
    full, half = tmp_path / "full.pt", tmp_path / "half.pt"
    save_checkpoint(full, model, _card("shallow_cnn"))
    save_checkpoint(half, model, _card("shallow_cnn"), half=True)
    assert half.stat().st_size < 0.6 * full.stat().st_size
    assert torch.load(half, weights_only=True)["state_dict"]["classifier.weight"].dtype == torch.float16
    loaded = load_checkpoint(half)
    assert all(p.dtype == torch.float32 for p in loaded.model.parameters())
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(_x()), model(_x()), atol=1e-2, rtol=1e-2)


def test_hash_mismatch_is_refused(saved) -> None:
    path, sha, _ = saved
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        load_checkpoint(path, expected_sha256="0" * 64)


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")


def test_truncated_file_is_refused(saved) -> None:
    path, _, _ = saved
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(path)


def test_garbage_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "garbage.pt"
    path.write_bytes(b"\x00not a checkpoint" * 100)
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(path)


class _Evil:
    """An object whose unpickling would run code; weights_only must refuse it."""

    def __reduce__(self):
        return (print, ("pwned",))


def test_pickled_object_is_refused_by_weights_only(tmp_path: Path, capsys) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"format": FORMAT, "state_dict": {}, "card": {}, "payload": _Evil()}, path)
    with pytest.raises(CheckpointError, match="weights_only"):
        load_checkpoint(path)
    assert "pwned" not in capsys.readouterr().out
    path.write_bytes(pickle.dumps({"x": _Evil()}, protocol=2))
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


def test_foreign_state_dict_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "plain.pt"
    torch.save(create_model("shallow_cnn").state_dict(), path)
    with pytest.raises(CheckpointError, match="not a mura_core checkpoint"):
        load_checkpoint(path)


def test_weights_that_do_not_fit_the_arch_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "wrong.pt"
    save_checkpoint(path, create_model("shallow_cnn"), _card("mobilenet_v2"))
    with pytest.raises(CheckpointError, match="do not fit"):
        load_checkpoint(path)


def test_card_round_trip_and_numpy_values() -> None:
    card = _card("shallow_cnn", metrics={"auc": np.float32(0.75), "n": np.int64(3), "nan": float("nan")})
    data = card.to_dict()
    json.dumps(data)
    again = ModelCard.from_dict({**data, "future_field": 1})
    assert again.metrics["auc"] == pytest.approx(0.75) and again.metrics["nan"] is None
    assert again.extra["future_field"] == 1
    assert again.threshold_for("WRIST") == 0.3 and again.threshold_for("ELBOW") == 0.4
    assert again.threshold_for(None) == 0.4
    with pytest.raises(CheckpointError, match="arch"):
        ModelCard.from_dict({"name": "x"})


def test_index_register_resolve_and_tamper(tmp_path: Path) -> None:
    model = create_model("shallow_cnn").eval()
    path = tmp_path / "a.pt"
    sha = save_checkpoint(path, model, _card("shallow_cnn", name="a"))
    register_weights(path, _card("shallow_cnn", name="a"), sha, weights_dir=tmp_path)
    path_b = tmp_path / "b.pt"
    sha_b = save_checkpoint(path_b, model, _card("shallow_cnn", name="b"))
    register_weights(path_b, _card("shallow_cnn", name="b"), sha_b, default=True, weights_dir=tmp_path)
    index = read_index(tmp_path)
    assert index["default"] == "b" and index["models"]["a"]["file"] == "a.pt"
    assert list_weights(tmp_path) == ["b", "a"]
    assert resolve_weights(None, tmp_path) == (tmp_path / "b.pt", sha_b)
    assert resolve_weights(str(path), tmp_path) == (path, None)
    assert load_weights("a", weights_dir=tmp_path).card.name == "a"
    with pytest.raises(CheckpointError, match="no weights named"):
        resolve_weights("zzz", tmp_path)
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        load_weights("a", weights_dir=tmp_path)
    path.unlink()
    with pytest.raises(CheckpointError, match="not found"):
        load_weights("a", weights_dir=tmp_path)


def test_an_ensemble_default_resolves_to_its_first_member(tmp_path: Path) -> None:
    """Commands that need one checkpoint (fit-heads, card, --teacher) take the default ensemble's first member:
    the one whose card, heads and pooled features the ensemble uses."""
    from fixtures.score import ensemble_default_folder

    folder = ensemble_default_folder(tmp_path)
    assert default_name(folder) == "pair" and default_name(tmp_path / "empty") is None
    assert resolve_weights(None, folder)[0] == folder / "a.pt"
    assert load_weights(weights_dir=folder).card.name == "a"
    assert list_weights(folder) == ["a", "b"]


def test_empty_index_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no default weights"):
        load_weights(weights_dir=tmp_path)


def test_render_card_markdown_has_every_section() -> None:
    card = _card("efficientnet_lite0", notes="weak model", metrics={
        "auc": 0.81, "per_body_part": {"WRIST": {"n": 10, "sensitivity": 0.7}}})
    text = render_card_markdown(card, sha256="ab" * 32)
    for needle in ("# Model card", "efficientnet_lite0", "CC0", "## Recipe", "| epochs | 1 |", "0.8100",
                   "WRIST", "0.7000", "## Calibration and thresholds", "weak model", "Not a medical device", "ab" * 32):
        assert needle in text, needle


def test_shipped_index_files_match_their_hashes() -> None:
    """Every file weights/index.json lists exists and has the sha256 it claims."""
    index = read_index()
    for name, entry in index["models"].items():
        path, sha = resolve_weights(name)
        assert path.is_file(), name
        assert sha256_file(path) == sha, name
    for members in index.get("ensembles", {}).values():
        assert set(members) <= set(index["models"])
    for key in ("ensemble_maps_from", "ensemble_unflipped"):
        for name, chosen in index.get(key, {}).items():
            assert set(chosen) <= set(index["ensembles"][name]), (key, name)


def test_shipped_default_maps_beat_classic_cam_in_their_reports() -> None:
    """A model's index-named default map is measured in its shipped evaluate report and points at expert boxes at
    least as often as one-pass classic CAM on every source (the reason it was named); for a model without classic
    CAM (the hybrid), at least as often as every other method its report measured, both sources pooled."""
    from mura_core.explain.cams import CAM_METHODS
    from mura_core.evaluation.reports import read_report
    from mura_core.models.weights import report_folder

    named = read_index().get("default_cam", {})
    assert named, "no shipped model names a default map"
    for name, method in named.items():
        assert method in CAM_METHODS, name
        report = read_report(report_folder(name) / "report.json")
        pooled = report["pointing_game"]["methods"]
        if "cam" not in pooled:
            assert all(pooled[method]["hit_rate"] >= pooled[m]["hit_rate"] for m in pooled), name
            continue
        for source, part in report["by_source"].items():
            games = part["pointing_game"]["methods"]
            assert games[method]["hit_rate"] >= games["cam"]["hit_rate"], (name, source)


def test_update_card_keeps_weights_and_changes_hash(saved) -> None:
    from mura_core.models.checkpoints import update_card

    path, sha, model = saved
    new_sha = update_card(path, {"notes": "evaluated later", "metrics": {"auc": 0.9}}, expected_sha256=sha)
    assert new_sha != sha
    loaded = load_checkpoint(path, expected_sha256=new_sha)
    assert loaded.card.notes == "evaluated later" and loaded.card.metrics == {"auc": 0.9}
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(_x()), model(_x()), rtol=0, atol=0)
    with pytest.raises(CheckpointError, match="unknown card fields"):
        update_card(path, {"colour": "red"})
    with pytest.raises(CheckpointError, match="mismatch"):
        update_card(path, {"notes": "x"}, expected_sha256=sha)
