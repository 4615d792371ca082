"""Evaluate reports on disk: the ONE writer and reader of report.json, predictions.csv and
study_predictions.csv, with the one study-row type and the one per-study averaging.

An evaluate output folder (``weights/<name>.report/`` for shipped weights) holds:

- ``report.json``: model, data, thresholds, image- and study-level metrics, pointing game;
- ``predictions.csv``: one row per image (``image,study,body_part,label,probability,abnormal,threshold,
  split,error``);
- ``study_predictions.csv``: one row per study (mean or max of its images, `study_probability`).

Example:
    >>> aggregate_studies([("s1", "WRIST", 1, 0.8), ("s1", "WRIST", 1, 0.4)])[0].probability
    0.6000000000000001
"""
from __future__ import annotations

import csv
import json
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mura_core.data.roots import REPO_ROOT
from mura_core.data.studies import BodyPart, part_key, study_probability, threshold_for
from mura_core.models.weights import weights_folder

__all__ = [
    "PREDICTION_FILES",
    "STUDY_PREDICTIONS",
    "REPORT_NAME",
    "ReportRef",
    "StudyPrediction",
    "aggregate_studies",
    "HEADLINE_METRICS",
    "find_reports",
    "headline_metrics",
    "per_source_headlines",
    "metrics_markdown",
    "load_report",
    "read_predictions",
    "read_report",
    "report_card",
    "report_ensemble",
    "report_maps_from",
    "report_unflipped",
    "shipped_report",
    "thresholds_of",
    "write_predictions",
    "write_report",
    "WEAK_AUC",
    "map_caution",
    "weak_model_warning",
    "source_aucs",
]

REPORT_NAME = "report.json"
STUDY_PREDICTIONS = "study_predictions.csv"
"""An evaluate run's per-study predictions (the study aggregate the viewer thresholds)."""
PREDICTION_FILES = (STUDY_PREDICTIONS, "predictions.csv")
"""Prediction files of an evaluate run, preferred first (per-study rows carry the study aggregate)."""

_IMAGE_COLUMNS = ["image", "study", "body_part", "label", "probability", "abnormal", "threshold", "split", "error",
                  "source", "in_scope"]
_STUDY_COLUMNS = ["study", "body_part", "label", "probability", "abnormal", "threshold", "n_images", "split",
                  "level", "source", "in_scope"]
_ID_COLUMNS = ("study_id", "study", "group")
_PROB_COLUMNS = ("probability", "prob", "score", "p_abnormal")


@dataclass(frozen=True)
class StudyPrediction:
    """One study's score: the row type of study_predictions.csv, the app and the validation page."""

    study_id: str
    body_part: str
    label: int | None
    probability: float | None
    split: str | None = None
    n_images: int = 1
    source: str = ""
    """The data source (folder name) the study came from; empty for single-source files."""

    @property
    def in_scope(self) -> bool:
        """False for lower-limb regions (outside what an upper-extremity model is for)."""
        return BodyPart.parse(self.body_part).in_scope


# ----------------------------------------------------------------------------------------------
# per-study averaging
# ----------------------------------------------------------------------------------------------

def aggregate_studies(rows: Iterable[Sequence[Any]], how: str = "mean") -> list[StudyPrediction]:
    """Image rows ``(study_id, body_part, label, probability[, split[, source]])`` -> one `StudyPrediction`
    per (source, study).

    The study probability is `study_probability` (mean as in MURA, or max) of its images' probabilities;
    unreadable images (no probability) are skipped, and a study with none gets ``probability=None``. The
    label is the max of the image labels (abnormal if any image says so; None if none known). The body
    part is the most common known part among its images (``"UNKNOWN"`` if none). First-seen order.
    """
    study_probability([], how)  # refuses an unknown rule before reading anything
    probs: dict[tuple[str, str], list[float]] = defaultdict(list)
    labels: dict[tuple[str, str], list[int]] = defaultdict(list)
    parts: dict[tuple[str, str], Counter] = defaultdict(Counter)
    splits: dict[tuple[str, str], str | None] = {}
    counts: Counter = Counter()
    for sid, body_part, label, prob, *rest in rows:
        study_id = (rest[1] if len(rest) > 1 and rest[1] else "", sid)
        counts[study_id] += 1
        splits.setdefault(study_id, rest[0] if rest and rest[0] else None)
        if prob is not None and math.isfinite(float(prob)):
            probs[study_id].append(float(prob))
        if label is not None:
            labels[study_id].append(int(label))
        key = part_key(body_part)
        if key != "UNKNOWN":
            parts[study_id][key] += 1
    return [StudyPrediction(key[1], parts[key].most_common(1)[0][0] if parts.get(key) else "UNKNOWN",
                            max(labels[key]) if labels.get(key) else None,
                            study_probability(probs.get(key, []), how), splits.get(key), counts[key], key[0])
            for key in counts]


