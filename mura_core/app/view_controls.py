"""Per-view controls and checks of the study viewer: each DICOM view's own window/level (display only), the
scope warning with its "score anyway" choice, and the body-part suggestion in the sidebar picker."""
from __future__ import annotations

import hashlib
from typing import Any

import streamlit as st

__all__ = ["checked_study", "kept_views", "prefill_body_part", "remember_suggestion", "scope_notice",
           "suggestion_caption", "view_key", "view_window_controls"]

FULL_12_BIT = (2048.0, 4096.0)


def view_key(prefix: str, index: int, name: str) -> str:
    """A widget key unique to one view of the current study (index and a short hash of its name)."""
    digest = hashlib.sha256(str(name).encode("utf-8", "replace")).hexdigest()[:8]
    return f"{prefix}_{index}_{digest}"


def view_window_controls(index: int, view: Any) -> tuple[float, float] | None:
    """Window/level inputs for one DICOM view, starting at its own window; None when not set or not DICOM.

    The window changes what is shown only: the score and heat map come from the file's own window.
    """
    meta = getattr(view, "meta", None)
    if getattr(meta, "format", None) != "DICOM":
        return None
    own = tuple(meta.window) if meta.window else FULL_12_BIT
    on_key = view_key("viewer_window_on", index, view.name)
    with st.expander("Window/level (display only)", expanded=bool(st.session_state.get(on_key))):
        if not st.checkbox("Set window/level for this view", key=on_key,
                           help="Changes the display only; the model always scores the file's own window."):
            return None
        wc_key, ww_key = view_key("viewer_wc", index, view.name), view_key("viewer_ww", index, view.name)
        st.session_state.setdefault(wc_key, float(own[0]))
        st.session_state.setdefault(ww_key, float(own[1]))
        centre = st.number_input("Window centre (level)", step=50.0, key=wc_key)
        width = st.number_input("Window width", min_value=1.0, step=50.0, key=ww_key)
    return float(centre), float(width)


def kept_views(result: Any) -> set[int]:
    """Indices of out-of-scope views the reader chose to score and keep in the study (their checkboxes)."""
    return {i for i, view in enumerate(result.views)
            if st.session_state.get(view_key("viewer_keep", i, view.name))}


def scope_notice(index: int, view: Any) -> bool:
    """Warn on an out-of-scope view and offer to score it; True when its score may be shown."""
    from mura_core.explain.scope import warning_text

    scope = getattr(view, "scope", None)
    if scope is None or scope.in_scope:
        return True
    st.warning(f"{warning_text(scope)} Its score is hidden and left out of the study probability.",
               icon=":material/block:")
    return st.checkbox("Score this view anyway and keep it in the study", key=view_key("viewer_keep", index, view.name),
                       help=f"Scope score {scope.score:.2f} (1 or more is out of scope).")


SUGGESTION_KEY = "viewer_suggestion"
_PREFILLED_KEY = "viewer_part_prefilled"


def remember_suggestion(suggestion: Any) -> bool:
    """Store the current study's body-part suggestion; True when it changed (the page then reruns so the
    sidebar picker, drawn before scoring, shows it)."""
    if st.session_state.get(SUGGESTION_KEY) == suggestion:
        return False
    st.session_state[SUGGESTION_KEY] = suggestion
    return True


def prefill_body_part(key: str = "viewer_part") -> None:
    """Pre-fill the body-part picker with the suggested MURA part unless the reader picked another part.

    A region (FracAtlas's hand/wrist/forearm...) is not one of the picker's parts: the picker stays on
    automatic and the caption names the region. Call before the picker is drawn.
    """
    suggestion = st.session_state.get(SUGGESTION_KEY)
    current = st.session_state.get(key, "auto")
    if current not in ("auto", st.session_state.get(_PREFILLED_KEY)):
        return  # the reader's own choice wins
    target = suggestion.part if suggestion is not None and suggestion.usable else "auto"
    st.session_state[key] = target
    st.session_state[_PREFILLED_KEY] = None if target == "auto" else target


def suggestion_caption() -> str:
    """The sidebar line naming the suggestion, its confidence and where it came from ('' without one)."""
    suggestion = st.session_state.get(SUGGESTION_KEY)
    if suggestion is None:
        return ""
    where = "the DICOM tag BodyPartExamined" if suggestion.source == "dicom" else "the images"
    name = suggestion.part.replace("_", " ").lower()
    if not suggestion.usable:
        return f"Best guess from {where}: {name} ({suggestion.confidence:.0%}); too unsure to pre-fill."
    return f"Suggested from {where}: **{name}** ({suggestion.confidence:.0%}). Pick another part to override."


def checked_study(model: str, study: Any, result: Any, *, part_choice: str, data_part: Any) -> Any:
    """The scored study after its checks: scope per view, the body-part suggestion shown in the sidebar,
    out-of-scope views left out (and their scores hidden) unless kept, the threshold of the part in use.

    `data_part` is the body part the data gave (a dataset study's); when known, nothing is suggested.
    Reruns the page once when the suggestion changes, so the picker drawn above shows it.
    """
    from mura_core.app import services
    from mura_core.data.studies import BodyPart
    from mura_core.explain.triage import hide_excluded_scores, restrict_study

    try:
        triage = services.triage_study(model, study, result)
    except Exception as exc:  # noqa: BLE001 - the scores stand without the checks; say so, never a traceback
        st.warning(f"The scope check and body-part suggestion could not run ({type(exc).__name__}).")
        return result
    if triage.problem:
        st.sidebar.warning(f"Scope check heads not used: {triage.problem}")
    if remember_suggestion(triage.suggestion if data_part == BodyPart.UNKNOWN else None):
        st.rerun()
    if suggestion_caption():
        st.sidebar.caption(suggestion_caption())
    suggestion = triage.suggestion
    suggested = suggestion.part if suggestion is not None and suggestion.usable else None
    keep = kept_views(result)
    use_suggestion = part_choice == "auto" and result.body_part == BodyPart.UNKNOWN.value
    result = restrict_study(result, triage, services.get_predictor(model).thresholds, keep=keep,
                            body_part=suggested if use_suggestion else None)
    return hide_excluded_scores(result, triage, keep)
