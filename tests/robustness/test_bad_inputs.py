"""Issue 7: the bad-input corpus through the `predict` CLI and the study viewer.

The decoder-level checks of the same corpus live in tests/test_decode.py (DATA); here each hostile
file travels the whole way -- file -> study -> decode -> model -> output -- next to a good file, and
the tests assert that:

- the bad file gets its own clear error naming the file and the reason, with no traceback;
- the good files (and the unusual-but-valid ones: 16-bit, RGBA, palette, CMYK, DICOM) are scored;
- the CLI exits 0 while at least one view was scored, and non-zero when none was;
- the app shows one error card per bad file, scores the rest, and raises no exception.
"""
from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fixtures.harden import Case, bad_input_corpus, good_png, page_text, tiny_weights_dir, write_case

REPO_ROOT = Path(__file__).resolve().parents[2]
APP = str(REPO_ROOT / "app.py")
VIEWER_PAGE = next((p for p in ("pages/study_viewer.py",) if (REPO_ROOT / p).is_file()),
                   "pages/study_viewer.py")
CORPUS = bad_input_corpus()
BAD = [c for c in CORPUS if not c.scored]
VALID = [c for c in CORPUS if c.scored]
SEPARATOR_NAMES = ("../../etc/evil.png", "..\\..\\Windows\\evil2.png")
"""Upload names with path separators; only the last component may survive (`evil.png`, `evil2.png`)."""
TRACEBACK = re.compile(r"Traceback \(most recent call last\)|File \"[^\"]+\", line \d+")


def _ids(cases: list[Case]) -> list[str]:
    return [c.name for c in cases]


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> tuple[Path, str]:
    """A weights folder holding one indexed 64-px random mobilenet_v2 (classic CAM available)."""
    return tiny_weights_dir(tmp_path_factory.mktemp("harden_weights"))


# ----------------------------------------------------------------------------------------------
# the predict CLI
# ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def predict_cli():
    """SCORE's `predict` subcommand module (skips until it exists)."""
    return pytest.importorskip("mura_core.commands.predict", reason="SCORE's predict CLI is not written yet")


def _views_of(report: dict) -> list[dict]:
    """The per-image records of the CLI's JSON (`{"study": {...}, "images": [{"file", ...}]}`)."""
    return report["images"]


def _run_cli(cli, files: list[Path], weights: tuple[Path, str], capsys, *extra: str) -> tuple[int, str, str]:
    """`predict FILES --weights <tiny.pt> --device cpu EXTRA...` in-process; (exit code, stdout, stderr)."""
    folder, name = weights
    argv = [*map(str, files), "--weights", str(folder / f"{name}.pt"), "--device", "cpu", *extra]
    code = cli.cli_main(argv)
    out = capsys.readouterr()
    return int(code or 0), out.out, out.err


@pytest.mark.parametrize("case", CORPUS, ids=_ids(CORPUS))
def test_cli_scores_good_file_next_to_each_corpus_file(case: Case, predict_cli, weights, tmp_path: Path, capsys):
    """`predict good.png <case> --json`: the case is refused by name and reason (or scored), the good
    file is scored, exit code 0, no traceback anywhere."""
    good = tmp_path / "good.png"
    good.write_bytes(good_png())
    other = write_case(case, tmp_path)
    code, out, err = _run_cli(predict_cli, [good, other], weights, capsys, "--json")
    assert code == 0, err
    assert not TRACEBACK.search(out + err), out + err
    views = {Path(v["file"]).name: v for v in _views_of(json.loads(out))}
    assert views["good.png"]["probability"] is not None
    record = views[case.name]
    if case.scored:
        assert 0.0 <= record["probability"] <= 1.0 and not record.get("error")
    else:
        assert record["probability"] is None
        assert case.reason in record["error"]
        assert any(case.name in line and case.reason in line for line in err.splitlines()), err


@pytest.fixture(scope="module")
def plain_run(predict_cli, weights, tmp_path_factory) -> tuple[int, str, str]:
    """One plain-text `predict` run over a good PNG and every bad file: (exit code, stdout, stderr)."""
    folder = tmp_path_factory.mktemp("plain")
    good = folder / "good.png"
    good.write_bytes(good_png())
    paths = [good] + [write_case(c, folder) for c in BAD]
    with pytest.MonkeyPatch.context() as mp:
        out, err = io.StringIO(), io.StringIO()
        mp.setattr(sys, "stdout", out)
        mp.setattr(sys, "stderr", err)
        code = predict_cli.cli_main([*map(str, paths), "--weights", str(weights[0] / f"{weights[1]}.pt"),
                                     "--device", "cpu"])
    return int(code or 0), out.getvalue(), err.getvalue()


def test_cli_plain_output_scores_the_good_file(plain_run):
    """Plain text: exit 0, the good file has a probability, the study is scored, no traceback."""
    code, out, err = plain_run
    assert code == 0
    assert not TRACEBACK.search(out + err), out + err
    assert re.search(r"good\.png: P\(abnormal\)=0\.\d{4}", out), out
    assert re.search(r"^study .*P\(abnormal\)=", out, re.M), out


