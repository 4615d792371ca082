"""Validation-page helpers: recompute operating points from a report's predictions, build the figures.

Everything the threshold slider changes is recomputed from the report's ``predictions.csv`` with
SCORE's `metrics` (no model run): confusion matrices per body part, the metrics table with
bootstrap 95% intervals, the operating points on the ROC curves. Figures are plotly objects so the
page only calls ``st.plotly_chart``.

The MURA paper's kappas are shown beside ours for orientation only: the paper's test set (207
studies, gold standard = majority of three radiologists) is not our validation split.

Example:
    >>> counts = confusion_by_body_part([StudyPrediction("s1", "WRIST", 1, 0.9)], {"default": 0.5})
    >>> counts["WRIST"]
    {'tn': 0, 'fp': 0, 'fn': 0, 'tp': 1}
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from mura_core.data.studies import BodyPart
from mura_core.evaluation import metrics
from mura_core.evaluation.cross_fitted import CROSS_FITTED_METRICS, CrossFitted, format_figure
from mura_core.evaluation.reports import StudyPrediction, report_unflipped

__all__ = [
    "MURA_PAPER_KAPPA",
    "MURA_PAPER_SOURCE",
    "SPLITS_DIFFER_NOTE",
    "row_thresholds",
    "confusion_by_body_part",
    "metrics_table",
    "kappa_comparison",
    "pointing_game_sources",
    "pointing_game_note",
    "pointing_game_table",
    "kappas_by_body_part",
    "describe_report",
    "confusion_figure",
    "single_class_parts",
    "single_class_note",
    "roc_figure",
    "calibration_points",
    "calibration_figure",
    "source_options",
    "filter_predictions",
    "loso_rows",
    "cross_fitted_rows",
    "kappa_caption",
]

MURA_PAPER_SOURCE = (
    "MURA paper (Rajpurkar et al. 2017, arXiv:1712.06957), Table 1: Cohen's kappa against the "
    "majority of three radiologists; best of radiologists 1–3, and the paper's DenseNet-169"
)
MURA_PAPER_KAPPA: dict[str, tuple[float, float]] = {
    "ELBOW": (0.850, 0.710),
    "FINGER": (0.410, 0.389),
    "FOREARM": (0.802, 0.737),
    "HAND": (0.927, 0.851),
    "HUMERUS": (0.933, 0.600),
    "SHOULDER": (0.864, 0.729),
    "WRIST": (0.931, 0.931),
    "overall": (0.778, 0.705),
}
"""Body part -> (best radiologist kappa, paper model kappa) from the MURA paper's Table 1."""

SPLITS_DIFFER_NOTE = (
    "The paper's numbers are on MURA's own 207-study test set with a radiologist gold standard; "
    "ours are on {data} with its labels. The data, labels and splits differ, so compare the order of "
    "magnitude, not the decimals."
)
ALL_SOURCES = "all sources"


def kappa_caption(data: str) -> str:
    """The kappa table's caption, naming the data our kappas come from."""
    return f"{MURA_PAPER_SOURCE}. {SPLITS_DIFFER_NOTE.format(data=data)}"


def source_options(predictions: Sequence[StudyPrediction]) -> list[str]:
    """'all sources' then each source present (a single-source file gives just 'all sources')."""
    names = sorted({p.source for p in predictions if p.source})
    return [ALL_SOURCES] + (names if len(names) > 1 else [])


def filter_predictions(predictions: Sequence[StudyPrediction], source: str = ALL_SOURCES,
                       in_scope_only: bool = True) -> list[StudyPrediction]:
    """One source's (or every source's) studies, out-of-scope regions (leg, hip) left out by default."""
    return [p for p in predictions if (source == ALL_SOURCES or p.source == source)
            and (p.in_scope or not in_scope_only)]


