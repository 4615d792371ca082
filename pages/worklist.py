"""Worklist: score every study of a folder, most suspicious first; filter, open in the viewer, download."""
from __future__ import annotations

from pathlib import Path

import streamlit as st

from mura_core.app import navigation, services, session, worklist
from mura_core.app.report import report_file_name, study_report_html
from mura_core.data.roots import default_data_root
from mura_core.evaluation.worklist import worklist_csv

navigation.require_app_shell()

st.title("Worklist")
st.caption("Every study of a folder scored and sorted, most suspicious first (a MURA folder, a manifest, a "
           "FracAtlas folder, or a folder of DICOM / PNG / JPEG files grouped by DICOM study or by folder). "
           "Files are read in place; nothing is written.")

default = default_data_root()
session.keep("worklist_parts", "worklist_decisions", "worklist_scopes", "worklist_study",
             defaults={"worklist_path": str(default) if default else ""})
typed = st.text_input("Data folder or manifest.csv", key="worklist_path",
                      placeholder="/path/to/a/folder/of/studies")
model = services.selected_model()
if model is None:
    st.error(services.available_models().problem or "No model available; nothing can be scored.")
    st.stop()
if not typed.strip():
    st.info("Type the path of a folder of studies (or set MURA_DATA before starting the app).")
    st.stop()
data = str(Path(typed.strip()).expanduser().resolve())

rows = worklist.worklist_rows(model, data)
if st.button(f"Score every study with {model}" if rows is None else "Score again", key="worklist_run",
             type="primary" if rows is None else "secondary"):
    bar = st.progress(0.0, text="Reading the folder…")
    try:
        rows, problems = worklist.run_worklist(
            model, data, progress=lambda done, total: bar.progress(done / max(total, 1),
                                                                   text=f"{done}/{total} images processed"))
    except Exception as exc:  # DatasetError, a refused folder: a message, never a traceback
        st.error(f"Cannot score {typed.strip()}: {exc}")
        st.stop()
    if problems:
        with st.expander(f"{len(problems)} problem(s) met while reading the data"):
            st.write("\n".join(f"- {p}" for p in problems[:200]))
if rows is None:
    st.stop()

# ---- filters and table -------------------------------------------------------------------------
f1, f2, f3 = st.columns(3)
parts = f1.multiselect("Body part", sorted({r.body_part for r in rows}), key="worklist_parts")
decisions = f2.multiselect("Decision", sorted({r.decision for r in rows}), key="worklist_decisions")
scopes = f3.multiselect("Scope", list(worklist.SCOPE_KINDS), key="worklist_scopes")
shown = worklist.filter_rows(rows, body_parts=parts, decisions=decisions, scopes=scopes)
n_abnormal = sum(r.decision == "abnormal" for r in shown)
st.markdown(f"**{len(shown)}** of {len(rows)} studies shown; {n_abnormal} above their body part's threshold.")
st.dataframe(worklist.table_rows(shown), hide_index=True, width="stretch")
st.download_button("Download worklist.csv (every study)", data=worklist_csv(rows), file_name="worklist.csv",
                   mime="text/csv", key="worklist_csv", on_click="ignore", icon=":material/download:")

# ---- one study ---------------------------------------------------------------------------------
if shown:
    session.drop_invalid_choice("worklist_study", [r.study for r in shown])
    study_id = st.selectbox("Study", [r.study for r in shown], key="worklist_study",
                            format_func=lambda s: next(f"{k}. {s} ({r.decision})" for k, r in
                                                       enumerate(shown, start=1) if r.study == s))
    left, right = st.columns(2)
    if left.button("Open in the study viewer", key="worklist_open", icon=":material/radiology:"):
        st.switch_page("pages/study_viewer.py", query_params={"data": data, "study": study_id})
    if right.button("Prepare the study report", key="worklist_report_make", icon=":material/description:"):
        linked = services.find_linked_study(data, study_id)
        if linked.study is None:
            st.error(linked.error or f"Study {study_id} not found.")
        else:
            _methods, cam = services.cam_methods(model)
            result, _ = services.score_study(model, linked.study, cam=cam)
            right.download_button(
                "Download the report (HTML)", key="worklist_report", mime="text/html", on_click="ignore",
                file_name=report_file_name(study_id), icon=":material/download:",
                data=study_report_html(result, model_name=model, card=services.model_card(model),
                                       sha256=services.get_predictor(model).sha256, study_id=study_id, cam=cam))
st.caption("A second-reader and teaching aid, not a diagnostic device: every study needs a qualified reader.")