@pytest.mark.parametrize("case", BAD, ids=_ids(BAD))
def test_cli_plain_output_names_each_bad_file_and_reason(plain_run, case: Case):
    """Plain text: one line names the bad file with its reason."""
    _, out, _ = plain_run
    lines = [line for line in out.splitlines() if line.split(": ", 1)[0].endswith(case.name)
             or f"/{case.name}:" in line]
    assert len(lines) == 1 and "UNREADABLE" in lines[0] and case.reason in lines[0], out


def test_cli_only_bad_files_exit_non_zero(predict_cli, weights, tmp_path: Path, capsys):
    """No view scored: a non-zero exit, valid JSON, and every file still named with its reason."""
    cases = [c for c in BAD if c.sparse_size is None]
    paths = [write_case(c, tmp_path) for c in cases]
    code, out, err = _run_cli(predict_cli, paths, weights, capsys, "--json")
    assert code != 0
    assert not TRACEBACK.search(out + err)
    report = json.loads(out)
    assert report["study"]["probability"] is None
    for case, record in zip(cases, _views_of(report)):
        assert Path(record["file"]).name == case.name and case.reason in record["error"]


def _special_file(kind: str, folder: Path) -> Path:
    """A path that is not a regular file: a named pipe with no writer, an endless device, a folder."""
    if kind == "fifo":
        path = folder / "pipe.png"
        os.mkfifo(path)
        return path
    if kind == "device":
        return Path("/dev/zero")
    path = folder / "folder.png"
    path.mkdir()
    return path


SPECIAL = ["fifo", "device", "folder"]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", SPECIAL)
def test_special_files_are_refused_without_reading(kind: str, tmp_path: Path):
    """`decode_view` refuses a pipe (which would block forever), `/dev/zero` (which never ends and used
    to be read until memory ran out) and a folder, by name, before reading a byte."""
    if kind != "folder" and not (hasattr(os, "mkfifo") and Path("/dev/zero").exists()):
        pytest.skip("needs POSIX pipes and /dev/zero")
    from mura_core.imaging.decode import DecodeError, decode_view
    from mura_core.data.studies import View

    path = _special_file(kind, tmp_path)
    with pytest.raises(DecodeError, match="not a regular file") as caught:
        decode_view(View(path.name, path))
    assert caught.value.file == path.name


@pytest.mark.timeout(120)
def test_cli_refuses_special_files_and_scores_the_rest(predict_cli, weights, tmp_path: Path, capsys):
    """`predict good.png <pipe> /dev/zero <folder>` returns promptly: three clear refusals, one score."""
    if not (hasattr(os, "mkfifo") and Path("/dev/zero").exists()):
        pytest.skip("needs POSIX pipes and /dev/zero")
    good = tmp_path / "good.png"
    good.write_bytes(good_png())
    specials = [_special_file(kind, tmp_path) for kind in SPECIAL]
    code, out, err = _run_cli(predict_cli, [good, *specials], weights, capsys, "--json", "--cam", "none")
    assert code == 0 and not TRACEBACK.search(out + err)
    images = _views_of(json.loads(out))
    assert images[0]["probability"] is not None
    assert [("not a regular file" in (i["error"] or "")) for i in images[1:]] == [True, True, True]


@pytest.mark.timeout(120)
def test_app_scoring_a_study_with_a_pipe_does_not_hang(weights, tmp_path: Path):
    """`app_state.score_study` (the viewer's path for dataset studies) on a study whose second view is
    a named pipe answers within 20 s, with the pipe reported as unreadable."""
    if not hasattr(os, "mkfifo"):
        pytest.skip("needs POSIX pipes")
    import threading

    from mura_core.data.studies import Study, View

    good, pipe = tmp_path / "good.png", tmp_path / "pipe.png"
    good.write_bytes(good_png())
    os.mkfifo(pipe)
    study = Study("piped", (View("good.png", good), View("pipe.png", pipe)))
    results: list = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MURA_WEIGHTS_DIR", str(weights[0]))
        from mura_core.app import services as app_state

        worker = threading.Thread(target=lambda: results.append(app_state.score_study(weights[1], study, cam=None)),
                                  daemon=True)
        worker.start()
        worker.join(20)
        hung = worker.is_alive()
        if hung:
            with open(pipe, "wb"):  # a writer that closes at once: the blocked reader gets end-of-file
                pass
            worker.join(60)
    assert not hung, "scoring blocked on the pipe"
    result, _ = results[0]
    assert dict(result.errors)["pipe.png"].startswith("not a regular file")


def test_cli_file_name_cannot_forge_output_lines(predict_cli, weights, tmp_path: Path, capsys):
    """A file whose name holds a newline (e.g. from `predict incoming/*`) cannot add a line of its own
    to the plain output or to stderr."""
    good = tmp_path / "good.png"
    good.write_bytes(good_png())
    forged = tmp_path / "x.png\nFORGED study: P(abnormal)=0.0100 -> normal"
    forged.write_bytes(b"not an image")
    code, out, err = _run_cli(predict_cli, [good, forged], weights, capsys, "--cam", "none")
    assert code == 0
    assert not [line for line in (out + err).splitlines() if line.startswith("FORGED")], out + err


