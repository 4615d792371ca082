"""Issue 7: many threads share one cached Predictor and still get exactly the one-at-a-time answers.

The model is a 64-px random-weight DenseNet-121 (the production family: its CAM layer is the real
`features.relu5` module), loaded through the app's own cache (`app_state.get_predictor`), so the
object under test is the one every Streamlit session of a server shares. Eight threads start together
(a barrier) and each scores a different study with cam, gradcam, hirescam and scores-only, in a
different order per thread, so hooked and unhooked forwards of different methods overlap. If hooks
mixed activations between threads, a heat map or a probability would differ from the sequential run.
"""
from __future__ import annotations

import contextlib
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from fixtures.harden import good_png, quadrant_png, tiny_weights_dir
from mura_core.data.studies import Study, View

pytestmark = pytest.mark.usefixtures("one_torch_thread")

THREADS = 8
METHODS = ("cam", "gradcam", "hirescam", None)
"""None = scores only (an unhooked forward under inference mode)."""


def _study(i: int) -> Study:
    """Study i: two views of different sizes whose bright quadrants differ from each other and from
    the neighbouring studies' (so a swapped heat map shows in its values and in its shape)."""
    views = (View(f"s{i}_a.png", data=quadrant_png(i % 4, 60 + 4 * i, 50 + 3 * i, seed=100 + i)),
             View(f"s{i}_b.png", data=quadrant_png((i + 2) % 4, 48, 72 - 2 * i, seed=200 + i)))
    return Study(f"study{i}", views)


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """(predictor from the app's cache, model name) with MURA_WEIGHTS_DIR pointing at a tiny DenseNet."""
    folder, name = tiny_weights_dir(tmp_path_factory.mktemp("conc_weights"), arch="densenet121")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MURA_WEIGHTS_DIR", str(folder))
        from mura_core.app import services as app_state

        predictor = app_state.get_predictor(name)
        assert app_state.get_predictor(name) is predictor  # cached: one object for everyone
        yield predictor, name


def _signature(result) -> tuple[list[float | None], list[np.ndarray | None]]:
    return [v.probability for v in result.views], [v.heatmap for v in result.views]


def _assert_same(got, expected, label: str) -> None:
    probs_got, maps_got = got
    probs_exp, maps_exp = expected
    assert probs_got == pytest.approx(probs_exp, abs=1e-6), label
    for g, e in zip(maps_got, maps_exp):
        if e is None:
            assert g is None, label
        else:
            assert g.shape == e.shape, label
            np.testing.assert_allclose(g, e, atol=1e-6, err_msg=label)


@contextlib.contextmanager
def _race_window(model: torch.nn.Module, seconds: float = 0.02):
    """Sleep inside every forward between the CAM layer (`features.relu5`) and the logit.

    The sleep changes no number; it widens the moment in which another thread's forward could pass the
    CAM layer and overwrite this thread's captured activation if hooks were not kept per thread / locked.
    """
    handle = model.pool.register_forward_hook(lambda *_: time.sleep(seconds))
    try:
        yield
    finally:
        handle.remove()


def _hooks(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def _plan(i: int) -> tuple[str | None, ...]:
    """Thread i's two methods: consecutive in METHODS from a different start per thread, so at any
    moment threads run different methods and every method is run by two threads."""
    return METHODS[i % len(METHODS)], METHODS[(i + 1) % len(METHODS)]


@pytest.mark.slow
def test_eight_threads_match_sequential(shared):
    """8 threads, each a different study with two of (cam, gradcam, hirescam, scores only), through one
    Predictor: probabilities and heat maps equal the sequential run's (1e-6)."""
    predictor, _ = shared
    studies = [_study(i) for i in range(THREADS)]
    expected = {(i, m): _signature(predictor.predict_study(studies[i], cam=m))
                for i in range(THREADS) for m in _plan(i)}
    barrier = threading.Barrier(THREADS)

    def work(i: int) -> dict:
        barrier.wait()
        return {(i, m): _signature(predictor.predict_study(studies[i], cam=m)) for m in _plan(i)}

    model = predictor.members[0].model
    with _race_window(model), ThreadPoolExecutor(THREADS) as pool:
        results = [f.result(timeout=600) for f in [pool.submit(work, i) for i in range(THREADS)]]
    got = {k: v for part in results for k, v in part.items()}
    assert got.keys() == expected.keys()
    assert {m for _, m in got} == set(METHODS)
    for key in expected:
        _assert_same(got[key], expected[key], f"study {key[0]}, method {key[1]}")
    assert _hooks(model) == 0
    assert torch.is_grad_enabled()


def test_concurrent_sessions_through_app_score_study(shared):
    """`app_state.score_study` (what each Streamlit session calls) from 8 threads at once gives the
    direct Predictor's numbers, caches each study once, and serves repeats from the cache."""
    from mura_core.app import services as app_state

    predictor, name = shared
    app_state.result_cache().clear()
    studies = [_study(10 + i) for i in range(THREADS)]
    methods = [METHODS[i % 3] for i in range(THREADS)]
    expected = [_signature(predictor.predict_study(s, cam=m)) for s, m in zip(studies, methods)]
    barrier = threading.Barrier(THREADS)

    def session(i: int):
        barrier.wait()
        return app_state.score_study(name, studies[i], cam=methods[i])

    with ThreadPoolExecutor(THREADS) as pool:
        first = list(pool.map(session, range(THREADS), timeout=600))
    for i, (result, cached) in enumerate(first):
        assert not cached
        _assert_same(_signature(result), expected[i], f"session {i}")
    with ThreadPoolExecutor(THREADS) as pool:
        again = list(pool.map(session, range(THREADS), timeout=600))
    assert all(cached for _, cached in again)
    assert all(a is f for (a, _), (f, _) in zip(again, first))


def test_threads_with_bad_files_keep_their_own_errors(shared):
    """Errors stay with their own study: a thread whose study holds a broken file reports it, the
    others report nothing, and every good view is still scored."""
    predictor, _ = shared
    studies = [Study(f"mix{i}", (View(f"ok{i}.png", data=good_png(seed=300 + i)),
                                 View(f"bad{i}.png", data=b"\x89PNG\r\n\x1a\n" + bytes(40))))
               if i % 2 else _study(20 + i) for i in range(THREADS)]
    barrier = threading.Barrier(THREADS)

    def work(i: int):
        barrier.wait()
        return predictor.predict_study(studies[i], cam="gradcam")

    with ThreadPoolExecutor(THREADS) as pool:
        results = list(pool.map(work, range(THREADS), timeout=600))
    for i, result in enumerate(results):
        names = [v.name for v in result.views]
        assert names == [v.name for v in studies[i].views]
        if i % 2:
            assert [n for n, _ in result.errors] == [f"bad{i}.png"]
        else:
            assert result.errors == []
        assert result.scored == (1 if i % 2 else 2)
