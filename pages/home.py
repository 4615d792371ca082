"""Home: what the tool is and is not, the model in use, the device, and where to go next."""
from __future__ import annotations

import streamlit as st

from mura_core import app_state
from mura_core.viewer import DISCLAIMER, card_summary

app_state.require_app_shell()

st.title("Bone X-ray abnormality viewer")
st.markdown(
    "Scores upper-extremity radiograph studies (elbow, finger, forearm, hand, humerus, shoulder, "
    "wrist) as **normal or abnormal**, after the Stanford MURA work, and shows **where the model "
    "looked** with CAM heat maps."
)
st.warning(DISCLAIMER, icon=":material/info:")

left, right = st.columns(2)
with left:
    st.subheader("Model in use")
    name = app_state.selected_model()
    if name is None:
        st.error(app_state.available_models().problem or "No model available.")
    else:
        try:
            st.markdown(card_summary(app_state.model_card(name)))
        except Exception as exc:  # shown as a message, never as a traceback
            st.error(f"The model {name!r} could not be loaded: {exc}")
with right:
    st.subheader("Device")
    st.markdown(f"Models run on **{app_state.device_name()}**.")
    st.caption("Models are loaded once per server and shared by every session; results are cached "
               "by image hash, so re-opening a study is instant.")

st.subheader("Where to go")
st.page_link("pages/study_viewer.py", label="Study viewer — upload PNG, JPEG or DICOM views and score them",
             icon=":material/radiology:")
st.page_link("pages/dataset_browser.py", label="Dataset browser — browse a MURA folder or manifest, find "
             "false negatives and false positives", icon=":material/photo_library:")
st.page_link("pages/validation.py", label="Validation — how far to trust the model, per body part",
             icon=":material/monitoring:")
st.page_link("pages/model_card.py", label="Model card — architecture, data, recipe, limits",
             icon=":material/description:")
