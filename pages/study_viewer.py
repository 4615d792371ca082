"""Study viewer: upload one study's views (or open one from the browser), score it, see where the model looked."""
from __future__ import annotations

import streamlit as st

from mura_core.app import navigation, services, session
from mura_core.app.report import report_file_name, study_report_html
from mura_core.app.slow_maps import slow_panel
from mura_core.app.view_controls import (checked_study, prefill_body_part, scope_notice,
                                         view_window_controls)
from mura_core.app.views import (DISCLAIMER, HEAT_SCALES, colour_legend, decision_label, format_probability,
                                 meta_rows, results_table, scaled_view, study_summary, to_png_bytes, view_panels,
                                 with_body_part, with_legend)
from mura_core.data.studies import BodyPart, label_name
from mura_core.explain.cams import OFFERED_COLORMAPS, SLOW_METHODS, TARGETS

navigation.require_app_shell()

st.title("Study viewer")

# ---- sidebar controls --------------------------------------------------------------------------
model = services.selected_model()
methods, default_cam = services.cam_methods(model)
session.follow_default("viewer_cam", model, default_cam)
flip_default = services.default_tta(model)
session.follow_default("viewer_tta", model, flip_default)
session.keep("viewer_cam", "viewer_target", "viewer_tta", "viewer_part", "viewer_scale",
             defaults={"viewer_alpha": 0.4, "viewer_colormap": OFFERED_COLORMAPS[0], "viewer_zoom": 1.0})
with st.sidebar:
    st.header("Explanation")
    cam = st.selectbox("CAM method", methods,
                       key="viewer_cam", format_func=lambda m: f"{m} (slow)" if m in SLOW_METHODS else m,
                       help="How the heat map is computed (each model's card names its default). 'cam-zoom' (the "
                            "default model's) refines classic CAM with one closer look at a window around its peak, "
                            "enlarged 1.6x: with the flip on, about 1.2x the cost of the score alone. 'cam-ms' (the "
                            "Lite members' default) averages classic CAM over two input scales and the mirror "
                            "image: four forwards. On the default model's validation boxes both hit findings "
                            "equally often, more often than 'cam', which needs no extra pass. Gradient methods add "
                            "one backward pass; the slow ones run hundreds of forward passes per image.")
    target = st.radio("Heat map shows", list(TARGETS), format_func=TARGETS.get, key="viewer_target",
                      horizontal=True)
    tta = st.checkbox("Test-time flip (average with the mirrored image)", key="viewer_tta",
                      help=f"This model's default: {'on' if flip_default else 'off'} (index.json default_tta, "
                           "chosen on its validation splits; its evaluate report and the worklist score the same "
                           "way). With cam-zoom or cam-ms the flip costs almost nothing: those maps already "
                           "look at the mirror image; other maps take twice as long.")
    st.header("Display")
    alpha = st.slider("Overlay opacity", 0.0, 1.0, step=0.05, key="viewer_alpha")
    colormap = st.selectbox("Colour map", OFFERED_COLORMAPS, key="viewer_colormap")
    scale = st.radio("Colour scale", list(HEAT_SCALES), format_func=HEAT_SCALES.get, key="viewer_scale")
    zoom = st.slider("Zoom (centred on the heat-map peak)", 1.0, 4.0, step=0.25, key="viewer_zoom")
    st.header("Study")
    prefill_body_part()
    part_choice = st.selectbox("Body part", ["auto"] + [p.value for p in BodyPart.known() + BodyPart.regions()
                                                        if p.in_scope],
                               key="viewer_part",
                               format_func=lambda v: "Automatic (data or DICOM tag)" if v == "auto"
                               else BodyPart(v).label,
                               help="Picks the body part's own decision threshold where the model has one "
                                    "fitted on enough valid images; otherwise the global threshold applies. "
                                    "Automatic: the dataset's body part, else the DICOM BodyPartExamined tag, "
                                    "else the part suggested from the images. The study summary says which "
                                    "threshold was used and why.")

# ---- the study ---------------------------------------------------------------------------------
linked = services.linked_study()
if linked.error:
    st.error(linked.error)
study = linked.study
if study is not None:
    st.info(f"Study **{study.study_id}** from the dataset browser "
            f"({len(study.views)} view{'s' if len(study.views) != 1 else ''}; ground truth: "
            f"{label_name(study.label)}).")
    back, close = st.columns([1, 2])
    back.page_link("pages/dataset_browser.py", label="Back to the dataset browser", icon=":material/arrow_back:")
    if close.button("Close this study and upload files instead", key="viewer_close"):
        services.close_linked_study()
        st.rerun()
else:
    uploads = st.file_uploader(
        "Drop the views of ONE study (PNG, JPEG or DICOM; several files = several views)",
        accept_multiple_files=True, key="viewer_upload",
        help="Files stay in memory only; nothing is written to disk.")
    if uploads:
        study = services.study_from_files([(f.name, f.getvalue()) for f in uploads],
                                           None if part_choice == "auto" else part_choice)
