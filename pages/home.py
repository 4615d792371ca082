"""Home: what the tool is and is not, the model in use, the device, and where to go next."""
from __future__ import annotations

import streamlit as st

from mura_core.app import navigation, services
from mura_core.app.views import DISCLAIMER, card_summary, ensemble_summary, report_source
from mura_core.evaluation import reports

navigation.require_app_shell()

st.title("Bone X-ray abnormality viewer")
st.markdown(
    "Scores upper-extremity radiograph studies (elbow, finger, forearm, hand, humerus, shoulder, "
    "wrist) as **normal or abnormal**, after the Stanford MURA work, and shows **where the model "
    "looked** with CAM heat maps."
)
st.warning(DISCLAIMER, icon=":material/info:")


def model_in_use(name: str | None) -> None:
    """The card summary with the shipped report's figures: read from the report without torch, else from the
    loaded model once the background load is done."""
    st.subheader("Model in use")
    if name is None:
        st.error(services.available_models().problem or "No model available.")
        return
    try:
        report, source = services.model_report(name)
        figures = reports.headline_metrics(report) if report is not None else {}
        by_source = reports.per_source_headlines(report) if report is not None else {}
        card = services.shipped_card(name)
        ensemble = services.shipped_ensemble(name) if card is None else None
        if ensemble is not None:
            st.markdown(ensemble_summary(name, ensemble.members, ensemble.thresholds, figures,
                                         report_source(source, report), by_source, ensemble.maps_from))
            return
        if card is None and not services.model_ready(name):
            st.caption(f"The card of {name} appears once the model is loaded.")
            return
        st.markdown(card_summary(card or services.model_card(name), figures, report_source(source, report),
                                 by_source))
    except Exception as exc:  # shown as a message, never as a traceback
        st.error(f"The model {name!r} could not be loaded: {exc}")


def device_facts() -> None:
    """Where models run (needs torch, so it waits for the background load)."""
    st.subheader("Device")
    st.markdown(f"Models run on **{services.device_name()}**.")
    st.caption("Models are loaded once per server and shared by every session; results are cached "
               "by image hash, so re-opening a study is instant.")


@st.fragment(run_every=1.0)
def device_when_loaded(name: str) -> None:
    """Until the background load is done: a note, checked every second; then the whole page again."""
    if services.model_ready(name):
        st.rerun()
    st.subheader("Device")
    st.info(f"Loading the model {name} in the background; the device appears here in a moment. "
            "Every page is ready to use.", icon=":material/hourglass_top:")


model = services.selected_model()
left, right = st.columns(2)
with left:
    model_in_use(model)

st.subheader("Where to go")
navigation.page_links()

with right:  # last: asking whether the model is ready starts its background load (torch) after the page is drawn
    if model is None or services.model_ready(model):
        device_facts()
    else:
        device_when_loaded(model)
