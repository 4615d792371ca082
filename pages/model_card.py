"""Model card: architecture, data and licence, recipe, metrics, limits and intended use of the chosen model."""
from __future__ import annotations

import streamlit as st

from mura_core.app import navigation, services
from mura_core.app.views import DISCLAIMER

navigation.require_app_shell()

st.title("Model card")
model = services.selected_model()
if model is None:
    st.error(services.available_models().problem or "No model available.")
    st.stop()
try:
    markdown = services.card_markdown(model)
except Exception as exc:  # a message, never a traceback
    st.error(f"The model card of {model!r} could not be read: {exc}")
    st.stop()
st.markdown(markdown)
if services.heads_report_markdown(model):
    st.markdown(services.heads_report_markdown(model))
st.info(DISCLAIMER, icon=":material/info:")
