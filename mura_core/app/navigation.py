"""The app's pages and its own sidebar navigation, drawn from ONE list (app.py's `PAGES`).

Streamlit would otherwise show its legacy page list (built from the `pages/` folder names) until the
first run of app.py finishes; `.streamlit/config.toml` turns Streamlit's own sidebar navigation off
(`client.showSidebarNavigation = false`), `st.navigation(position="hidden")` routes, and the links here are
the only navigation a visitor ever sees. Home's "where to go" links come from the same list.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import streamlit as st
from streamlit.runtime.pages_manager import PagesManager
from streamlit.runtime.scriptrunner import get_script_run_ctx

__all__ = ["AppPage", "navigation", "page_links", "require_app_shell", "sidebar_links"]

_PAGES_KEY = "app_pages"
"""Session-state key holding the page list app.py declared (for Home's links)."""


@dataclass(frozen=True)
class AppPage:
    """One page: its script under pages/, title, icon and a one-line description for Home's links."""

    script: str
    title: str
    icon: str
    blurb: str = ""
    default: bool = False


def navigation(pages: Sequence[AppPage]) -> Any:
    """Register the pages (hidden Streamlit navigation) and remember them for `page_links`; returns the
    navigation whose `.run()` draws the current page."""
    st.session_state[_PAGES_KEY] = tuple(pages)
    return st.navigation([st.Page(p.script, title=p.title, icon=p.icon, default=p.default) for p in pages],
                         position="hidden")


def sidebar_links(pages: Sequence[AppPage]) -> None:
    """The sidebar's navigation: one link per page, in the declared order."""
    with st.sidebar:
        for page in pages:
            st.page_link(page.script, label=page.title, icon=page.icon)


def page_links() -> None:
    """A link with its description for every page but the default one (Home's "where to go")."""
    for page in st.session_state.get(_PAGES_KEY, ()):
        if not page.default:
            st.page_link(page.script, label=f"{page.title} — {page.blurb}" if page.blurb else page.title,
                         icon=page.icon)


def require_app_shell() -> None:
    """Rerun through app.py when Streamlit ran this page script on its own.

    With a `pages/` folder, Streamlit's legacy multipage mode runs a deep-linked page directly (no
    navigation, no model picker) until app.py first calls `st.navigation`; its page list then holds app.py
    itself, which `st.navigation` never registers. Switching the legacy mode off and rerunning sends this
    run through app.py, onto the same page.
    """
    ctx = get_script_run_ctx()
    if ctx is None:
        return
    manager = ctx.pages_manager
    main_script = Path(manager.main_script_path).resolve()
    if any(Path(page["script_path"]).resolve() == main_script for page in manager.get_pages().values()):
        PagesManager.uses_pages_directory = False
        st.rerun()
