"""A printable study report (one self-contained HTML file) for the viewer and the worklist.

It holds the views and their heat-map overlays (PNG, embedded), the per-view and study scores, the
threshold and the decision, the model (name, sha256, card summary), the date and the second-reader
disclaimer. It is built from the scored `StudyResult` only: no DICOM tag is ever read here, so no
identifying value (names, ids, dates, institution) can reach the report. Images are scaled to at most
`MAX_SIDE` pixels so the file stays small. The browser's "Print" turns it into a PDF (print styles
included); no PDF library is needed.

Example:
    >>> html = study_report_html(result, model_name="hybrid", card=card, study_id="upload")  # doctest: +SKIP
"""
from __future__ import annotations

import base64
import html
import re
from collections.abc import Callable
from typing import Any

import numpy as np

from mura_core.app.views import (DISCLAIMER, card_summary, decision_label, format_probability, left_out_of_scope,
                                 study_summary, thumbnail, to_png_bytes, view_panels, view_status)

__all__ = ["MAX_SIDE", "report_file_name", "study_report_html"]

MAX_SIDE = 512
"""Longest side of the embedded images, in pixels."""

_STYLE = """
body{font-family:system-ui,Arial,sans-serif;margin:2em;color:#111}
h1{font-size:1.5em;margin-bottom:0}.sub{color:#555;margin-top:.2em}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:4px 8px;text-align:left}
.views{display:flex;flex-wrap:wrap;gap:1em}.view{break-inside:avoid;border:1px solid #ddd;padding:.5em}
.view img{max-width:320px;display:inline-block;margin-right:.3em}
.disclaimer{border:2px solid #b00;padding:.7em;margin:1.5em 0;background:#fff5f5}
.error{color:#b00}
@media print{body{margin:1cm}.view{page-break-inside:avoid}}
"""


def _markdown_to_html(text: str) -> str:
    """The few markdown marks the summaries use (**bold**, `code`, line breaks) as escaped HTML."""
    out = html.escape(text)
    out = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", out)
    out = re.sub(r"`(.+?)`", r"<code>\1</code>", out)
    return out.replace("  \n", "<br>").replace("\n", "<br>")


def _img(image: np.ndarray, alt: str) -> str:
    small = thumbnail(np.asarray(image), MAX_SIDE) if max(np.asarray(image).shape[:2]) > MAX_SIDE else image
    data = base64.b64encode(to_png_bytes(small)).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'


def _score_line(view: Any) -> str:
    """Under a view's images: its probability, or why it has none (left out as outside the model's scope)."""
    if left_out_of_scope(view):
        return html.escape(view_status(view))
    return f"P(abnormal) {format_probability(view.probability)}"


def report_file_name(study_id: str | None) -> str:
    """A safe download name: ``report_<study>.html``."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", str(study_id or "study")).strip("._") or "study"
    return f"report_{stem[:80]}.html"


def study_report_html(result: Any, *, model_name: str, card: Any = None, sha256: str | None = None,
                      study_id: str | None = None, cam: str | None = None, created: str | None = None,
                      overlay_fn: Callable[..., np.ndarray] | None = None, colormap: str = "jet",
                      alpha: float = 0.4) -> str:
    """The study report as one HTML page (see the module notes); `result` is a scored StudyResult."""
    if overlay_fn is None:
        from mura_core.explain.cams import overlay as overlay_fn
    if created is None:
        from mura_core.models.checkpoints import utc_now

        created = utc_now()
    part = str(getattr(result.body_part, "value", result.body_part) or "UNKNOWN")
    rows = [("Study", study_id or "—"), ("Body part", part),
            ("Study probability (abnormal)", format_probability(result.probability)),
            ("Decision", decision_label(result)), ("Threshold", format_probability(result.threshold)),
            ("Aggregate", f"{result.aggregate} of the views"),
            ("Heat map", cam or getattr(result, "cam", None) or "none"),
            ("Model", model_name + (f" (sha256 {sha256[:12]}…)" if sha256 else ""))]
    reason = getattr(result, "threshold_reason", "")
    if reason:
        rows.insert(5, ("Threshold applied", reason))
    facts = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
    view_rows, panels = [], []
    for i, view in enumerate(result.views):
        drives = i == result.driving_view
        status = view_status(view)
        view_rows.append(f"<tr><td>{i + 1}</td><td>{html.escape(view.name)}</td>"
                         f"<td>{format_probability(view.probability)}</td><td>{'yes' if drives else ''}</td>"
                         f"<td>{html.escape(status)}</td></tr>")
        if view.image is None:
            panels.append(f'<div class="view"><b>{html.escape(view.name)}</b><p class="error">'
                          f"could not be read: {html.escape(view.error or 'no image')}</p></div>")
            continue
        plain, over = view_panels(view, overlay_fn, colormap=colormap, alpha=alpha)
        images = _img(plain, f"{view.name} image") + (_img(over, f"{view.name} heat map") if over is not None
                                                      else "<i>no heat map</i>")
        panels.append(f'<div class="view"><b>View {i + 1}: {html.escape(view.name)}</b>'
                      f"{' — drives the study' if drives else ''}<br>{images}<br>"
                      f"{_score_line(view)}</div>")
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>Study report {html.escape(study_id or '')}</title><style>{_STYLE}</style></head><body>"
        f"<h1>Study report</h1><p class='sub'>Bone X-ray abnormality scores (after Stanford's MURA) — "
        f"created {html.escape(created)}</p>"
        f"<div class='disclaimer'>{_markdown_to_html(DISCLAIMER)}</div>"
        f"<p>{_markdown_to_html(study_summary(result))}</p><table>{facts}</table>"
        "<h2>Views</h2><table><tr><th>#</th><th>view</th><th>P(abnormal)</th><th>drives the study</th>"
        f"<th>status</th></tr>{''.join(view_rows)}</table><div class='views'>{''.join(panels)}</div>"
        f"<h2>Model</h2><p>{_markdown_to_html(card_summary(card))}</p>"
        "<p class='sub'>Identifying DICOM tags are never read into this report.</p></body></html>")
