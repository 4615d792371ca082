"""Per-session widget state: each page declares its own kept widgets and their starting values.

Streamlit forgets the value of a widget that was not drawn in a run, so a page's choices would be lost
when the user visits another page. A page calls `keep(...)` with its widget keys (and starting values)
before drawing them; app.py calls `keep_widget_state()` on every run, which re-stores every key any page
has declared in this session. Starting values go into session state, never into the widget call (a
widget given a value AND set through the Session State API makes Streamlit warn).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import streamlit as st

__all__ = [
    "clamp_choice",
    "declared_keys",
    "drop_invalid_choice",
    "follow_default",
    "keep",
    "keep_widget_state",
]

_DECLARED_KEY = "kept_widget_keys"
"""Session-state key listing every widget key a page of this session declared as kept."""



def keep(*keys: str, defaults: Mapping[str, Any] | None = None) -> None:
    """Declare this page's kept widgets; `defaults` gives starting values (set once, in session state)."""
    declared = st.session_state.setdefault(_DECLARED_KEY, [])
    for key in (*keys, *(defaults or {})):
        if key not in declared:
            declared.append(key)
    for key, value in (defaults or {}).items():
        if key not in st.session_state:
            st.session_state[key] = value


def declared_keys() -> tuple[str, ...]:
    """The widget keys declared as kept in this session so far."""
    return tuple(st.session_state.get(_DECLARED_KEY, ()))


def keep_widget_state() -> None:
    """Keep every declared widget's value across pages (re-store it before the page runs)."""
    for key in declared_keys():
        if key in st.session_state:
            st.session_state[key] = st.session_state[key]


def follow_default(key: str, owner: str | None, value: Any) -> None:
    """Set a kept widget to `value` whenever its `owner` changes (e.g. the selected model): the widget starts at
    each model's own default and keeps the reader's choice while that model stays selected."""
    marker = f"{key}__owner"
    if key not in st.session_state or st.session_state.get(marker) != owner:
        st.session_state[key] = value
        st.session_state[marker] = owner


def drop_invalid_choice(key: str, options: list[Any]) -> None:
    """Forget a kept selectbox value that is not among the current options (e.g. after a model change)."""
    if key in st.session_state and st.session_state[key] not in options:
        del st.session_state[key]


def clamp_choice(key: str, low: int, high: int) -> None:
    """Bring a kept number input back inside [low, high] (e.g. the page number after a filter change)."""
    value = st.session_state.get(key)
    if isinstance(value, (int, float)) and not low <= value <= high:
        st.session_state[key] = min(max(int(value), low), high)
