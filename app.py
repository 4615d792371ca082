"""MURA viewer: the Streamlit entry point (`streamlit run app.py`).

Declares the pages and the sidebar's model picker shared by all of them; every page only arranges
widgets and calls `mura_core`.

The page scripts live in `pages/`. Streamlit treats that folder as an old-style multipage app for the
first run after a server start that lands directly on a page URL; each page's `app_state.require_app_shell()`
then reruns once, through this script.
"""
from __future__ import annotations

import streamlit as st

from mura_core import app_state

st.set_page_config(page_title="MURA viewer", page_icon=":material/radiology:", layout="wide")

PAGES = [
    st.Page("pages/home.py", title="Home", icon=":material/home:", default=True),
    st.Page("pages/study_viewer.py", title="Study viewer", icon=":material/radiology:"),
    st.Page("pages/dataset_browser.py", title="Dataset browser", icon=":material/photo_library:"),
    st.Page("pages/validation.py", title="Validation", icon=":material/monitoring:"),
    st.Page("pages/model_card.py", title="Model card", icon=":material/description:"),
]

navigation = st.navigation(PAGES)
app_state.keep_widget_state()
app_state.model_selector()
st.sidebar.caption("Second-reader and teaching aid — not a diagnostic device.")
navigation.run()
