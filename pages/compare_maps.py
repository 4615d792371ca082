"""Compare heat maps: one radiograph, every CAM method side by side, and which maps to trust."""
from __future__ import annotations

import streamlit as st

from mura_core.app import navigation, services, session
from mura_core.app.views import (DISCLAIMER, HEAT_SCALES, compare_panel, format_probability, map_hit,
                                 scaled_heatmap, to_png_bytes)
from mura_core.explain.cams import CAM_TABLE, OFFERED_COLORMAPS, SLOW_METHODS, TARGETS, heatmap_peak
from mura_core.explain.localization import DEFAULT_TOLERANCE_PX
from mura_core.explain.sanity import CASCADE_LEVELS
from mura_core.explain.slow import SlowBusy

navigation.require_app_shell()
st.title("Compare heat maps")
st.markdown("Every heat-map method on the same radiograph, with its runtime and its peak (green cross). "
            "With a ground-truth box (magenta) each map is scored hit or miss (peak within "
            f"{DEFAULT_TOLERANCE_PX:g} px of the box). The **sanity check** below recomputes the maps with "
            "the model's weights randomised: a map that hardly changes shows the image, not what the model "
            "learned.")

model = services.selected_model()
methods, default_cam = services.cam_methods(model)
session.keep("compare_target", "compare_scale",
             defaults={"compare_colormap": OFFERED_COLORMAPS[0], "compare_alpha": 0.4,
                       "compare_level": list(CASCADE_LEVELS)[-1]})
with st.sidebar:
    st.header("Heat maps")
    target = st.radio("Heat maps show", list(TARGETS), format_func=TARGETS.get, key="compare_target")
    scale = st.radio("Colour scale", list(HEAT_SCALES), format_func=HEAT_SCALES.get, key="compare_scale")
    colormap = st.selectbox("Colour map", OFFERED_COLORMAPS, key="compare_colormap")
    alpha = st.slider("Overlay opacity", 0.0, 1.0, step=0.05, key="compare_alpha")

# ---- the radiograph ----------------------------------------------------------------------------
linked = services.linked_study()
image = key = None
boxes: tuple = ()
name = ""
if linked.study is not None:
    names = [v.name for v in linked.study.views]
    pick = st.selectbox(f"View of study {linked.study.study_id}", names, key="compare_view")
    view = linked.study.views[names.index(pick)]
    name, boxes = view.name, view.boxes
    try:
        image, key = services.decode_for_compare(view.name, view.data, str(view.path) if view.path else None)
    except Exception as exc:
        st.error(f"{view.name} could not be read: {exc}")
else:
    upload = st.file_uploader("One radiograph (PNG, JPEG or DICOM)", key="compare_upload",
                              help="Kept in memory only; nothing is written to disk.")
    examples = services.boxed_examples() if upload is None else []
    example = None
    if examples:
        labels = ["—"] + [v.name for v in examples]
        pick = st.selectbox("…or an abnormal example with a ground-truth box (from the data folder)", labels,
                            key="compare_example")
        example = examples[labels.index(pick) - 1] if pick != "—" else None
    if upload is not None:
        name = upload.name
        try:
            image, key = services.decode_for_compare(upload.name, upload.getvalue())
        except Exception as exc:
            st.error(f"{upload.name} could not be read: {exc}")
    elif example is not None:
        name, boxes = example.name, example.boxes
        try:
            image, key = services.decode_for_compare(example.name, example.data,
                                                     str(example.path) if example.path else None)
        except Exception as exc:
            st.error(f"{example.name} could not be read: {exc}")
if image is None or key is None:
    st.markdown("Upload a radiograph above, or open a study from the **Dataset browser** and come here.")
    st.caption(DISCLAIMER)
    st.stop()
if model is None:
    st.error(services.available_models().problem or "No model available.")
    st.stop()

describe = {m.name: m.description for m in CAM_TABLE}
overlay = services.overlay_fn()