def test_cli_subprocess_whole_corpus(predict_cli, weights, tmp_path: Path):
    """The real command on the whole corpus at once, with overlays: exit 0, valid JSON, every file
    accounted for; the file whose name holds `..` and backslashes is scored and its overlay lands
    inside --out; stderr holds no traceback."""
    folder, name = weights
    data = tmp_path / "in"
    data.mkdir()
    paths = [write_case(c, data) for c in CORPUS]
    odd = data / "..\\..\\evil.png"  # backslashes are ordinary characters in a Linux file name
    odd.write_bytes(good_png(seed=5))
    out_dir = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run([sys.executable, "-m", "mura_core", "predict", *map(str, paths), str(odd),
                           "--weights", str(folder / f"{name}.pt"), "--device", "cpu", "--cam", "gradcam",
                           "--out", str(out_dir), "--json"],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert not TRACEBACK.search(proc.stdout + proc.stderr), proc.stderr
    views = _views_of(json.loads(proc.stdout))
    assert len(views) == len(CORPUS) + 1
    by_name = {Path(v["file"]).name: v for v in views}
    for case in CORPUS:
        record = by_name[case.name]
        assert (record["probability"] is not None) == case.scored, record
    assert by_name[odd.name]["probability"] is not None
    overlays = [Path(v["overlay"]) for v in views if v["overlay"]]
    assert len(overlays) == len(VALID) + 1
    assert all(p.resolve().parent == out_dir.resolve() and p.is_file() for p in overlays)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "out"]


# ----------------------------------------------------------------------------------------------
# the study viewer (AppTest)
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def viewer_with_corpus(weights):
    """The study viewer after uploading, in one go, a good PNG, the whole corpus and two files whose
    names hold path separators."""
    from streamlit.testing.v1 import AppTest

    folder, _ = weights
    files = [("good.png", good_png())] + [(c.name, c.make()) for c in CORPUS]
    files += [(n, good_png(seed=7 + i)) for i, n in enumerate(SEPARATOR_NAMES)]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MURA_WEIGHTS_DIR", str(folder))
        mp.delenv("MURA_DATA", raising=False)
        at = AppTest.from_file(APP, default_timeout=300).run()
        at.switch_page(VIEWER_PAGE).run()
        at.file_uploader(key="viewer_upload").set_value([(n, b, "application/octet-stream") for n, b in files])
        at.run()
        yield at


def test_app_shows_no_exception_or_traceback(viewer_with_corpus):
    """Nothing the corpus does reaches the page as an exception element or a traceback."""
    at = viewer_with_corpus
    assert not at.exception, at.exception
    assert not TRACEBACK.search(page_text(at))


@pytest.mark.parametrize("case", BAD, ids=_ids(BAD))
def test_app_error_card_per_bad_file(viewer_with_corpus, case: Case):
    """Exactly one error card names the bad file and gives the decoder's reason."""
    cards = [e.value for e in viewer_with_corpus.error if f"**{case.name}**" in e.value]
    assert len(cards) == 1, [e.value for e in viewer_with_corpus.error]
    assert case.reason in cards[0] and "could not be read" in cards[0]


@pytest.mark.parametrize("case", VALID, ids=_ids(VALID))
def test_app_scores_each_valid_file(viewer_with_corpus, case: Case):
    """The unusual-but-valid files get an image, a heat-map overlay and a probability."""
    captions = [c for img in viewer_with_corpus.image for c in img.captions]
    assert any(c.startswith(f"{case.name} — image") for c in captions), captions
    assert any(c.startswith(f"{case.name} — ") and "heat map" in c for c in captions), captions


def test_app_study_is_scored_from_the_good_views(viewer_with_corpus):
    """The study gets a probability; the summary counts the unreadable files; one card per bad file."""
    at = viewer_with_corpus
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Study probability (abnormal)"].endswith("%")
    per_view = [m for m in at.metric if m.label == "P(abnormal)"]
    assert len(per_view) == 1 + len(VALID) + len(SEPARATOR_NAMES)
    assert any(f"{len(BAD)} files were unreadable" in m.value for m in at.markdown)
    assert len(at.error) == len(BAD)


def test_app_upload_names_lose_their_path_separators(viewer_with_corpus):
    """`../../etc/evil.png` and `..\\..\\Windows\\evil2.png` become `evil.png` and `evil2.png` and are
    scored; no view title keeps a separator or a `..`."""
    at = viewer_with_corpus
    titles = [m.value for m in at.markdown if m.value.startswith("#### View")]
    assert any(t.endswith(": evil.png") for t in titles) and any(t.endswith(": evil2.png") for t in titles)
    for title in titles:
        name = title.split(": ", 1)[1].replace(" — drives the study", "")
        assert "/" not in name and "\\" not in name and ".." not in name, title
