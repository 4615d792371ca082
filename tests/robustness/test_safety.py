"""Issue 7: nobody gets in where they do not belong.

- Checkpoints are only ever loaded with ``weights_only=True`` and a sha256 check: a tampered file is
  refused with a clear message by every entry point (library, Predictor, CLI, app), and a pickle whose
  ``__reduce__`` would run code is refused without the code ever running (a control run proves the
  payload is live).
- The dataset browser and study links read files only inside the configured data roots: ``../`` in a
  manifest, an absolute path, a symlink and a link to a folder outside are all refused, and an audit
  hook proves no file outside was opened.
- Nothing connects to the network at run time (sockets blocked and watched).
- DICOM identifying tags (PatientName, ids, dates, institution: all "SECRET..." in the fixtures) never
  reach the page, the logs or the CLI output.
"""
from __future__ import annotations

import ast
import json
import logging
import os
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from fixtures.build import dicom_bytes
from fixtures.harden import SECRET_MARKERS, good_png, page_text, tiny_weights_dir

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO_ROOT = Path(__file__).resolve().parents[2]
APP = str(REPO_ROOT / "app.py")


def _page(name: str) -> str:
    """The app's page script path."""
    return next((f"{d}/{name}" for d in ("pages",) if (REPO_ROOT / d / name).is_file()),
                f"pages/{name}")


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> tuple[Path, str]:
    """A weights folder with one indexed 64-px random MobileNetV2 (the default)."""
    return tiny_weights_dir(tmp_path_factory.mktemp("safety_weights"))


def _app():
    """A fresh AppTest of the app (the caller sets MURA_WEIGHTS_DIR / MURA_DATA with monkeypatch)."""
    from streamlit.testing.v1 import AppTest

    return AppTest.from_file(APP, default_timeout=300).run()


# ==============================================================================================
# checkpoints: sha256 and weights_only
# ==============================================================================================


def _tamper(path: Path) -> None:
    """Flip one byte in the middle of a file (a tensor byte: still a loadable zip, different weights)."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.fixture
def tampered(tmp_path: Path) -> tuple[Path, str]:
    """An indexed tiny checkpoint whose file was changed after indexing; (weights folder, name)."""
    folder, name = tiny_weights_dir(tmp_path / "weights")
    _tamper(folder / f"{name}.pt")
    return folder, name


def _load_weights(folder: Path, name: str):
    from mura_core.models.weights import load_weights

    return load_weights(name, weights_dir=folder)


def _from_weights(folder: Path, name: str):
    from mura_core.explain.predictor import Predictor

    return Predictor.from_weights(name, device="cpu", weights_dir=folder)


@pytest.mark.parametrize("entry", [_load_weights, _from_weights], ids=["load_weights", "Predictor.from_weights"])
def test_tampered_checkpoint_refused_by_library(tampered, entry):
    """A changed file fails the index's sha256 before anything is unpickled, with a clear message."""
    from mura_core.models.checkpoints import CheckpointError

    folder, name = tampered
    with pytest.raises(CheckpointError, match="sha256 mismatch") as caught:
        entry(folder, name)
    assert "refusing to load" in str(caught.value) and name in str(caught.value)


def test_tampered_checkpoint_refused_by_cli(tampered, tmp_path: Path, capsys):
    """`predict --weights NAME --weights-dir DIR` on a tampered file: exit 2, one clear line, no traceback."""
    from mura_core.commands import predict as predict_cli

    folder, name = tampered
    image = tmp_path / "x.png"
    image.write_bytes(good_png())
    code = predict_cli.cli_main([str(image), "--weights", name, "--weights-dir", str(folder), "--device", "cpu"])
    out = capsys.readouterr()
    assert code == 2
    assert "sha256 mismatch" in out.err and "Traceback" not in out.err + out.out


def test_tampered_checkpoint_refused_by_app(tampered, monkeypatch):
    """The study viewer with tampered weights shows an error card naming the sha256 mismatch and
    raises no exception; nothing is scored."""
    folder, _ = tampered
    monkeypatch.setenv("MURA_WEIGHTS_DIR", str(folder))
    at = _app()
    at.switch_page(_page("study_viewer.py")).run()
    at.file_uploader(key="viewer_upload").set_value([("x.png", good_png(), "image/png")]).run()
    assert not at.exception, at.exception
    errors = " ".join(e.value for e in at.error)
    assert "sha256 mismatch" in errors
    assert not any(m.label == "Study probability (abnormal)" for m in at.metric)


class _Payload:
    """Unpickling this object runs `code` (exec); a loader that honours it has been taken over."""

    def __init__(self, code: str) -> None:
        self.code = code

    def __reduce__(self):
        return (exec, (self.code,))