if study is not None and part_choice != "auto":
    study = with_body_part(study, part_choice)

if study is None:
    st.markdown("Upload the views of a study above, or open one from the **Dataset browser**.")
    st.caption(DISCLAIMER)
    st.stop()
if model is None:
    st.error(services.available_models().problem or "No model available; nothing can be scored.")
    st.stop()

slow = cam in SLOW_METHODS  # scored without heat maps; the slow maps wait for their button (slow_panel)
try:
    with st.spinner("Scoring the study…"):
        result, cached = services.score_study(model, study, cam=None if slow else cam, target=target, tta=tta)
except Exception as exc:  # a message for the reader, never a traceback
    st.error(f"The study could not be scored: {exc}")
    st.stop()
result = checked_study(model, study, result, part_choice=part_choice,
                       data_part=linked.study.body_part if linked.study is not None else BodyPart.UNKNOWN)
if slow:
    result = slow_panel(model, result, cam, target, tta=tta)

# ---- study result ------------------------------------------------------------------------------
st.subheader("Study result")
c1, c2, c3, c4 = st.columns(4)
c1.metric("Study probability (abnormal)", format_probability(result.probability))
c2.metric("Decision", decision_label(result))
c3.metric("Threshold", format_probability(result.threshold), help=result.threshold_reason or None)
c4.metric("Body part", getattr(result.body_part, "value", result.body_part) or "UNKNOWN",
          help="From the data, the DICOM tag or the images (suggested; see the sidebar); choose it in the sidebar to "
               "override. It picks the threshold when the model has one fitted for it.")
st.markdown(study_summary(result))
st.caption(f"Model {model}; heat maps: {cam}, {TARGETS[target].lower()}"
           f"{'; with test-time flip' if tta else ''}{' (from cache)' if cached else ''}; "
           f"colour scale: {HEAT_SCALES[scale].lower()}. "
           "A second-reader and teaching aid, not a diagnosis.")
map_caution = services.map_warning(model, cam)
if map_caution:
    st.warning(map_caution, icon=":material/info:")
st.dataframe(results_table(result), hide_index=True, width="stretch")
report_facts = dict(model_name=model, card=services.model_card(model), sha256=services.get_predictor(model).sha256,
                    study_id=study.study_id, cam=result.cam, overlay_fn=services.overlay_fn(), colormap=colormap,
                    alpha=alpha)
st.download_button("Download study report (HTML, printable)", key="viewer_report", mime="text/html",
                   file_name=report_file_name(study.study_id), icon=":material/download:", on_click="ignore",
                   data=lambda: study_report_html(result, **report_facts))  # built only when clicked

# ---- views -------------------------------------------------------------------------------------
boxes_by_name = {v.name: v.boxes for v in study.views}
for i, view in enumerate(result.views):
    drives = " — drives the study" if i == result.driving_view else ""
    st.markdown(f"#### View {i + 1}: {view.name}{drives}")
    if view.error is not None or view.image is None:
        st.error(f"**{view.name}** could not be read: {view.error or 'no image'}. "
                 "The other views were scored without it.", icon=":material/broken_image:")
        continue
    boxes = boxes_by_name.get(view.name, ())
    view = services.windowed_view(study, view, view_window_controls(i, view))
    if not scope_notice(i, view) or view.probability is None:
        st.image(to_png_bytes(view_panels(view, services.overlay_fn(), zoom=1.0, boxes=boxes)[0]), width="stretch",
                 caption=f"{view.name} — image (not scored: outside the model's scope)")
        continue
    image, overlay = view_panels(scaled_view(view, target, scale), services.overlay_fn(), colormap=colormap,
                                 alpha=alpha, zoom=zoom, boxes=boxes)
    overlay = None if overlay is None else with_legend(overlay, colour_legend(colormap, scale=scale))

    left, right, facts_col = st.columns([2, 2, 1])
    left.image(to_png_bytes(image), width="stretch",
               caption=f"{view.name} — image" + (" (magenta: ground-truth boxes)" if boxes else ""))
    if overlay is not None:
        right.image(to_png_bytes(overlay), width="stretch",
                    caption=f"{view.name} — {cam} heat map, P(abnormal) {format_probability(view.probability)}")
    else:
        right.info(f"No {cam} map yet: press its button above." if slow else "No heat map for this view.")
    with facts_col:
        st.metric("P(abnormal)", format_probability(view.probability))
        if view.peak is not None:
            st.caption(f"Heat-map peak at x={view.peak[0]:.2f}, y={view.peak[1]:.2f} of the image.")
        for note in getattr(view.meta, "notes", ()) or ():
            st.caption(f":material/info: {note}")
        facts = meta_rows(view.meta)
        if facts:
            with st.expander("Image details"):
                st.markdown("\n".join(f"- {label}: {value}" for label, value in facts))
                st.caption("Technical tags only; identifying DICOM tags are never read.")
