"""Validation: how far to trust the model, per body part — from its shipped evaluation or a run on your data."""
from __future__ import annotations

import streamlit as st

from mura_core.app import navigation, services, session
from mura_core.app.validation import (calibration_figure, confusion_by_body_part, confusion_figure,
                                      cross_fitted_rows, describe_report, filter_predictions, kappa_caption,
                                      kappa_comparison, kappas_by_body_part, loso_rows, metrics_table,
                                      pointing_game_note, pointing_game_table, roc_figure, single_class_note,
                                      single_class_parts, source_options)
from mura_core.data.roots import default_data_root
from mura_core.evaluation.reports import find_reports

navigation.require_app_shell()
session.keep("validation_source", "validation_mode", "validation_data_source", "validation_scope")

st.title("Validation")
model = services.selected_model()

source = st.radio("Results from", ["shipped", "run"], horizontal=True, key="validation_source",
                  format_func={"shipped": "Shipped evaluation reports",
                               "run": "Run the model on a data folder"}.get)
predictions, thresholds, title, report = [], {"default": 0.5}, "", {}
if source == "shipped":
    reports = find_reports()
    if not reports:
        st.info("No evaluation reports found (looked for report.json + predictions.csv under weights/ and "
                "reports/). Run `python -m mura_core evaluate ...`, or choose 'Run the model on a data folder'.")
        st.stop()
    names = [r.name for r in reports]
    session.drop_invalid_choice("validation_report", list(range(len(reports))))
    session.keep(defaults={"validation_report": names.index(model) if model in names else 0})
    ref = reports[st.selectbox("Report", range(len(reports)), format_func=lambda i: names[i],
                               key="validation_report")]
    try:
        report, predictions = services.load_report_cached(str(ref.report))
    except Exception as exc:
        st.error(f"The report in {ref.folder} could not be read: {exc}")
        st.stop()
    thresholds = services.report_thresholds(report, ref.name)
    title = ref.name
    data_words = f"the {report.get('split', 'all')} split of {(report.get('data') or {}).get('name', ref.name)}"
    st.caption(describe_report(report))
    if not predictions:
        st.warning(f"{ref.folder} has no predictions.csv, so nothing can be recomputed.")
        st.json(report, expanded=False)
        st.stop()
else:
    if model is None:
        st.error(services.available_models().problem or "No model available.")
        st.stop()
    default = default_data_root()
    session.keep("validation_split", defaults={"validation_path": str(default) if default else ""})
    typed = st.text_input("Data folder or manifest.csv", key="validation_path")
    split = st.selectbox("Split", ["valid", "test", "train", "all"], key="validation_split")
    if st.button(f"Evaluate {model} on this data", key="validation_run", disabled=not typed.strip()):
        bar = st.progress(0.0, text="Scoring…")
        try:
            services.run_evaluation(model, typed.strip(), None if split == "all" else split,
                                     progress=lambda d, t: bar.progress(d / t, text=f"Scored {d}/{t} studies"))

        except Exception as exc:
            st.error(f"The evaluation could not run: {exc}")
            st.stop()
    predictions, report = services.evaluation_results(model, typed.strip(), None if split == "all" else split)
    if not predictions:
        st.info("Press the button to score every study of the split (heat maps only on images with finding "
                "boxes, for the pointing game; takes a while on a CPU).")
        st.stop()
    thresholds = services.model_thresholds(model)
    title = f"{model} on {typed.strip()} ({split})"
    data_words = f"the {split} split of {typed.strip()}"

st.subheader(title)
sources = source_options(predictions)
chosen_source = st.selectbox("Source", sources, key="validation_data_source") if len(sources) > 1 else sources[0]
include_out = st.toggle("Include out-of-scope regions (leg, hip)", key="validation_scope",
                        help="Lower-limb images are outside what an upper-extremity model is for; they are left "
                             "out of every figure unless you include them here.")