def loso_rows(loso: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """Leave-one-source-out results as table rows ([] without a loso.json)."""
    rows = []
    for run in (loso or {}).get("runs", []):
        recipe = {"recipe of": run["recipe"]} if "recipe" in run else {}
        rows.append({**recipe, "held-out source (never seen)": run["held_out"],
                     "trained on": ", ".join(run["trained_on"]), "images": run.get("n_images"),
                     "AUC on the held-out source": _with_interval(run.get("auc"), run.get("auc_ci")),
                     "kappa": _with_interval(run.get("kappa"), None)})
    return rows


def cross_fitted_rows(figures: CrossFitted | None) -> list[dict[str, Any]]:
    """`cross_fitted_figures` as table rows, "overall" and one per source ([] without figures)."""
    return [{"studies": name, "n": row["n"], "abnormal": row["n_abnormal"],
             **{metric: format_figure(row, metric) for metric in CROSS_FITTED_METRICS}}
            for name, row in (figures.groups if figures else {}).items()]


def _scored(predictions: Sequence[StudyPrediction]) -> list[StudyPrediction]:
    return [p for p in predictions if p.probability is not None and p.label in (0, 1)]


def row_thresholds(predictions: Sequence[StudyPrediction],
                   thresholds: Mapping[str, float] | float) -> np.ndarray:
    """Each prediction's threshold: one value for all, or the card's per-body-part thresholds."""
    if not isinstance(thresholds, Mapping):
        return np.full(len(predictions), float(thresholds))
    return np.asarray([metrics.threshold_for(thresholds, p.body_part) for p in predictions], dtype=float)


def confusion_by_body_part(predictions: Sequence[StudyPrediction],
                           thresholds: Mapping[str, float] | float) -> dict[str, dict[str, int]]:
    """``{part: {tn, fp, fn, tp}}`` per body part present, plus ``"overall"``, at the given threshold(s)."""
    rows = _scored(predictions)
    t = row_thresholds(rows, thresholds)
    labels = np.asarray([p.label for p in rows], dtype=int)
    decided = (np.asarray([p.probability for p in rows], dtype=float) >= t).astype(int)
    parts = [p.body_part for p in rows]
    out: dict[str, dict[str, int]] = {}
    for part in _ordered_parts(parts):
        mask = np.asarray([q == part for q in parts], dtype=bool)
        out[part] = metrics.confusion_counts(labels[mask], decided[mask])
    out["overall"] = metrics.confusion_counts(labels, decided)
    return out


def _ordered_parts(parts: Sequence[str]) -> list[str]:
    present = set(parts)
    return [b.value for b in BodyPart if b.value in present]


def metrics_table(predictions: Sequence[StudyPrediction], thresholds: Mapping[str, float] | float,
                  *, n_bootstrap: int = 500, seed: int = 0) -> list[dict[str, Any]]:
    """One row per body part plus "overall": n, threshold, and each metric with its 95% interval.

    Computed with SCORE's `metrics.grouped_metrics` (percentile bootstrap, seeded) so the numbers
    equal the report's at the report's thresholds. Kappa is shown undefined (—) for a body part whose
    studies are all of one class.
    """
    rows = _scored(predictions)
    if not rows:
        return []
    grouped = metrics.grouped_metrics(
        [p.label for p in rows], [p.probability for p in rows], [p.body_part for p in rows],
        thresholds if isinstance(thresholds, Mapping) else float(thresholds),
        n_bootstrap=n_bootstrap, seed=seed,
    )
    table = []
    order = _ordered_parts(list(grouped["by_body_part"])) + ["overall"]
    for part in order:
        m = grouped["overall"] if part == "overall" else grouped["by_body_part"][part]
        row: dict[str, Any] = {"body part": part, "n": m["n"], "abnormal": m["n_abnormal"]}
        if part != "overall":
            row["threshold"] = round(m["threshold"], 3)
        for name in ("auc", "kappa", "sensitivity", "specificity", "accuracy"):
            row[name] = _with_interval(m.get(name), (m.get("ci") or {}).get(name))
        table.append(row)
    return table


def _with_interval(value: float | None, ci: Sequence[float] | None) -> str:
    """'0.912 (0.87–0.95)', '0.912' without interval, '—' when undefined."""
    if value is None:
        return "—"
    if not ci:
        return f"{value:.3f}"
    return f"{value:.3f} ({ci[0]:.2f}–{ci[1]:.2f})"


def kappas_by_body_part(predictions: Sequence[StudyPrediction],
                        thresholds: Mapping[str, float] | float) -> dict[str, float | None]:
    """Cohen's kappa per body part and ``"overall"`` at the given threshold(s) (no bootstrap).

    A body part whose studies are all of one class gets None (`evaluation.metrics`: agreement with a constant
    truth says nothing, nothing comparable to the paper's kappas).
    """
    rows = _scored(predictions)
    if not rows:
        return {}
    grouped = metrics.grouped_metrics(
        [p.label for p in rows], [p.probability for p in rows], [p.body_part for p in rows],
        thresholds if isinstance(thresholds, Mapping) else float(thresholds), n_bootstrap=0)
    out = {part: m["kappa"] for part, m in grouped["by_body_part"].items()}
    out["overall"] = grouped["overall"]["kappa"]
    return out


def describe_report(report: Mapping[str, Any]) -> str:
    """A one-line description of an evaluate report: model, data, split, when, whether it flipped (whatever it
    records)."""
    bits = []
    for key in ("model", "model_name", "data", "dataset", "split", "created", "n_studies"):
        value = report.get(key)
        if isinstance(value, Mapping):
            value = value.get("name")
        if value not in (None, "", [], {}):
            bits.append(f"{key.replace('_', ' ')}: {value}")
    if report.get("tta"):
        unflipped = report_unflipped(report)
        bits.append("scored with test-time flip" + (f" ({', '.join(unflipped)} unflipped)" if unflipped else ""))
    return "; ".join(bits) or "evaluation report"


def pointing_game_sources(report: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """{source name: pointing-game section} of a report: its per-source sections when it has them
    (``report["by_source"][name]["pointing_game"]``), else the one section under the data's name."""
    out: dict[str, Mapping[str, Any]] = {}
    for name, part in (report.get("by_source") or {}).items():
        if isinstance(part, Mapping) and isinstance(part.get("pointing_game"), Mapping):
            out[str(name)] = part["pointing_game"]
    if not out and isinstance(report.get("pointing_game"), Mapping):
        data = report.get("data") or {}
        name = data.get("name") or data.get("path") if isinstance(data, Mapping) else None
        out[str(name).rstrip("/").rsplit("/", 1)[-1] if name else "all"] = report["pointing_game"]
    return out


NOT_MEASURED = "not in report"
"""What a pointing-game cell says when the report holds no figure for it (an older or narrower run)."""


def _share(value: Any, missing: str = NOT_MEASURED) -> str:
    """A share as '0.050', or `missing` when the report has none."""
    return missing if value is None else f"{float(value):.3f}"


def pointing_game_table(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Pointing game and energy share per source and method, with the centre-point and random-point
    (uniform-map for energy) baselines as rows of their own; [] when the report has none.

    Only the methods the report measured get a row; a figure the report lacks reads `NOT_MEASURED`, and
    the centre point has no energy share ("—": a point holds no mass).
    """
    rows: list[dict[str, Any]] = []
    for source, game in pointing_game_sources(report).items():
        methods = {m: s for m, s in (game.get("methods") or {}).items() if isinstance(s, Mapping)}
        if not methods:
            continue
        for method, summary in methods.items():
            ci = summary.get("ci95")
            rows.append({"source": source, "method": method, "images with boxes": summary.get("n"),
                         "pointing game": _with_interval(summary.get("hit_rate"),
                                                         ci if isinstance(ci, (list, tuple)) else None),
                         "energy share": _share(summary.get("energy_share"))})
        first = next(iter(methods.values()))
        rows.append({"source": source, "method": "baseline: image centre", "images with boxes": first.get("n"),
                     "pointing game": _share(first.get("centre_baseline")), "energy share": "—"})
        rows.append({"source": source, "method": "baseline: random point / uniform map",
                     "images with boxes": first.get("n"), "pointing game": _share(first.get("random_baseline")),
                     "energy share": _share(first.get("energy_baseline"))})
    return rows


def pointing_game_note(report: Mapping[str, Any]) -> str:
    """What the pointing-game table rests on, in words: the tolerance, and which methods the report
    measured when it did not measure several (its other methods were simply not run)."""
    sources = pointing_game_sources(report)
    measured = list(dict.fromkeys(m for game in sources.values() for m in (game.get("methods") or {})))
    if not measured:
        return ""
    tolerance = next((g.get("tolerance_px") for g in sources.values() if g.get("tolerance_px") is not None), None)
    words = [f"A hit: the map's maximum within {float(tolerance):g} px of a box." if tolerance is not None else ""]
    if len(measured) == 1:
        words.append(f"This report measured one method only ({measured[0]}); the other heat-map methods were "
                     "not run for it (`python -m mura_core evaluate ... --cam all` measures every fast method).")
    if any(isinstance(s, Mapping) and s.get("energy_share") is None
           for game in sources.values() for s in (game.get("methods") or {}).values()):
        words.append(f"'{NOT_MEASURED}': the report predates that figure.")
    return " ".join(w for w in words if w)


def kappa_comparison(our_kappas: Mapping[str, float | None]) -> list[dict[str, Any]]:
    """Rows body part -> paper's best radiologist, paper's model, ours, then the regions only our data has.

    Ours reads "not in this data" for a MURA part the data lacks and "one class only" where the data has
    the part but not both classes (kappa undefined), so no cell is left blank without a reason.
    """
    rows = []
    for part, (radiologist, model) in MURA_PAPER_KAPPA.items():
        rows.append({"body part": part.lower() if part != "overall" else "overall",
                     "radiologist (best, paper)": f"{radiologist:.3f}", "model (paper)": f"{model:.3f}",
                     "this model": _our_kappa(our_kappas, part)})
    for part in our_kappas:
        if part not in MURA_PAPER_KAPPA:
            rows.append({"body part": BodyPart.parse(part).label, "radiologist (best, paper)": "not in the paper",
                         "model (paper)": "not in the paper", "this model": _our_kappa(our_kappas, part)})
    return rows


def _our_kappa(our_kappas: Mapping[str, float | None], part: str) -> str:
    if part not in our_kappas:
        return "not in this data"
    value = our_kappas[part]
    return "one class only" if value is None else f"{float(value):.3f}"


# ----------------------------------------------------------------------------------------------
# figures (plotly)
# ----------------------------------------------------------------------------------------------

def confusion_figure(counts: Mapping[str, Mapping[str, int]], columns: int = 4) -> Any:
    """A grid of 2x2 confusion matrices, overall first then one per body part, counts in the cells.

    Rows are the truth (normal, abnormal), columns the model's call at the chosen threshold(s).
    """
    from plotly.subplots import make_subplots
    import plotly.graph_objects as go

    parts = (["overall"] if "overall" in counts else []) + [p for p in counts if p != "overall"]
    rows = max(1, -(-len(parts) // columns))
    titles = [f"{'Overall' if p == 'overall' else p.title()} (n={sum(counts[p].values())})" for p in parts]
    fig = make_subplots(rows=rows, cols=columns, subplot_titles=titles,
                        horizontal_spacing=0.05, vertical_spacing=0.22 if rows > 1 else 0.1)
    for i, part in enumerate(parts):
        c = counts[part]
        z = [[c["tn"], c["fp"]], [c["fn"], c["tp"]]]
        row, col = i // columns + 1, i % columns + 1
        fig.add_trace(go.Heatmap(
            z=z, x=["normal", "abnormal"], y=["normal", "abnormal"],
            text=[[f"TN {z[0][0]}", f"FP {z[0][1]}"], [f"FN {z[1][0]}", f"TP {z[1][1]}"]],
            texttemplate="%{text}", colorscale="Blues", showscale=False,
            hovertemplate="truth %{y}, called %{x}: %{z}<extra></extra>",
        ), row=row, col=col)
        fig.update_xaxes(title_text="model's call", title_standoff=4, row=row, col=col)
        fig.update_yaxes(title_text="truth" if col == 1 else None, showticklabels=col == 1,
                         autorange="reversed", row=row, col=col)
    fig.update_layout(height=250 * rows + 20, margin=dict(l=10, r=10, t=40, b=10))
    return fig


def single_class_parts(predictions: Sequence[StudyPrediction]) -> list[str]:
    """Body parts whose scored studies are all normal or all abnormal (per-part AUC/kappa undefined)."""
    rows = _scored(predictions)
    out = []
    for part in _ordered_parts([p.body_part for p in rows]):
        labels = {p.label for p in rows if p.body_part == part}
        if len(labels) < 2:
            out.append(part)
    return out


def single_class_note(parts: Sequence[str]) -> str:
    """Why some body parts show no AUC or kappa, naming them as a reader would ('shoulder/humerus', 'no body part
    given'), not by their enum values."""
    names = [part.label if part is not BodyPart.UNKNOWN else "no body part given"
             for part in map(BodyPart.parse, parts)]
    return (f"In this data every study of {', '.join(names)} is of one class (for example, normal studies that "
            "name no body part), so their AUC, kappa and one of sensitivity/specificity are undefined (—). "
            "Judge those from the overall row.")


def roc_figure(predictions: Sequence[StudyPrediction], thresholds: Mapping[str, float] | float) -> Any:
    """ROC curves per body part (and overall) with each one's operating point at its threshold."""
    import plotly.graph_objects as go

    rows = _scored(predictions)
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(dash="dot", color="grey"),
                             name="chance", hoverinfo="skip"))
    from plotly.colors import qualitative

    parts = _ordered_parts([p.body_part for p in rows]) + ["overall"]
    palette = qualitative.Plotly
    for k, part in enumerate(parts):
        colour = "black" if part == "overall" else palette[k % len(palette)]
        sub = rows if part == "overall" else [p for p in rows if p.body_part == part]
        labels = [p.label for p in sub]
        probs = [p.probability for p in sub]
        curve = metrics.roc_points(labels, probs) if sub else None
        if curve is None:
            continue
        auc = metrics.binary_metrics(labels, probs, 0.5, n_bootstrap=0)["auc"]
        width = 3 if part == "overall" else 1.5
        trace = go.Scatter(x=curve["fpr"], y=curve["tpr"], mode="lines", line=dict(width=width, color=colour),
                           name=f"{part.title() if part != 'overall' else 'Overall'} (AUC {auc:.2f})")
        fig.add_trace(trace)
        t = row_thresholds(sub, thresholds)
        c = metrics.confusion_counts(labels, (np.asarray(probs) >= t).astype(int))
        fpr = c["fp"] / max(1, c["fp"] + c["tn"])
        tpr = c["tp"] / max(1, c["tp"] + c["fn"])
        fig.add_trace(go.Scatter(x=[fpr], y=[tpr], mode="markers", showlegend=False,
                                 marker=dict(size=11 if part == "overall" else 8, symbol="circle",
                                             color=colour, line=dict(width=1, color="white")),
                                 name=f"{part} operating point",
                                 hovertemplate=f"{part}: sensitivity %{{y:.2f}}, 1-specificity %{{x:.2f}}"
                                               "<extra></extra>"))
    fig.update_layout(xaxis_title="1 − specificity (false-positive rate)",
                      yaxis_title="sensitivity (true-positive rate)", height=480,
                      margin=dict(l=10, r=10, t=30, b=10), xaxis=dict(range=[0, 1]),
                      yaxis=dict(range=[0, 1.02]))
    return fig


def calibration_points(predictions: Sequence[StudyPrediction], n_bins: int = 10
                       ) -> tuple[list[float], list[float]] | None:
    """Reliability curve: (mean predicted probability, observed abnormal fraction) per equal-width bin
    (empty bins left out); None without both classes."""
    from sklearn.calibration import calibration_curve

    rows = _scored(predictions)
    labels = [p.label for p in rows]
    if len(set(labels)) < 2:
        return None
    frac_pos, mean_pred = calibration_curve(labels, [p.probability for p in rows], n_bins=n_bins,
                                            strategy="uniform")
    return mean_pred.tolist(), frac_pos.tolist()


def calibration_figure(predictions: Sequence[StudyPrediction], n_bins: int = 10) -> Any:
    """Reliability diagram with the perfect-calibration diagonal and a histogram of the scores."""
    import plotly.graph_objects as go

    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(dash="dot", color="grey"),
                             name="perfectly calibrated", hoverinfo="skip"))
    sources = sorted({p.source for p in predictions if p.source})
    groups = [(name, [p for p in predictions if p.source == name]) for name in sources] if len(sources) > 1 \
        else [("this model", list(predictions))]
    for name, rows in groups:
        points = calibration_points(rows, n_bins)
        if points is not None:
            fig.add_trace(go.Scatter(x=points[0], y=points[1], mode="lines+markers", name=name))
    probs = [p.probability for p in _scored(predictions)]
    fig.add_trace(go.Histogram(x=probs, xbins=dict(start=0, end=1, size=1 / n_bins), yaxis="y2",
                               name="studies per bin", opacity=0.25, marker_color="grey"))
    fig.update_layout(xaxis_title="mean predicted probability", yaxis_title="observed fraction abnormal",
                      yaxis=dict(range=[0, 1.02]), xaxis=dict(range=[0, 1]),
                      yaxis2=dict(overlaying="y", side="right", showgrid=False, title="studies",
                                  tickformat="d", rangemode="tozero"),
                      height=420, margin=dict(l=10, r=10, t=30, b=10), legend=dict(x=0.01, y=0.99))
    return fig
