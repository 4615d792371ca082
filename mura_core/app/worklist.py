"""The Worklist page's helpers: score a folder in this session, filter the rows, table and CSV.

Scoring runs `evaluation.worklist.score_studies` on the app's shared Predictor (scores only, decoding in
this process: no worker processes are forked from the server) in float32, the precision the viewer scores in,
so a study opened from the list shows the very probability listed (the ``score`` command's bf16 default is
for archives, outside the app), each view's scope checked by the model's fitted
heads on the features of its scoring forward, and keeps the rows in the session; nothing
is written to disk. The CSV download is `evaluation.worklist.worklist_csv` of every row.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import streamlit as st

from mura_core.app import services
from mura_core.data.roots import is_within
from mura_core.evaluation.worklist import NOT_CHECKED, WorklistRow, score_studies, sorted_rows
from mura_core.explain.heads import predictor_heads

__all__ = ["SCOPE_KINDS", "filter_rows", "run_worklist", "scope_kind", "table_rows", "worklist_rows"]

SCOPE_KINDS: tuple[str, ...] = ("in scope", "warning", "out of scope", NOT_CHECKED)
"""The scope filter's choices."""

_KEY = "worklists"


def scope_kind(scope: str) -> str:
    """A row's scope text as one of `SCOPE_KINDS`."""
    if scope.startswith("out of scope"):
        return "out of scope"
    if scope in ("in scope", NOT_CHECKED):
        return scope
    return "warning"


def filter_rows(rows: Sequence[WorklistRow], *, body_parts: Sequence[str] = (), decisions: Sequence[str] = (),
                scopes: Sequence[str] = ()) -> list[WorklistRow]:
    """Rows matching every non-empty filter (body parts, decisions, scope kinds), still sorted."""
    return [r for r in rows
            if (not body_parts or r.body_part in body_parts) and (not decisions or r.decision in decisions)
            and (not scopes or scope_kind(r.scope) in scopes)]


def table_rows(rows: Sequence[WorklistRow]) -> list[dict[str, Any]]:
    """What the page's table shows: rank, study, probability (%), decision, threshold, body part, ..."""
    return [{"rank": k, "study": r.study,
             "probability (%)": None if r.probability is None else round(100 * r.probability, 1),
             "decision": r.decision, "threshold (%)": round(100 * r.threshold, 1), "body part": r.body_part,
             "driving view": r.driving_view, "views": f"{r.scored}/{r.views}", "scope": r.scope,
             "unreadable": r.unreadable, "label": r.label}
            for k, r in enumerate(rows, start=1)]


def _key(model: str, data: str) -> str:
    return f"{model}::{data}"


def worklist_rows(model: str | None, data: str) -> list[WorklistRow] | None:
    """This session's worklist for this model and data folder (None when not scored yet)."""
    if model is None:
        return None
    return st.session_state.get(_KEY, {}).get(_key(model, data))


def run_worklist(model: str, data: str, progress: Callable[[int, int], None] | None = None
                 ) -> tuple[list[WorklistRow], list[str]]:
    """Score every study of a data folder inside the allowed roots; keep and return the sorted rows and
    the reader's problems. Views outside the folder are never opened."""
    from mura_core.data.roots import safe_study

    resolved = Path(data).expanduser().resolve()
    services.remember_root(resolved)
    if not is_within(resolved, services.allowed_roots()):
        raise ValueError(f"{data} is not inside a configured data folder")
    index = services.open_dataset_cached(str(resolved))
    root = resolved if resolved.is_dir() else resolved.parent
    studies, problems = [], list(index.problems)
    for study in index.studies:
        safe, refused = safe_study(study, root)
        problems += refused
        if safe.views:
            studies.append(safe)
    total = sum(len(s.views) for s in studies)
    seen = 0

    def advance(n: int) -> None:
        nonlocal seen
        seen += n
        if progress is not None:
            progress(seen, total)

    rows: list[WorklistRow] = []
    predictor = services.get_predictor(model)
    heads, refused = predictor_heads(predictor)
    problems += [f"scope check not available: {refused}"] if refused else []
    for done in score_studies(predictor, studies, batch_size=16, workers=0, heads=heads, amp=False,
                              on_images=advance):
        rows.extend(done)
    rows = sorted_rows(rows)
    st.session_state.setdefault(_KEY, {})[_key(model, str(resolved))] = rows
    return rows, problems