# ----------------------------------------------------------------------------------------------
# writing
# ----------------------------------------------------------------------------------------------

def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.6f}"


def _decision(probability: float | None, threshold: float) -> str | int:
    return "" if probability is None else int(probability >= threshold)


def write_predictions(rows: Sequence[Any], thresholds: Mapping[str, float], out: Path,
                      aggregate: str = "mean") -> tuple[Path, Path]:
    """predictions.csv (per image) and study_predictions.csv (per study) from evaluate's image rows.

    Each row needs ``image, study, body_part, label, probability, split, error`` attributes (``source``
    optional).
    """
    out.mkdir(parents=True, exist_ok=True)
    image_path, study_path = out / "predictions.csv", out / STUDY_PREDICTIONS
    with image_path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(_IMAGE_COLUMNS)
        for r in rows:
            t = threshold_for(thresholds, r.body_part)
            writer.writerow([r.image, r.study, r.body_part, "" if r.label is None else r.label,
                             _number(r.probability), _decision(r.probability, t), f"{t:.6f}", r.split or "",
                             r.error or "", getattr(r, "source", ""), int(BodyPart.parse(r.body_part).in_scope)])
    studies = aggregate_studies(((r.study, r.body_part, r.label, r.probability, r.split, getattr(r, "source", ""))
                                 for r in rows), aggregate)
    with study_path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(_STUDY_COLUMNS)
        for s in studies:
            t = threshold_for(thresholds, s.body_part)
            writer.writerow([s.study_id, s.body_part, "" if s.label is None else s.label, _number(s.probability),
                             _decision(s.probability, t), f"{t:.6f}", s.n_images, s.split or "", "study",
                             s.source, int(s.in_scope)])
    return image_path, study_path


def write_report(report: Mapping[str, Any], out: Path) -> Path:
    """report.json (indented, strict JSON: undefined metrics are null, never NaN)."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / REPORT_NAME
    path.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return path


# ----------------------------------------------------------------------------------------------
# reading
# ----------------------------------------------------------------------------------------------

def _pick(row: Mapping[str, str], names: Sequence[str]) -> str | None:
    for name in names:
        if name in row and row[name] not in (None, ""):
            return row[name]
    return None


def _finite_or_none(text: str | None) -> float | None:
    try:
        value = float(text) if text is not None else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None


def read_predictions(path: str | Path) -> list[StudyPrediction]:
    """Study-level predictions from an evaluate ``study_predictions.csv`` or ``predictions.csv``.

    Accepts one row per study or per image (rows sharing a study id are averaged by `aggregate_studies`).
    Needs a study id column (study_id/study/group) and a probability column (probability/prob/score);
    raises ValueError naming the file otherwise.
    """
    path = Path(path)
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        fields = reader.fieldnames or []
        if not any(c in fields for c in _ID_COLUMNS) or not any(c in fields for c in _PROB_COLUMNS):
            raise ValueError(f"{path}: needs a study id column and a probability column; has {fields}")
        rows = list(reader)
    if any(r.get("level") == "study" for r in rows):  # a file mixing levels: its study rows win
        rows = [r for r in rows if r.get("level") == "study"]
    image_rows = [(sid, BodyPart.parse(r.get("body_part")).value,
                   int(float(r["label"])) if r.get("label") not in (None, "") else None,
                   _finite_or_none(_pick(r, _PROB_COLUMNS)), r.get("split") or None, r.get("source") or "")
                  for r in rows if (sid := _pick(r, _ID_COLUMNS)) is not None]
    return aggregate_studies(image_rows)


def read_report(path: str | Path) -> dict[str, Any]:
    """A report.json as a dict."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


