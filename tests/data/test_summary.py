"""Tests for mura_core.data.summary: summary counts, text and JSON output, no torch import."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from mura_core.commands.index import cli_main
from mura_core.data.mura_folder import read_mura_folder
from mura_core.data.summary import problem_kind, summarise

REPO = Path(__file__).resolve().parents[2]


def test_summary_counts_generated_tree(mura_tree: Path):
    summary = summarise(read_mura_folder(mura_tree))
    assert summary["total"] == {"studies": 6, "images": 13, "abnormal": 3, "normal": 3, "unlabelled": 0}
    assert summary["by_split"]["train"]["studies"] == 4 and summary["by_split"]["valid"]["images"] == 5
    assert summary["by_body_part"]["SHOULDER"] == {"studies": 2, "images": 5, "abnormal": 1, "normal": 1,
                                                   "unlabelled": 0}
    assert summary["by_split_body_part"]["valid"]["HAND"]["images"] == 2
    assert summary["by_label"] == {"abnormal": 3, "normal": 3, "unlabelled": 0}
    assert summary["problems"]["by_kind"] == {"empty study": 1, "missing file": 2, "stray file": 2,
                                              "unknown folder": 1}


def test_problem_kind():
    assert problem_kind("missing file: a/b.png") == "missing file"
    assert problem_kind("weird") == "other"


def test_cli_json(mura_tree: Path, capsys):
    assert cli_main([str(mura_tree), "--split", "valid", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["kind"] == "mura" and out["total"]["studies"] == 2
    assert len(out["problems"]["first"]) == out["problems"]["count"]


def test_cli_text(manifest_folder: Path, capsys):
    assert cli_main([str(manifest_folder)]) == 0
    text = capsys.readouterr().out
    assert "manifest data set" in text and "problems: 0" in text
    assert "WRIST" in text and "UNKNOWN" in text


def test_cli_bad_path(tmp_path: Path, capsys):
    assert cli_main([str(tmp_path / "nowhere")]) == 2
    assert "no such file or folder" in capsys.readouterr().err


def test_index_command_does_not_import_torch(manifest_folder: Path):
    code = ("import sys; from mura_core.commands import main; rc = main(['index', sys.argv[1], '--json']);"
            "assert 'torch' not in sys.modules, 'torch imported'; sys.exit(rc)")
    result = subprocess.run([sys.executable, "-c", code, str(manifest_folder)], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["total"]["images"] == 4