def _malicious_checkpoint(folder: Path, marker: Path) -> tuple[Path, str]:
    """An indexed checkpoint that looks right (format, state dict, card) but hides a payload that would
    create `marker`; the index holds the file's true sha256, as an attacker who also edits the index
    would write. Returns (weights folder, name)."""
    import torch

    from mura_core.models.checkpoints import FORMAT, sha256_file
    from mura_core.models.weights import register_weights

    good_folder, name = tiny_weights_dir(folder)
    path = good_folder / f"{name}.pt"
    payload = torch.load(path, weights_only=True)
    payload["card"]["notes"] = _Payload(f"open({str(marker)!r}, 'w').write('payload ran')")
    assert payload["format"] == FORMAT
    torch.save(payload, path)
    from mura_core.models.checkpoints import ModelCard

    card = ModelCard(name=name, arch="mobilenet_v2", image_size=64, mean=(0.5,) * 3, std=(0.5,) * 3)
    register_weights(path, card, sha256_file(path), default=True, weights_dir=good_folder)
    return good_folder, name


def _pickle_globals(checkpoint: Path) -> set[str]:
    """The `module.name` globals a torch checkpoint's pickle would import, read without unpickling it."""
    import pickletools
    import zipfile

    with zipfile.ZipFile(checkpoint) as archive:
        data = archive.read(next(n for n in archive.namelist() if n.endswith("data.pkl")))
    found, strings = set(), []
    for opcode, arg, _ in pickletools.genops(data):
        if opcode.name == "GLOBAL":
            found.add(str(arg).replace(" ", "."))
        elif opcode.name == "STACK_GLOBAL":
            found.add(f"{strings[-2]}.{strings[-1]}")
        elif isinstance(arg, str):
            strings.append(arg)
    return found