@dataclass(frozen=True)
class ReportRef:
    """One evaluate output folder: its display name and its two files."""

    name: str
    folder: Path
    report: Path
    predictions: Path | None


def _ref(report: Path, root: Path) -> ReportRef:
    rel = report.parent.relative_to(root)
    name = rel.as_posix() if rel.parts else root.name
    name = name.removesuffix(".report")
    preds = next((report.parent / f for f in PREDICTION_FILES if (report.parent / f).is_file()), None)
    return ReportRef(name, report.parent.resolve(), report, preds)


def find_reports(roots: Sequence[Path] | None = None, max_depth: int = 3) -> list[ReportRef]:
    """Every folder under `roots` (default: the weights folder and repo ``reports/``) holding a
    ``report.json``, sorted by name.

    A folder ``weights/<name>.report/`` is named ``<name>``; other folders by their path relative
    to the root they were found under. ``predictions`` is ``study_predictions.csv`` when present,
    else ``predictions.csv`` (per image; averaged per study on reading), else None.
    """
    if roots is None:
        roots = [weights_folder(), REPO_ROOT / "reports"]
    found: dict[Path, ReportRef] = {}
    for root in map(Path, roots):
        if not root.is_dir():
            continue
        for report in sorted(root.rglob(REPORT_NAME)):
            if len(report.relative_to(root).parts) - 1 <= max_depth:
                ref = _ref(report, root)
                found.setdefault(ref.folder, ref)
    return sorted(found.values(), key=lambda r: r.name)


def shipped_report(name: str | None, weights_dir: str | Path | None = None) -> ReportRef | None:
    """The evaluate report shipped for indexed weights `name` (``<weights folder>/<name>.report``), or None."""
    if name is None:
        return None
    return next((r for r in find_reports([weights_folder(weights_dir)]) if r.name == name), None)


def load_report(ref: ReportRef) -> tuple[dict[str, Any], list[StudyPrediction]]:
    """The report's JSON and its study predictions (empty list without a predictions file)."""
    preds = read_predictions(ref.predictions) if ref.predictions is not None else []
    return read_report(ref.report), preds


def thresholds_of(report: Mapping[str, Any]) -> dict[str, float]:
    """The operating thresholds a report was computed at (``{"default": 0.5}`` when it names none)."""
    value = report.get("thresholds")
    if isinstance(value, Mapping) and value:
        out = {str(k): float(v) for k, v in value.items() if isinstance(v, (int, float))}
        out.setdefault("default", 0.5)
        return out
    card = report.get("card") or report.get("model") or {}
    if isinstance(card, Mapping) and isinstance(card.get("thresholds"), Mapping):
        return thresholds_of({"thresholds": card["thresholds"]})
    return {"default": 0.5}


def report_card(report: Mapping[str, Any], sha256: str | None) -> Any:
    """The `ModelCard` a report recorded for the checkpoint it scored, when that checkpoint's sha256 is
    `sha256` (so the card describes the file in use); None otherwise (an ensemble, another file, no card).
    Read without torch: the app's Home describes its model before the model is loaded."""
    from mura_core.models.card import CheckpointError, ModelCard

    model = report.get("model")
    if not sha256 or not isinstance(model, Mapping) or model.get("sha256") != sha256:
        return None
    card = model.get("card")
    if not isinstance(card, Mapping):
        return None
    try:
        return ModelCard.from_dict(dict(card))
    except (CheckpointError, TypeError, ValueError):
        return None


def report_ensemble(report: Mapping[str, Any], member_sha256s: Sequence[str]) -> list[dict[str, Any]] | None:
    """The members (name, arch, image_size, sha256) an ensemble's report recorded, when they are exactly the
    checkpoints `member_sha256s` in that order (so the report describes the files in use); None otherwise.
    Read without torch, like `report_card`."""
    model = report.get("model")
    members = model.get("members") if isinstance(model, Mapping) else None
    if not member_sha256s or not isinstance(members, list) or not all(isinstance(m, Mapping) for m in members):
        return None
    if [m.get("sha256") for m in members] != list(member_sha256s):
        return None
    return [dict(m) for m in members]