everything = predictions
predictions = filter_predictions(everything, chosen_source, in_scope_only=not include_out)
n_abnormal = sum(1 for p in predictions if p.label == 1)
left_out = len(filter_predictions(everything, chosen_source, in_scope_only=False)) - len(predictions)
st.caption(f"{len(predictions)} studies, {n_abnormal} abnormal"
           + (f" ({left_out} out-of-scope studies left out)" if left_out else "")
           + ". Study probability = mean over its views.")

# ---- operating point ---------------------------------------------------------------------------
mode = st.radio("Threshold", ["card", "slider"], horizontal=True, key="validation_mode",
                format_func={"card": "The model's thresholds (one per body part)",
                             "slider": "One threshold for every body part"}.get)
chosen: dict[str, float] | float = thresholds
if mode == "slider":
    session.keep(defaults={"validation_threshold": float(thresholds.get("default", 0.5))})
    chosen = st.slider("Threshold on P(abnormal)", 0.0, 1.0, step=0.01,
                       key="validation_threshold",
                       help="Moves the operating point; the matrices and table are recomputed from the "
                            "saved predictions (the model is not re-run).")

one_class = single_class_parts(predictions)
if one_class:
    st.info(single_class_note(one_class), icon=":material/info:")

st.markdown("#### Confusion matrices per body part")
st.plotly_chart(confusion_figure(confusion_by_body_part(predictions, chosen)), key="validation_confusion")

st.markdown("#### Metrics with 95% bootstrap intervals")
table = metrics_table(predictions, chosen)
st.dataframe(table, hide_index=True, width="stretch",
             column_config={name: st.column_config.TextColumn(name, width="medium")
                            for name in ("auc", "kappa", "sensitivity", "specificity", "accuracy")})

if source == "shipped":
    out_of_fold = services.cross_fitted_cached(str(ref.report))
    if out_of_fold is not None:
        st.markdown("#### Kappa at thresholds fitted out of fold")
        st.dataframe(cross_fitted_rows(out_of_fold), hide_index=True, width="stretch")
        st.caption(out_of_fold.describe() + " At the model's own thresholds, the table above decides at thresholds "
                   "fitted on all of these studies; this one is the fairer guess of what the rule gives on new "
                   "studies like these.")

left, right = st.columns(2)
with left:
    st.markdown("#### ROC curves and operating points")
    st.plotly_chart(roc_figure(predictions, chosen), key="validation_roc")
with right:
    st.markdown("#### Calibration (reliability curve)")
    st.plotly_chart(calibration_figure(predictions), key="validation_calibration")
    st.caption("Points on the diagonal mean a probability of 70% is abnormal 70% of the time; one curve "
               "per source when the data has several.")

if source == "shipped":
    held_out = loso_rows(services.model_loso(ref.name))
    if held_out:
        st.markdown("#### On a source it never saw: leave-one-source-out")
        st.dataframe(held_out, hide_index=True, width="stretch")
        st.caption("Each row: the model's recipe (for an ensemble, the member named under 'recipe of') trained "
                   "again without that source, then scored on its valid split. This is the closest figure here to "
                   "how the model would do on your own radiographs.")

pointing = pointing_game_table(report)
if pointing:
    st.markdown("#### Where the model looked: pointing game and energy share")
    st.dataframe(pointing, hide_index=True, width="stretch")
    st.caption("Pointing game: a hit when the heat map's maximum falls inside (or near) a "
               "ground-truth finding box, on abnormal images with boxes. Energy share: the share of the heat "
               "map's mass inside the boxes. Baseline rows: always pointing at the image centre, a random point, "
               "and a uniform map. " + pointing_game_note(report))

st.markdown("#### Agreement with radiologists (Cohen's kappa)")
st.dataframe(kappa_comparison(kappas_by_body_part(predictions, chosen)), hide_index=True, width="stretch")
st.caption(kappa_caption(data_words))