def test_malicious_pickle_never_runs(tmp_path: Path, capsys):
    """A checkpoint carrying an exec payload, even with a matching sha256 in the index, is refused by
    the library, the Predictor and the CLI, and the payload never runs; loading the same file the
    pickle stream does import `exec` (read with pickletools, never unpickled), so the test would
    notice a loader that allowed it."""
    import torch

    from mura_core.commands import predict as predict_cli
    from mura_core.models.checkpoints import CheckpointError

    marker = tmp_path / "payload_ran.txt"
    folder, name = _malicious_checkpoint(tmp_path / "weights", marker)
    for entry in (_load_weights, _from_weights):
        with pytest.raises(CheckpointError, match="weights_only"):
            entry(folder, name)
    image = tmp_path / "x.png"
    image.write_bytes(good_png())
    code = predict_cli.cli_main([str(image), "--weights", name, "--weights-dir", str(folder), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and "weights_only" in err and "Traceback" not in err
    assert not marker.exists(), "the pickle payload ran"
    # control: the payload is there (pickle protocol 2 spells the module `__builtin__`)
    assert {"builtins.exec", "__builtin__.exec"} & _pickle_globals(folder / f"{name}.pt")


def test_every_torch_load_in_mura_core_is_weights_only():
    """Static guard: each `torch.load(...)` in mura_core passes weights_only=True, and nothing calls
    pickle.load(s) or numpy load with allow_pickle=True."""
    offenders = []
    for path in sorted((REPO_ROOT / "mura_core").rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func = ast.unparse(node.func)
            kwargs = {k.arg: ast.unparse(k.value) for k in node.keywords}
            where = f"{path.relative_to(REPO_ROOT)}:{node.lineno}"
            if func.endswith("torch.load") and kwargs.get("weights_only") != "True":
                offenders.append(f"{where} {ast.unparse(node)}")
            if func in ("pickle.load", "pickle.loads", "cPickle.load", "dill.load"):
                offenders.append(f"{where} {ast.unparse(node)}")
            if func.endswith(("np.load", "numpy.load")) and kwargs.get("allow_pickle") == "True":
                offenders.append(f"{where} {ast.unparse(node)}")
    assert offenders == []


# ==============================================================================================
# the dataset browser stays inside its roots
# ==============================================================================================

_OPENED: list[str] | None = None
"""Paths opened while a test records them (filled by the audit hook below)."""


def _audit(event: str, args: tuple) -> None:
    if _OPENED is not None and event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        _OPENED.append(os.fsdecode(args[0]))


sys.addaudithook(_audit)  # audit hooks cannot be removed; this one only acts while _OPENED is a list


@pytest.fixture
def opened_files():
    """The list of every file opened (by any thread of this process) during the test."""
    global _OPENED
    _OPENED = []
    try:
        yield _OPENED
    finally:
        _OPENED = None


@pytest.fixture
def escape_data(tmp_path: Path) -> dict[str, Path]:
    """A manifest folder whose rows try to escape it, next to an `outside` folder of real images.

    Studies: g_in (inside), g_dotdot (`../outside/...`), g_abs (absolute path outside), g_link (a
    symlink inside pointing outside), g_mixed (one inside view + one `../` view).
    """
    data, outside = tmp_path / "data", tmp_path / "outside"
    (data / "images").mkdir(parents=True)
    outside.mkdir()
    (data / "images" / "a.png").write_bytes(good_png(seed=1))
    (data / "images" / "b.png").write_bytes(good_png(seed=2))
    for name in ("dotdot.png", "abs.png", "linked.png"):
        (outside / name).write_bytes(good_png(seed=9))
    (data / "images" / "link.png").symlink_to(outside / "linked.png")
    (data / "elsewhere").symlink_to(outside, target_is_directory=True)
    rows = [("images/a.png", "g_in"), ("../outside/dotdot.png", "g_dotdot"), (str(outside / "abs.png"), "g_abs"),
            ("images/link.png", "g_link"), ("images/b.png", "g_mixed"), ("../outside/dotdot.png", "g_mixed")]
    lines = ["image,split,label,body_part,group,boxes"] + [f"{img},train,1,WRIST,{grp},[]" for img, grp in rows]
    (data / "manifest.csv").write_text("\n".join(lines) + "\n")
    return {"data": data, "outside": outside}


def _outside_reads(opened: list[str], outside: Path) -> list[str]:
    root = str(outside.resolve())
    return [p for p in opened if str(Path(p).resolve()).startswith(root)]


def test_audit_hook_sees_image_reads(escape_data, opened_files):
    """Control: decoding a file outside is recorded, so the "never opened" checks below can fail."""
    from mura_core.imaging.decode import decode_view
    from mura_core.data.studies import View

    decode_view(View("dotdot.png", escape_data["outside"] / "dotdot.png"))
    assert _outside_reads(opened_files, escape_data["outside"]) == [str(escape_data["outside"] / "dotdot.png")]


def test_browser_shows_only_files_inside_the_root(weights, escape_data, opened_files, monkeypatch):
    """Browsing the folder: thumbnails for the inside studies only, an error card for each escaping
    one, and no file under `outside/` is ever opened."""
    monkeypatch.setenv("MURA_WEIGHTS_DIR", str(weights[0]))
    monkeypatch.delenv("MURA_DATA", raising=False)
    at = _app()
    at.switch_page(_page("dataset_browser.py")).run()
    at.text_input(key="browser_path").set_value(str(escape_data["data"])).run()
    assert not at.exception, at.exception
    assert len(at.image) == 2  # g_in and g_mixed (its first view is inside)
    refused = [e.value for e in at.error]
    assert len(refused) == 3 and all("outside the data folder" in e for e in refused), refused
    assert _outside_reads(opened_files, escape_data["outside"]) == []


def test_linked_study_reads_only_inside_views(weights, escape_data, opened_files, monkeypatch):
    """A study link (`?data=&study=`) to a study with one inside and one `../` view scores the inside
    view only, names the refused one, and never opens it."""
    monkeypatch.setenv("MURA_WEIGHTS_DIR", str(weights[0]))
    monkeypatch.setenv("MURA_DATA", str(escape_data["data"]))
    at = _app()
    at.query_params["data"] = str(escape_data["data"])
    at.query_params["study"] = "g_mixed"
    at.switch_page(_page("study_viewer.py")).run()
    assert not at.exception, at.exception
    assert any("dotdot.png" in e.value and "outside the data folder" in e.value for e in at.error)
    titles = [m.value for m in at.markdown if m.value.startswith("#### View")]
    assert len(titles) == 1 and "View 1: images/b.png" in titles[0]
    assert _outside_reads(opened_files, escape_data["outside"]) == []


@pytest.mark.parametrize("link", ["dotdot", "symlinked_folder", "absolute"])
def test_links_to_folders_outside_the_roots_are_refused(weights, escape_data, opened_files, monkeypatch, link):
    """`?data=` naming `root/../outside`, a symlink inside the root to `outside`, or an absolute
    folder elsewhere is refused before anything is read."""
    data, outside = escape_data["data"], escape_data["outside"]
    (outside / "manifest.csv").write_text("image,split,label,body_part,group,boxes\n"
                                          "dotdot.png,train,1,WRIST,g_out,[]\n")
    opened_files.clear()  # that write was the test's own
    target = {"dotdot": f"{data}/../outside", "symlinked_folder": str(data / "elsewhere"),
              "absolute": str(outside)}[link]
    monkeypatch.setenv("MURA_WEIGHTS_DIR", str(weights[0]))
    monkeypatch.setenv("MURA_DATA", str(data))
    at = _app()
    at.query_params["data"] = target
    at.query_params["study"] = "g_out"
    at.switch_page(_page("study_viewer.py")).run()
    assert not at.exception, at.exception
    assert any("not inside a configured data folder" in e.value for e in at.error)
    assert not [m for m in at.markdown if m.value.startswith("#### View")]
    assert _outside_reads(opened_files, outside) == []


# ==============================================================================================
# no network
# ==============================================================================================


@pytest.fixture
def no_network(monkeypatch) -> list[str]:
    """Block and record every attempt to reach a network address (Unix sockets stay allowed)."""
    attempts: list[str] = []
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def guard(kind):
        def blocked(*args, **kwargs):
            attempts.append(f"{kind}{args[1:] if kind.startswith('socket.') else args}")
            raise OSError(f"network blocked by test ({kind})")
        return blocked

    def connect(self, address):
        if self.family == socket.AF_UNIX:
            return real_connect(self, address)
        return guard("socket.connect")(self, address)

    def connect_ex(self, address):
        if self.family == socket.AF_UNIX:
            return real_connect_ex(self, address)
        return guard("socket.connect_ex")(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.setattr(socket, "create_connection", guard("create_connection"))
    monkeypatch.setattr(socket, "getaddrinfo", guard("getaddrinfo"))
    return attempts


def test_no_network_in_predictor_and_cli(weights, tmp_path: Path, no_network, capsys):
    """Loading the model, scoring with a heat map and running the predict CLI attempt no connection."""
    from mura_core.commands import predict as predict_cli
    from mura_core.explain.predictor import Predictor
    from mura_core.data.studies import Study, View

    folder, name = weights
    predictor = Predictor.from_weights(name, device="cpu", weights_dir=folder)
    study = Study("s", (View("a.png", data=good_png()), View("b.dcm", data=dicom_bytes(rows=64, cols=48))))
    result = predictor.predict_study(study, cam="gradcam")
    assert result.scored == 2
    image = tmp_path / "a.png"
    image.write_bytes(good_png())
    code = predict_cli.cli_main([str(image), "--weights", name, "--weights-dir", str(folder), "--device", "cpu",
                                 "--out", str(tmp_path / "out"), "--json"])
    assert code == 0, capsys.readouterr().err
    assert no_network == []
    with pytest.raises(OSError):  # the guard is live
        socket.create_connection(("example.org", 80), timeout=1)


def test_no_network_in_cli_process(weights, tmp_path: Path):
    """The real `python -m mura_core predict` process, with sockets blocked from interpreter start
    (sitecustomize), scores its study and records no connection attempt."""
    folder, name = weights
    hooks, log = tmp_path / "hooks", tmp_path / "attempts.log"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(
        "import socket\n"
        f"LOG = {str(log)!r}\n"
        "def _blocked(*args, **kwargs):\n"
        "    open(LOG, 'a').write(repr(args[1:] if args and isinstance(args[0], socket.socket) else args) + '\\n')\n"
        "    raise OSError('network blocked by test')\n"
        "_real = socket.socket.connect\n"
        "def _connect(self, address):\n"
        "    return _real(self, address) if self.family == socket.AF_UNIX else _blocked(self, address)\n"
        "socket.socket.connect = _connect\n"
        "socket.create_connection = _blocked\n"
        "socket.getaddrinfo = _blocked\n")
    image = tmp_path / "a.png"
    image.write_bytes(good_png())
    env = {**os.environ, "PYTHONPATH": f"{hooks}{os.pathsep}{REPO_ROOT}"}
    proc = subprocess.run([sys.executable, "-m", "mura_core", "predict", str(image), "--weights", name,
                           "--weights-dir", str(folder), "--device", "cpu", "--json"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["study"]["probability"] is not None
    assert not log.exists(), log.read_text()


def test_no_network_in_app(weights, no_network, monkeypatch):
    """The study viewer scores an upload with heat maps without any connection attempt."""
    monkeypatch.setenv("MURA_WEIGHTS_DIR", str(weights[0]))
    at = _app()
    at.switch_page(_page("study_viewer.py")).run()
    at.file_uploader(key="viewer_upload").set_value([("a.png", good_png(), "image/png")]).run()
    assert not at.exception, at.exception
    assert any(m.label == "Study probability (abnormal)" for m in at.metric)
    assert no_network == []


# ==============================================================================================
# DICOM identifying tags never leak
# ==============================================================================================

SECRET_DICOMS = {
    "good.dcm": lambda: dicom_bytes(rows=64, cols=48),
    "rle.dcm": lambda: dicom_bytes(rows=64, cols=48, rle=True, photometric="MONOCHROME1"),
    "no_pixels.dcm": lambda: dicom_bytes(pixel_data=False),
    "wrong_vr.dcm": lambda: dicom_bytes(wrong_vr=True),
    "mpeg.dcm": lambda: dicom_bytes(transfer_syntax="1.2.840.10008.1.2.4.100"),
    "cut.dcm": lambda: dicom_bytes(rows=64, cols=48)[:600],
}
"""Good and broken DICOMs, every one carrying SECRET identifying tags."""


def _assert_no_secret(text: str, where: str) -> None:
    for marker in SECRET_MARKERS:
        assert marker not in text, f"{marker!r} leaked into {where}"


def test_fixture_dicoms_really_hold_the_secrets():
    """Control: the raw files do hold the markers, so their absence elsewhere means something."""
    raw = dicom_bytes()
    assert all(m.encode() in raw for m in SECRET_MARKERS)


def test_dicom_tags_never_reach_the_page(weights, monkeypatch):
    """Upload the SECRET DICOMs: the page (every element, tables, expanders, captions) shows the
    technical facts (modality CR) but no identifying value."""
    monkeypatch.setenv("MURA_WEIGHTS_DIR", str(weights[0]))
    at = _app()
    at.switch_page(_page("study_viewer.py")).run()
    files = [(n, make(), "application/dicom") for n, make in SECRET_DICOMS.items()]
    at.file_uploader(key="viewer_upload").set_value(files).run()
    assert not at.exception, at.exception
    text = page_text(at)
    assert "Modality: CR" in text and "good.dcm" in text  # the DICOMs were rendered
    assert sum(m.label == "P(abnormal)" for m in at.metric) == 2
    _assert_no_secret(text, "the page")


def test_dicom_tags_never_reach_the_logs(weights, caplog):
    """DEBUG logs and warnings across upload parsing, decoding and scoring hold no identifying value."""
    from mura_core.imaging.decode import DecodeError, decode_image
    from mura_core.explain.predictor import Predictor
    from mura_core.data.uploads import study_from_uploads

    files = [(n, make()) for n, make in SECRET_DICOMS.items()]
    with caplog.at_level(logging.DEBUG), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        logging.getLogger("pydicom").setLevel(logging.DEBUG)
        for name, data in files:
            try:
                decode_image(data, name)
            except DecodeError as error:
                _assert_no_secret(str(error), f"the DecodeError of {name}")
        study = study_from_uploads(files)
        predictor = Predictor.from_weights(weights[1], device="cpu", weights_dir=weights[0])
        result = predictor.predict_study(study, cam="cam")
    assert result.scored == 2 and study.body_part.value == "WRIST"
    records = "\n".join(f"{r.name} {r.getMessage()} {r.args!r}" for r in caplog.records)
    _assert_no_secret(records, "the logs")
    _assert_no_secret("\n".join(str(w.message) for w in caught), "the warnings")
    _assert_no_secret(repr(result), "the StudyResult repr")
    _assert_no_secret("\n".join(repr(v.meta) for v in result.views), "the image metadata")


@pytest.mark.parametrize("as_json", [True, False], ids=["json", "plain"])
def test_dicom_tags_never_reach_the_cli_output(weights, tmp_path: Path, capsys, as_json: bool):
    """`predict` over the SECRET DICOMs (with overlays): stdout, stderr and the written file names hold
    no identifying value, in JSON and in plain text."""
    from mura_core.commands import predict as predict_cli

    paths = []
    for name, make in SECRET_DICOMS.items():
        paths.append(tmp_path / name)
        paths[-1].write_bytes(make())
    out_dir = tmp_path / "out"
    argv = [*map(str, paths), "--weights", weights[1], "--weights-dir", str(weights[0]), "--device", "cpu",
            "--out", str(out_dir)] + (["--json"] if as_json else [])
    code = predict_cli.cli_main(argv)
    out = capsys.readouterr()
    assert code == 0
    _assert_no_secret(out.out, "stdout")
    _assert_no_secret(out.err, "stderr")
    _assert_no_secret(" ".join(p.name for p in out_dir.iterdir()), "the overlay file names")
    if as_json:
        assert json.loads(out.out)["study"]["body_part"] == "WRIST"
