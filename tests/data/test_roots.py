"""Tests for mura_core.data.roots: data roots, the default data folder, path safety."""
from __future__ import annotations

import os
from pathlib import Path

from mura_core.data.roots import configured_roots, default_data_root, is_within, root_for, safe_study
from mura_core.data.studies import BodyPart, Study, View


def _study(sid: str, label: int | None, part: BodyPart = BodyPart.UNKNOWN, split: str = "valid",
           paths: tuple[Path | None, ...] = (None,)) -> Study:
    views = tuple(View(f"{sid}/{i}.png", p) for i, p in enumerate(paths))
    return Study(sid, views, part, label, split=split, source="manifest")


def test_is_within_refuses_dotdot_and_symlink_escapes(tmp_path: Path):
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (tmp_path / "secret.txt").write_text("x")
    assert is_within(root / "images" / "a.png", [root])
    assert is_within(root, [root])
    assert not is_within(root / ".." / "secret.txt", [root])
    assert not is_within(tmp_path / "data2" / "x.png", [root])     # prefix is not containment
    link = root / "images" / "escape"
    os.symlink(tmp_path, link)
    assert not is_within(link / "secret.txt", [root])


def test_safe_study_drops_views_outside_root(tmp_path: Path):
    root = tmp_path / "data"
    root.mkdir()
    study = _study("s", 1, paths=(root / "a.png", root / ".." / "b.png", None))
    safe, refused = safe_study(study, root)
    assert [v.name for v in safe.views] == ["s/0.png", "s/2.png"]
    assert len(refused) == 1 and "s/1.png" in refused[0]
    same, none = safe_study(_study("t", 0, paths=(root / "x.png",)), root)
    assert none == [] and same.study_id == "t"


def test_configured_roots_default_env_and_typed(tmp_path: Path):
    repo = tmp_path / "repo"
    repo.mkdir()
    shared = tmp_path / "shared" / "data" / "bone-fracture-xr"
    shared.mkdir(parents=True)
    manifest = tmp_path / "other" / "manifest.csv"
    manifest.parent.mkdir()
    manifest.write_text("image\n")
    env = {"MURA_DATA": str(tmp_path / "mura")}
    roots = configured_roots(str(manifest), repo_root=repo, env=env)
    assert roots == [shared.resolve(), (tmp_path / "mura").resolve(), manifest.parent.resolve()]
    assert default_data_root(repo, env) == tmp_path / "mura"
    assert default_data_root(repo, {}) == shared.resolve()
    assert root_for(shared / "images" / "a.jpg", roots) == shared.resolve()
    assert root_for(tmp_path / "elsewhere", roots) is None
