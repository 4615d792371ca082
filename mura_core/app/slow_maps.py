"""Slow heat maps (ScoreCAM, AblationCAM) in the study viewer: an estimate first, then a button, a progress
bar per view, a stop, and the server's one-slow-run-at-a-time cap.

The viewer scores the study without heat maps (fast) when a slow method is chosen; this module then
offers the slow maps. Each view's map comes from `services.slow_map`, the Compare page's machinery
(`explain.slow`: estimate, progress, cancel; `explain.cams`: the one-slow-run-per-server gate and the
silenced progress bars, so nothing prints into the server log), cached per (model, image, method,
target). Nothing slow starts before the button is pressed. Stop, or any change of setting, reruns the
page, which ends the run at its next progress update; views already done stay cached.
"""
from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import streamlit as st

__all__ = ["format_seconds", "image_key", "scorable_views", "slow_panel", "with_slow_maps"]


def image_key(image: np.ndarray) -> str:
    """A cache key for the pixels a view was scored on (shape, dtype and bytes)."""
    pixels = np.ascontiguousarray(image)
    digest = hashlib.sha256(f"{pixels.shape}{pixels.dtype}".encode())
    digest.update(pixels.tobytes())
    return digest.hexdigest()


def scorable_views(result: Any) -> list[int]:
    """Indices of the views that were scored (a probability and pixels): the ones a heat map is drawn for."""
    return [i for i, v in enumerate(result.views) if v.probability is not None and v.input_image is not None]


def format_seconds(seconds: float) -> str:
    """A duration for a reader: 'under 1 s', '42 s', '4 min'."""
    if seconds < 1:
        return "under 1 s"
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min"


def with_slow_maps(result: Any, heatmaps: Mapping[int, np.ndarray], method: str) -> Any:
    """A copy of the scored study with view i's heat map set from `heatmaps[i]` (any size, resized to the
    view's image) and its peak, and `method` named as its heat map once any view has one; the cached
    result itself is left untouched."""
    from mura_core.explain.cams import heatmap_peak, resize_heatmap

    views = list(result.views)
    for i, heat in heatmaps.items():
        full = resize_heatmap(heat, views[i].image.shape[:2])
        views[i] = dataclasses.replace(views[i], heatmap=full,
                                       peak=heatmap_peak(full) if full.max() > 0 else None)
    return dataclasses.replace(result, views=views, cam=method if heatmaps else result.cam)


def _run_views(model: str, result: Any, method: str, target: str, keys: Mapping[int, str],
               todo: Sequence[int]) -> dict[int, Any]:
    """Run the slow method view by view, one progress bar each and a Stop button; {index: MapRun} done."""
    from mura_core.app import services
    from mura_core.explain.slow import SlowBusy

    labels = {i: f"View {i + 1}: {result.views[i].name}" for i in todo}
    bars = {i: st.progress(0.0, text=f"{labels[i]} — waiting") for i in todo}
    st.button("Stop", key="viewer_slow_stop", help="Stops the run; views already done keep their maps.")
    done: dict[int, Any] = {}
    for i in todo:
        def show(fraction: float, bar: Any = bars[i], label: str = labels[i]) -> None:
            bar.progress(min(1.0, fraction), text=f"{label} — {method} {fraction:.0%}")
        try:
            done[i] = services.slow_map(model, keys[i], method, target, result.views[i].input_image, _progress=show)
        except SlowBusy as exc:
            st.warning(str(exc), icon=":material/hourglass_top:")
            break
        bars[i].progress(1.0, text=f"{labels[i]} — {method} done in {format_seconds(done[i].seconds)}")
    return done


def _offer(model: str, result: Any, method: str, target: str, keys: Mapping[int, str], todo: Sequence[int],
           estimate: str, tta: bool) -> dict[int, Any]:
    """The estimate and the button; on a press, the run ({index: MapRun} of the views done), else {}."""
    n = f"{len(todo)} view{'s' if len(todo) != 1 else ''}"
    st.info(f"**{method} is slow**: hundreds of extra forward passes per view, about **{estimate}** for "
            f"{n} on this server. Nothing runs until you press the button; one slow run at a time per "
            "server, and Stop (or any change of setting) cancels it."
            + (" The slow maps are computed without the test-time flip." if tta else ""),
            icon=":material/timer:")
    if st.button(f"Compute {method} for {n} (about {estimate})", key="viewer_slow_run", type="primary"):
        return _run_views(model, result, method, target, keys, todo)
    return {}


def slow_panel(model: str, result: Any, method: str, target: str, *, tta: bool = False) -> Any:
    """The slow method's estimate and button for the study's views; the study with the maps computed so far.

    Views whose map is cached get it at once; for the others the panel shows the estimate and starts only
    when its button is pressed. A finished run leaves one line in place of the panel.
    """
    from mura_core.app import services

    views = scorable_views(result)
    keys = {i: image_key(result.views[i].input_image) for i in views}
    runs = {i: run for i in views if (run := services.slow_map_cached(model, keys[i], method, target)) is not None}
    todo = [i for i in views if i not in runs]
    if todo:
        first = todo[0]
        per_view = services.slow_estimate(model, keys[first], method, result.views[first].input_image)
        panel = st.empty()
        with panel.container():
            ran = _offer(model, result, method, target, keys, todo, format_seconds(per_view * len(todo)), tta)
        runs.update(ran)
        if ran and len(ran) == len(todo):
            panel.success(f"{method}: {len(ran)} view{'s' if len(ran) != 1 else ''} in "
                          f"{format_seconds(sum(r.seconds for r in ran.values()))}.", icon=":material/check:")
    return with_slow_maps(result, {i: run.heatmap for i, run in runs.items()}, method)
