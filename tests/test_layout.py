"""The package's shape: only `mura_core.app` needs Streamlit, `import mura_core` stays cheap, the face works."""
from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import mura_core

REPO_ROOT = Path(__file__).resolve().parents[1]


def library_modules() -> list[str]:
    """Every module of mura_core outside the app layer."""
    names = [m.name for m in pkgutil.walk_packages(mura_core.__path__, "mura_core.")]
    return sorted(n for n in names if not n.startswith("mura_core.app") and n != "mura_core.__main__")


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)


def test_every_library_module_imports_without_streamlit():
    modules = library_modules()
    assert "mura_core.explain.predictor" in modules and "mura_core.commands.evaluate" in modules
    code = ("import importlib, sys; sys.modules['streamlit'] = None\n"
            f"for name in {modules!r}:\n    importlib.import_module(name)\n"
            "print('ok', 'streamlit' in sys.modules and sys.modules['streamlit'] is not None)")
    result = _run(code)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["ok", "False"]


def test_import_mura_core_is_cheap_and_the_face_loads_lazily():
    result = _run("import sys, mura_core; print('torch' in sys.modules, 'streamlit' in sys.modules); "
                  "from mura_core import open_dataset, BodyPart; print('torch' in sys.modules, callable(open_dataset))")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["False", "False", "False", "True"]


def test_face_names_resolve():
    for name in mura_core.__all__:
        assert getattr(mura_core, name) is not None, name