def report_unflipped(report: Mapping[str, Any]) -> list[str]:
    """The ensemble members the report scored without its test-time flip (none when it records none)."""
    model = report.get("model")
    chosen = model.get("unflipped") if isinstance(model, Mapping) else None
    return [str(m) for m in chosen] if isinstance(chosen, list) else []


def report_maps_from(report: Mapping[str, Any]) -> list[str]:
    """The members whose heat maps the reported model showed (every member when the report predates the
    record)."""
    model = report.get("model")
    model = model if isinstance(model, Mapping) else {}
    chosen = model.get("maps_from")
    if isinstance(chosen, list) and chosen:
        return [str(m) for m in chosen]
    return [str(m.get("name")) for m in model.get("members") or [] if isinstance(m, Mapping)]

# ----------------------------------------------------------------------------------------------
# quoting a report (Home, Model card, the card markdown files, README)
# ----------------------------------------------------------------------------------------------

HEADLINE_METRICS: tuple[str, ...] = ("auc", "kappa", "sensitivity", "specificity", "f1")
"""The figures quoted wherever a model is summarised."""


def headline_metrics(report: Mapping[str, Any], level: str = "image") -> dict[str, float]:
    """The report's overall figures at `level` ("image" or "study"), the undefined ones left out."""
    overall = (report.get(f"{level}_level") or {}).get("overall") or {}
    return {k: float(overall[k]) for k in HEADLINE_METRICS if isinstance(overall.get(k), (int, float))}


