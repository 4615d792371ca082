"""The app's services: facts about models that pages quote."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.fixtures.score import tiny_checkpoint


def test_an_ensemble_quotes_the_thresholds_it_decides_with(tmp_path: Path, monkeypatch) -> None:
    """An ensemble decides at its members' averaged thresholds; pages must not quote the first member's."""
    from mura_core.app import services

    folder = tmp_path / "weights"
    index: dict = {"default": "a", "models": {}, "ensembles": {"pair": ["a", "b"]}}
    for seed, (name, cut) in enumerate({"a": 0.2, "b": 0.6}.items()):
        sha = tiny_checkpoint(folder / f"{name}.pt", "shallow_cnn", seed=seed, name=name,
                              thresholds={"default": cut, "WRIST": cut + 0.1})
        index["models"][name] = {"file": f"{name}.pt", "sha256": sha, "arch": "shallow_cnn", "description": "test"}
    (folder / "index.json").write_text(json.dumps(index))
    monkeypatch.setenv("MURA_WEIGHTS_DIR", str(folder))
    assert services.model_thresholds("a") == pytest.approx({"default": 0.2, "WRIST": 0.3})
    assert services.model_thresholds("pair") == pytest.approx({"default": 0.4, "WRIST": 0.5})
    assert services.model_thresholds("missing") == {"default": 0.5}
