"""MURA viewer: the Streamlit entry point (`streamlit run app.py`).

Declares the pages and the sidebar's model picker shared by all of them; every page only arranges
widgets and calls `mura_core`.

The page scripts live in `app_pages/`, not `pages/`: Streamlit still treats a folder named `pages/`
next to the entry script as an old-style multipage app for the first session after a start that
lands directly on a page URL (it runs that page without this script: no navigation, no model picker).
"""
from __future__ import annotations

import streamlit as st

from mura_core import app_state

st.set_page_config(page_title="MURA viewer", page_icon=":material/radiology:", layout="wide")

PAGES = [
    st.Page("app_pages/home.py", title="Home", icon=":material/home:", default=True),
    st.Page("app_pages/study_viewer.py", title="Study viewer", icon=":material/radiology:"),
    st.Page("app_pages/dataset_browser.py", title="Dataset browser", icon=":material/photo_library:"),
    st.Page("app_pages/validation.py", title="Validation", icon=":material/monitoring:"),
    st.Page("app_pages/model_card.py", title="Model card", icon=":material/description:"),
]

navigation = st.navigation(PAGES)
app_state.keep_widget_state()
app_state.model_selector()
st.sidebar.caption("Second-reader and teaching aid — not a diagnostic device.")
navigation.run()