def per_source_headlines(report: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """Each source's in-scope image-level figures (n, auc, kappa), for reports over several sources."""
    found = {}
    for name, source in (report.get("by_source") or {}).items():
        overall = (source.get("image_level") or {}).get("overall") or {}
        figures = {k: float(overall[k]) for k in ("n", "auc", "kappa") if isinstance(overall.get(k), (int, float))}
        if "auc" in figures:
            found[name] = figures
    return found


def _with_ci(overall: Mapping[str, Any], name: str) -> str:
    value = overall.get(name)
    if not isinstance(value, (int, float)):
        return "—"
    ci = (overall.get("ci") or {}).get(name)
    return f"{value:.3f} [{ci[0]:.2f}–{ci[1]:.2f}]" if ci else f"{value:.3f}"


def _metric_row(label: str, overall: Mapping[str, Any]) -> str:
    return f"| {label} | {overall.get('n', '—')} | " + " | ".join(_with_ci(overall, m) for m in HEADLINE_METRICS) + " |"


def _source_section(name: str, source: Mapping[str, Any]) -> list[str]:
    """One source's image-level table per body part/region, calibration and out-of-scope figures."""
    image = source.get("image_level") or {}
    lines = [f"### {name}", "", "| image level | n | " + " | ".join(HEADLINE_METRICS) + " |",
             "|---|---|" + "---|" * len(HEADLINE_METRICS), _metric_row("all in-scope", image.get("overall") or {})]
    for part, row in (image.get("by_body_part") or {}).items():
        lines.append(_metric_row(BodyPart.parse(part).label, row))
    calibration = source.get("calibration") or {}
    if calibration.get("ece") is not None:
        lines += ["", f"Expected calibration error (10 bins): {calibration['ece']:.3f}."]
    outside = (source.get("out_of_scope") or {}).get("by_body_part") or {}
    if outside:
        lines += ["", "Out of scope (lower limb, reported apart, not in the figures above): " + "; ".join(
            f"{BodyPart.parse(part).label} AUC {_with_ci(row, 'auc')} on {row.get('n')} images"
            for part, row in outside.items()) + "."]
    game = (source.get("pointing_game") or {}).get("methods") or {}
    for method, summary in game.items():
        rate = summary.get("hit_rate")
        if rate is not None:
            lines += ["", f"Pointing game ({method}): {rate:.2f} of {summary.get('n')} boxed abnormal images "
                          f"(centre-point baseline {summary.get('centre_baseline') or 0:.2f})."]
    return lines + [""]


def metrics_markdown(report: Mapping[str, Any], source: str, loso: Mapping[str, Any] | None = None) -> str:
    """A model card's metrics section quoting an evaluate report: overall (image and study level, 95%
    intervals), then per source and body part or region, and the leave-one-source-out results."""
    data = report.get("data") or {}
    lines = [f"## Metrics (quoted from the evaluate report `{source}`)", "",
             f"Data: {data.get('name', '—')}, split {report.get('split', '—')}; "
             f"{report.get('n_studies', '—')} studies, {data.get('n_images', '—')} images. "
             + (f"{report['scope_rule'].capitalize()}." if report.get("scope_rule") else ""), "",
             "| level | n | " + " | ".join(HEADLINE_METRICS) + " |", "|---|---|" + "---|" * len(HEADLINE_METRICS)]
    for level in ("image", "study"):
        lines.append(_metric_row(level, (report.get(f"{level}_level") or {}).get("overall") or {}))
    lines.append("")
    for name, per_source in (report.get("by_source") or {}).items():
        lines += _source_section(name, per_source)
    runs = (loso or {}).get("runs") or []
    if runs:
        lines += ["### Leave-one-source-out (a source the model never saw)", "",
                  f"{(loso or {}).get('description', '')}.", "",
                  "| recipe of | held out | trained on | n | AUC |", "|---|---|---|---|---|"]
        lines += [f"| {r.get('recipe', 'this model')} | {r['held_out']} | {', '.join(r['trained_on'])} | "
                  f"{r.get('n_images')} | {_with_ci({'auc': r.get('auc'), 'ci': {'auc': r.get('auc_ci')}}, 'auc')} |"
                  for r in runs]
        lines.append("")
    return "\n".join(lines + [""])


WEAK_AUC = 0.7
"""Below this valid AUC on every source a model carries a visible warning wherever it is offered."""


def source_aucs(report: Mapping[str, Any]) -> dict[str, float | None]:
    """In-scope image-level AUC per source (a single-source report: its one source)."""
    by_source = report.get("by_source") or {}
    if by_source:
        return {name: ((r.get("image_level") or {}).get("overall") or {}).get("auc") for name, r in by_source.items()}
    data = (report.get("data") or {}).get("name", "data")
    return {Path(str(data)).name: ((report.get("image_level") or {}).get("overall") or {}).get("auc")}


def _pointing_games(report: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """The pointing-game block per source (a single-source report: its one source)."""
    by_source = report.get("by_source") or {}
    if by_source:
        return {name: r.get("pointing_game") or {} for name, r in by_source.items()}
    data = (report.get("data") or {}).get("name", "data")
    return {Path(str(data)).name: report.get("pointing_game") or {}}


def map_caution(report: Mapping[str, Any] | None, method: str) -> str | None:
    """A caution when `method`'s maps are not clearly better than always pointing at the image centre on some
    source of the report: the pointing game's 95% interval reaches down to the centre baseline. None otherwise,
    and when the report did not measure `method`."""
    if not report:
        return None
    weak = []
    for source, game in _pointing_games(report).items():
        summary = (game.get("methods") or {}).get(method) or {}
        low, centre = (summary.get("ci95") or [None])[0], summary.get("centre_baseline")
        if summary.get("hit_rate") is not None and low is not None and centre is not None and low <= centre:
            high = summary["ci95"][-1]
            weak.append(f"{source} {summary['hit_rate']:.2f} [{low:.2f}–{high:.2f}] against {centre:.2f}")
    if not weak:
        return None
    return (f"On the valid boxes, `{method}` is not clearly better than always pointing at the image centre "
            f"(its pointing game against that guess: {'; '.join(weak)}): read its maps as where the model looked, "
            "not as where a finding is.")


def weak_model_warning(report: Mapping[str, Any] | None) -> str | None:
    """A warning when the report's AUC is below `WEAK_AUC` on every source (None when it is not)."""
    if not report:
        return None
    aucs = source_aucs(report)
    known = [v for v in aucs.values() if isinstance(v, (int, float))]
    if not known or max(known) >= WEAK_AUC:
        return None
    listed = ", ".join(f"{name} {value:.2f}" for name, value in aucs.items() if isinstance(value, (int, float)))
    return (f"Weak model: valid AUC below {WEAK_AUC:.1f} on every source ({listed}). Its scores are close to "
            "chance: use it for teaching comparisons, not as a second reader.")
