"""`python -m mura_core fit-heads` end to end on the real shared data with a tiny model (few images per group)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from fixtures.app import build_tiny_weights
from fixtures.build import png_bytes
from mura_core.commands import SUBCOMMANDS
from mura_core.commands import fit_heads as fit_cli
from mura_core.commands import predict as predict_cli
from mura_core.explain.heads import heads_for
from mura_core.imaging.synthetic import CATEGORIES

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


def test_registered() -> None:
    assert SUBCOMMANDS["fit-heads"][0] == "mura_core.commands.fit_heads"


def test_fit_heads_writes_verified_heads_report_and_card(tmp_path, monkeypatch, capsys) -> None:
    if not (DATA / "FracAtlas").is_dir() or not (DATA / "bone-fracture-xr").is_dir():
        pytest.skip("shared data not present")
    weights = build_tiny_weights(tmp_path / "w", with_report=False)
    (weights / "tiny_cnn.md").write_text("# tiny_cnn\n\nA card.\n")
    monkeypatch.chdir(tmp_path)  # the feature cache goes to ./.cache/fit_heads
    argv = ["--weights-dir", str(weights), "--data", str(DATA / "FracAtlas"), "--data", str(DATA / "bone-fracture-xr"),
            "--max-per-group", "6", "--synthetic", "2", "--synthetic-fit", "2"]
    assert fit_cli.cli_main(argv) == 0
    paths = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    report = json.loads(Path(paths["report"]).read_text())
    entry = json.loads((weights / "index.json").read_text())["models"]["tiny_cnn"]
    assert entry["heads_sha256"] == report["heads_sha256"] and entry["heads"] == "tiny_cnn.heads.npz"
    heads, problem = heads_for(weights / "tiny_cnn.pt", report["checkpoint_sha256"])
    assert problem is None and heads is not None
    assert {"HAND_WRIST_FOREARM", "FINGER"} <= set(heads.part_classes)
    assert set(heads.kind_classes) == {"upper_limb", "lower_limb", *CATEGORIES}
    assert report["protocol"]["generated_train_images"] == 2 * len(CATEGORIES)
    rates = report["scope_held_out"]
    assert all(rates[f"generated {c} - true alarms"]["images"] >= 1 for c in CATEGORIES)
    assert rates["lower_limb (all) - true alarms"]["images"] >= 1
    card = (weights / "tiny_cnn.md").read_text()
    assert card.startswith("# tiny_cnn") and card.count("fit-heads:start") == 1 and "called out of scope" in card
    assert fit_cli.cli_main(argv) == 0                          # again: cached features, card section replaced
    capsys.readouterr()
    assert (weights / "tiny_cnn.md").read_text().count("fit-heads:start") == 1
    image = tmp_path / "x.png"
    image.write_bytes(png_bytes(64, 64))
    assert predict_cli.cli_main([str(image), "--weights-dir", str(weights), "--json", "--cam", "none",
                                 "--device", "cpu"]) == 0
    data = json.loads(capsys.readouterr().out)
    scope = data["images"][0]["scope"]
    assert scope is not None and set(scope) >= {"in_scope", "label", "score"}
    # a body part is named only for a view the scope check lets through (tiny random model: either way)
    assert (data["study"]["body_part_suggested"] is None) == (not scope["in_scope"])
