"""Tests for mura_core.explain.slow: estimate, progress, cancel, the one-at-a-time gate, a quiet log."""
from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
import torch

from mura_core.explain import slow
from tests.explain.test_cams import TOY_SPEC, ToyCNN, _hooks

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture()
def toy():
    torch.manual_seed(0)
    return ToyCNN().eval(), torch.randn(1, 3, 16, 16)


def test_forward_count_and_estimate(toy):
    model, x = toy
    assert slow.forward_count(model, TOY_SPEC, x, "scorecam") == 17  # 16 channels + the plain pass
    assert slow.forward_count(model, TOY_SPEC, x, "gradcam") == 1
    assert slow.estimate_seconds(model, TOY_SPEC, x, "scorecam") > 0
    assert _hooks(model) == 0


def test_progress_reaches_one_and_nothing_is_printed(toy, capsys):
    model, x = toy
    seen: list[float] = []
    maps, logits = slow.run_slow(model, TOY_SPEC, x, "scorecam", progress=seen.append)
    assert maps.shape == (1, 16, 16) and logits.shape == (1,)
    assert seen[-1] == 1.0 and seen == sorted(seen) and len(seen) > 2
    captured = capsys.readouterr()
    assert "it/s" not in captured.err and "%|" not in captured.err
    assert _hooks(model) == 0


def test_cancel_stops_the_run_and_frees_the_gate(toy):
    model, x = toy
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(slow.SlowCancelled):
        slow.run_slow(model, TOY_SPEC, x, "ablationcam", cancel=cancel)
    assert _hooks(model) == 0
    slow.run_slow(model, TOY_SPEC, x, "scorecam")  # the gate was released


@contextmanager
def slow_run_under_way(model: torch.nn.Module, x: torch.Tensor) -> Iterator[None]:
    """A ScoreCAM run on another thread, held at its first progress report until the block ends."""
    started, release = threading.Event(), threading.Event()

    def blocking(_fraction: float) -> None:
        started.set()
        release.wait(10)

    worker = threading.Thread(target=lambda: slow.run_slow(model, TOY_SPEC, x, "scorecam", progress=blocking))
    worker.start()
    try:
        assert started.wait(10)
        yield
    finally:
        release.set()
        worker.join(30)


def test_a_second_slow_run_is_refused_while_one_runs(toy):
    model, x = toy
    errors: list[Exception] = []
    with slow_run_under_way(model, x):
        try:
            slow.run_slow(ToyCNN().eval(), TOY_SPEC, x, "scorecam")
        except slow.SlowBusy as exc:
            errors.append(exc)
    assert len(errors) == 1


def test_fast_maps_of_the_same_model_run_while_a_slow_one_is_under_way(toy):
    from mura_core.explain.cams import explain_batch

    model, x = toy
    with slow_run_under_way(model, x):
        done = threading.Event()
        fast = threading.Thread(target=lambda: (explain_batch(model, TOY_SPEC, x, "gradcam"), done.set()))
        fast.start()
        assert done.wait(10), "a fast map waited for the slow one"
        fast.join()
    assert _hooks(model) == 0
