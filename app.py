"""MURA viewer: the Streamlit entry point (`streamlit run app.py`).

`PAGES` is the app's one page list: the navigation, the sidebar links and Home's links all come from it.
Adding a page = its file under pages/ + one line here. Every page only arranges widgets and calls
`mura_core.app` / `mura_core`.
"""
from __future__ import annotations

import streamlit as st

from mura_core.app import navigation, services, session

st.set_page_config(page_title="MURA viewer", page_icon=":material/radiology:", layout="wide")

PAGES = (
    navigation.AppPage("pages/home.py", "Home", ":material/home:", default=True),
    navigation.AppPage("pages/study_viewer.py", "Study viewer", ":material/radiology:",
                       "upload PNG, JPEG or DICOM views and score them"),
    navigation.AppPage("pages/compare_maps.py", "Compare heat maps", ":material/compare:",
                       "every heat-map method on one radiograph, and which maps to trust"),
    navigation.AppPage("pages/dataset_browser.py", "Dataset browser", ":material/photo_library:",
                       "browse a MURA folder or manifest, find false negatives and false positives"),
    navigation.AppPage("pages/worklist.py", "Worklist", ":material/format_list_numbered:",
                       "score a folder of studies, most suspicious first; filter, open, download"),
    navigation.AppPage("pages/validation.py", "Validation", ":material/monitoring:",
                       "how far to trust the model, per body part"),
    navigation.AppPage("pages/model_card.py", "Model card", ":material/description:",
                       "architecture, data, recipe, limits"),
)

current = navigation.navigation(PAGES)
session.keep_widget_state()
navigation.sidebar_links(PAGES)
model = services.model_selector()
st.sidebar.caption("Second-reader and teaching aid — not a diagnostic device.")
try:
    current.run()
finally:  # after the page is drawn, so that importing torch does not hold up the first page
    services.warm_up(model)  # the model loads in a background thread, once per server
