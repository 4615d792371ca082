"""Home: what the tool is and is not, the model in use, the device, and where to go next."""
from __future__ import annotations

import streamlit as st

from mura_core.app import navigation, services
from mura_core.app.views import DISCLAIMER, card_summary
from mura_core.evaluation import reports

navigation.require_app_shell()

st.title("Bone X-ray abnormality viewer")
st.markdown(
    "Scores upper-extremity radiograph studies (elbow, finger, forearm, hand, humerus, shoulder, "
    "wrist) as **normal or abnormal**, after the Stanford MURA work, and shows **where the model "
    "looked** with CAM heat maps."
)
st.warning(DISCLAIMER, icon=":material/info:")



def model_facts(name: str | None) -> None:
    """The model card summary and the device (both need the loaded model and torch)."""
    left, right = st.columns(2)
    with left:
        st.subheader("Model in use")
        if name is None:
            st.error(services.available_models().problem or "No model available.")
        else:
            try:
                report, source = services.model_report(name)
                figures = reports.headline_metrics(report) if report is not None else {}
                st.markdown(card_summary(services.model_card(name), figures, f"evaluate report {source}"))
            except Exception as exc:  # shown as a message, never as a traceback
                st.error(f"The model {name!r} could not be loaded: {exc}")
    with right:
        st.subheader("Device")
        st.markdown(f"Models run on **{services.device_name()}**.")
        st.caption("Models are loaded once per server and shared by every session; results are cached "
                   "by image hash, so re-opening a study is instant.")


@st.fragment(run_every=1.0)
def model_facts_when_loaded(name: str) -> None:
    """Until the background load is done: a note, checked every second; then the whole page again."""
    if services.model_ready(name):
        st.rerun()
    st.info(f"Loading the model {name} in the background; its card and the device appear here in a moment. "
            "The other pages are ready to use.", icon=":material/hourglass_top:")


model = services.selected_model()
if services.model_ready(model, wait=1.0):
    model_facts(model)
else:
    model_facts_when_loaded(model)

st.subheader("Where to go")
navigation.page_links()
