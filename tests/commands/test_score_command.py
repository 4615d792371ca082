"""Tests for `python -m mura_core score`: the worklist from the shell, errors, and 2 gloo ranks under torchrun."""
from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fixtures.score import tiny_manifest, weights_folder

from mura_core.commands import score as score_cli

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    return weights_folder(tmp_path_factory.mktemp("w"), {"tiny": "mobilenet_v2"}, default="tiny",
                          thresholds={"default": 0.5, "WRIST": 0.1})


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return tiny_manifest(tmp_path_factory.mktemp("m") / "d", n_studies=7, corrupt=1)


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_score_writes_sorted_worklist(capsys, weights: Path, data: Path, tmp_path: Path):
    code = score_cli.cli_main([str(data), "--out", str(tmp_path / "o"), "--weights-dir", str(weights),
                               "--device", "cpu", "--workers", "0", "--no-progress"])
    out, err = capsys.readouterr()
    assert code == 0, err
    rows = _rows(tmp_path / "o" / "worklist.csv")
    assert len(rows) == 8 and "8 studies (8 scored now, 0 from an earlier run)" in out
    probs = [float(r["probability"]) for r in rows if r["probability"]]
    assert probs == sorted(probs, reverse=True) and len(probs) == 7
    assert rows[-1]["unreadable"].startswith("images/broken0.png: not an image")
    code = score_cli.cli_main([str(data), "--out", str(tmp_path / "o"), "--weights-dir", str(weights),
                               "--device", "cpu", "--workers", "0", "--no-progress"])
    assert code == 0 and "0 scored now, 8 from an earlier run" in capsys.readouterr().out


def test_unreadable_data_is_an_error_message(capsys, weights: Path, tmp_path: Path):
    (tmp_path / "empty").mkdir()
    code = score_cli.cli_main([str(tmp_path / "empty"), "--out", str(tmp_path / "o"), "--weights-dir", str(weights)])
    err = capsys.readouterr().err
    assert code == 2 and "not a data set" in err and "Traceback" not in err


def test_two_gloo_ranks_merge_one_worklist(weights: Path, data: Path, tmp_path: Path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    single = subprocess.run([sys.executable, "-m", "mura_core", "score", str(data), "--out", str(tmp_path / "one"),
                             "--weights-dir", str(weights), "--device", "cpu", "--workers", "0", "--no-progress"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr[-2000:]
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "mura_core", "score", str(data), "--out", str(tmp_path / "two"),
                          "--weights-dir", str(weights), "--device", "cpu", "--workers", "0", "--no-progress"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("wrote ") == 1                                       # rank 0 alone reports
    parts = {p.name: _rows(p) for p in (tmp_path / "two" / "partial").glob("*.csv")}
    assert set(parts) == {"rank0-of-2.csv", "rank1-of-2.csv"}
    assert all(len(rows) == 4 for rows in parts.values())                       # 8 studies, 4 each
    assert not {r["study"] for r in parts["rank0-of-2.csv"]} & {r["study"] for r in parts["rank1-of-2.csv"]}
    one, two = _rows(tmp_path / "one" / "worklist.csv"), _rows(tmp_path / "two" / "worklist.csv")
    assert [r["study"] for r in two] == [r["study"] for r in one]
    assert [float(r["probability"] or "nan") for r in two] == pytest.approx(
        [float(r["probability"] or "nan") for r in one], abs=1e-5, nan_ok=True)


def test_score_flags_a_generated_photo_with_the_shipped_heads(capsys, tmp_path: Path):
    """The default shipped model's fitted heads check every view from its scoring forward."""
    from mura_core.imaging.synthetic import generate

    (tmp_path / "d" / "XR_HAND_photo").mkdir(parents=True)
    name, data = generate("photo", 3)
    (tmp_path / "d" / "XR_HAND_photo" / name).write_bytes(data)
    code = score_cli.cli_main([str(tmp_path / "d"), "--out", str(tmp_path / "o"), "--device", "cpu",
                               "--workers", "0", "--no-progress"])
    assert code == 0, capsys.readouterr().err
    (row,) = _rows(tmp_path / "o" / "worklist.csv")
    assert row["scope"].startswith(f"XR_HAND_photo/{name}: Looks like") and "outside what this model" in row["scope"]
