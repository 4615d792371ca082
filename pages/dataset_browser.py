"""Dataset browser: filter a MURA folder or manifest, find the model's misses, open a study in the viewer."""
from __future__ import annotations

from pathlib import Path

import streamlit as st

from mura_core.app import navigation, services, session
from mura_core.app.browser import (LABEL_FILTERS, PAGE_SIZE, PREDICTION_FILTERS, body_part_options, filter_studies,
                                   label_filter_value, page_slice, split_options, study_caption)
from mura_core.data.roots import default_data_root

navigation.require_app_shell()

st.title("Dataset browser")
st.caption("Reads images only inside the data folders you configure (the default folder, MURA_DATA, and the "
           "path typed here); nothing is copied or written.")

default = default_data_root()
session.keep("browser_split", "browser_parts", "browser_label", "browser_prediction",
             defaults={"browser_path": str(default) if default else "", "browser_page": 1})
typed = st.text_input("Data folder (MURA-v1.1 or its parent) or manifest.csv", key="browser_path",
                      placeholder="/path/to/MURA-v1.1 or /path/to/manifest.csv")
if not typed.strip():
    st.info("Type the path of a MURA folder or a manifest.csv (or set MURA_DATA before starting the app).")
    st.stop()
data = str(Path(typed.strip()).expanduser().resolve())
try:
    index = services.open_dataset_cached(data)
except Exception as exc:  # DatasetError and friends: a message, not a traceback
    st.error(f"Cannot read {typed.strip()}: {exc}")
    st.stop()
services.remember_root(data)
root = Path(data) if Path(data).is_dir() else Path(data).parent
if index.problems:
    with st.expander(f"{len(index.problems)} problem(s) met while reading the data"):
        st.write("\n".join(f"- {p}" for p in index.problems[:200]))

# ---- filters -----------------------------------------------------------------------------------
studies = index.studies
f1, f2, f3, f4 = st.columns(4)
splits = split_options(studies)
split = f1.selectbox("Split", ["all"] + splits, key="browser_split")
parts = f2.multiselect("Body part", body_part_options(studies), key="browser_parts",
                       help="UNKNOWN: studies whose body part the data does not name.")
label_text = f3.selectbox("Label", LABEL_FILTERS, key="browser_label")
prediction = f4.selectbox("Prediction", list(PREDICTION_FILTERS), format_func=PREDICTION_FILTERS.get,
                          key="browser_prediction")
label = label_filter_value(label_text)
base = filter_studies(studies, split=None if split == "all" else split, body_parts=parts, label=label)

# ---- predictions (shipped predictions.csv when it matches, else on demand) ---------------------
model = services.selected_model()
probabilities, source = services.browser_probabilities(model, data, studies)
if prediction != "all" or probabilities:
    st.caption(f"Predictions: {source}" if probabilities else "No predictions for this data yet.")
missing = [s for s in base if s.study_id not in probabilities]
if model is not None and missing and prediction != "all":
    st.warning(f"{len(missing)} of the {len(base)} filtered studies have no prediction from {model}.")
    if st.button(f"Score the {len(missing)} studies with {model}", key="browser_score"):
        bar = st.progress(0.0, text="Scoring…")
        services.score_for_browser(model, data, missing, root,
                                    progress=lambda done, total: bar.progress(done / total,
                                                                              text=f"Scored {done}/{total}"))

        st.rerun()
shown = filter_studies(base, prediction=prediction, probabilities=probabilities,
                       thresholds=services.model_thresholds(model)) if prediction != "all" else base

# ---- grid --------------------------------------------------------------------------------------
n_images = sum(len(s.views) for s in shown)
n_pages = page_slice(shown, 1)[1]
session.clamp_choice("browser_page", 1, n_pages)
top = st.columns([3, 1])
top[0].markdown(f"**{len(shown)}** studies ({n_images} images) of {len(studies)}.")
page = top[1].number_input("Page", min_value=1, max_value=n_pages, step=1, key="browser_page")
items, n_pages = page_slice(shown, int(page))
for start in range(0, len(items), 6):
    for column, study in zip(st.columns(6), items[start:start + 6]):
        with column:
            png = services.view_thumbnail(study.views[0], root)
            if png is not None:
                st.image(png, width="stretch")
            else:
                st.error(f"{study.views[0].name}: unreadable or outside the data folder")
            st.caption(f"`{study.study_id}`  \n{study_caption(study, probabilities.get(study.study_id))}")
            if st.button("Open", key=f"open_{study.study_id}", width="stretch"):
                st.switch_page("pages/study_viewer.py", query_params={"data": data, "study": study.study_id})
st.caption(f"Page {int(page)} of {n_pages}; {PAGE_SIZE} studies per page. Magenta boxes: ground-truth findings.")