def tile(column, run: services.MapRun, caption_extra: str = "") -> None:
    """One method's overlay, peak, legend and hit/miss in `column`."""
    heat = scaled_heatmap(run.heatmap, run.probability, target, scale)
    peak = heatmap_peak(run.heatmap) if run.heatmap.max() > 0 else None
    verdict = ""
    if boxes:
        hit = map_hit(run.heatmap, image.shape, boxes)
        verdict = " — **hit**" if hit else " — miss"
    column.image(to_png_bytes(compare_panel(image, heat, overlay, colormap=colormap, alpha=alpha, boxes=boxes,
                                            peak=peak, scale=scale)),
                 caption=f"{run.method}: {run.seconds:.2f} s{caption_extra}", width="stretch")
    column.markdown(f"**{run.method}**{verdict}  \n{describe.get(run.method, '')}")


fast = [m for m in methods if m not in SLOW_METHODS]
runs = {}
with st.spinner("Computing the fast heat maps…"):
    for method in fast:
        runs[method] = services.compare_map(model, key, method, target, image)
probability = next(iter(runs.values())).probability if runs else None
st.subheader(f"{name}: P(abnormal) {format_probability(probability)}")
st.caption(f"Model {model}; heat maps: {TARGETS[target].lower()}; colour scale: {HEAT_SCALES[scale]}."
           + (" Magenta: ground-truth box." if boxes else " No ground-truth box for this image."))
columns = st.columns(3)
for i, method in enumerate(fast):
    tile(columns[i % 3], runs[method])

# ---- slow methods --------------------------------------------------------------------------------
slow = [m for m in methods if m in SLOW_METHODS]
if slow:
    st.subheader("Slow methods")
    st.caption("Hundreds of extra forward passes per image; one slow run at a time on this server. "
               "Press Stop (or change any setting) to cancel a run.")
    slow_cols = st.columns(len(slow))
    for column, method in zip(slow_cols, slow):
        estimate = services.slow_estimate(model, key, method, image)
        if column.button(f"Run {method} (about {estimate:.0f} s)", key=f"compare_run_{method}"):
            bar = column.progress(0.0, text=f"{method}…")
            column.button("Stop", key=f"compare_stop_{method}")
            try:
                services.slow_map(model, key, method, target, image,
                                  _progress=lambda f, bar=bar, method=method: bar.progress(f, text=f"{method} {f:.0%}"))
                st.session_state[f"compare_done_{method}"] = True
            except SlowBusy as exc:
                column.warning(str(exc))
        if st.session_state.get(f"compare_done_{method}"):
            try:
                tile(column, services.slow_map(model, key, method, target, image))
            except SlowBusy as exc:
                column.warning(str(exc))

# ---- sanity check --------------------------------------------------------------------------------
st.subheader("Sanity check: the same maps from a randomised model")
st.markdown("After Adebayo et al. (2018): the model's weights are re-initialised from the top layer down "
            "(or all at once) and every fast map is computed again. **Similarity** is the Spearman rank "
            "correlation of the two maps: near 1 means the map barely depends on what the model learned.")
level_label = st.selectbox("Layers randomised", list(CASCADE_LEVELS), key="compare_level")
if st.button("Run the sanity check", key="compare_sanity"):
    st.session_state["compare_sanity_on"] = True
if st.session_state.get("compare_sanity_on"):
    with st.spinner("Randomising the model and recomputing the maps…"):
        checked = services.sanity_maps(model, key, target, CASCADE_LEVELS[level_label], tuple(fast), image)
    st.dataframe([{"method": m, "similarity (Spearman)": round(sim, 3),
                   "verdict": "depends on the weights" if sim < 0.5 else "looks like the image, not the model"}
                  for m, (_, sim) in checked.items()], hide_index=True, width="stretch")
    random_cols = st.columns(3)
    for i, (method, (heat, sim)) in enumerate(checked.items()):
        run = services.MapRun(method, heat, probability or 0.0, 0.0)
        tile(random_cols[i % 3], run, caption_extra=f" (randomised model), similarity {sim:.2f}")
st.caption(DISCLAIMER)
