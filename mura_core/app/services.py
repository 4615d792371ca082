"""The app's cached services: the ONE place that caches models, scored studies, data and reports.

- Models are loaded once per server process (`st.cache_resource`) and shared by every session;
  the `Predictor` is thread-safe, so sessions may score at the same time.
- Scored studies (probabilities and heat maps) live in a `views.ResultCache` keyed by the images'
  sha256, the model and the explanation settings; display settings (opacity, colour map, zoom) are
  not part of the key, so changing them only re-draws the overlay from the cached heat map.
- Uploaded bytes are never written to disk: they are hashed, scored and dropped; the cache keeps
  the decoded images and heat maps only, for a bounded number of studies.
- Figures about a model (Home, Model card, Validation) come from its shipped evaluate report
  (`evaluation.reports`), never from the card's training-time metrics.
"""
from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import streamlit as st

from mura_core.app.browser import find_study, predictions_match
from mura_core.app.views import ResultCache, score_key
from mura_core.data.roots import configured_roots, default_data_root, is_within, root_for, safe_study
from mura_core.data.studies import BodyPart, Study, View
from mura_core.evaluation.reports import (ReportRef, StudyPrediction, find_reports, load_report, read_predictions,
                                          shipped_report, thresholds_of)
from mura_core.imaging.decode import DecodeError, read_view_bytes
from mura_core.models.weights import default_tta_for, weights_folder

if TYPE_CHECKING:  # the module imports scikit-learn: loaded on the Validation page only
    from mura_core.evaluation.cross_fitted import CrossFitted

__all__ = [
    "MODEL_KEY",
    "ROOTS_KEY",
    "LinkedStudy",
    "ModelChoice",
    "allowed_roots",
    "available_models",
    "browser_probabilities",
    "cam_methods",
    "card_markdown",
    "close_linked_study",
    "device_name",
    "evaluation_results",
    "find_linked_study",
    "get_predictor",
    "linked_study",
    "load_report_cached",
    "loaded_models",
    "model_ready",
    "model_card",
    "shipped_card",
    "shipped_ensemble",
    "model_report",
    "model_selector",
    "model_thresholds",
    "open_dataset_cached",
    "overlay_fn",
    "remember_root",
    "report_thresholds",
    "result_cache",
    "run_evaluation",
    "model_loso",
    "model_warning",
    "score_for_browser",
    "score_study",
    "selected_model",
    "study_from_files",
    "view_thumbnail",
    "warm_up",
    "MapRun",
    "compare_map",
    "decode_for_compare",
    "sanity_maps",
    "slow_estimate",
    "slow_map",
    "slow_map_cached",
    "boxed_examples",
]

MODEL_KEY = "model_name"
"""Session-state key holding the model chosen in the sidebar (shared by every page)."""

ROOTS_KEY = "data_roots"
"""Session-state key listing the data folders this session typed in the browser (each one a root)."""



@dataclass(frozen=True)
class ModelChoice:
    """The models the app can offer, the default, and why there are none (when there are none)."""

    names: tuple[str, ...]
    default: str | None
    problem: str | None = None


def available_models() -> ModelChoice:
    """Indexed checkpoints and ensembles in the weights folder; never raises."""
    from mura_core.models import weights

    folder = weights_folder()
    try:
        names = list(weights.list_weights(folder))
        names += [n for n in weights.list_ensembles(folder) if n not in names]
        default = weights.default_name(folder)
    except Exception as exc:  # an unreadable index must not take the app down
        return ModelChoice((), None, f"The weights index in {folder} could not be read: {exc}")
    if not names:
        return ModelChoice((), None, f"No trained weights are shipped yet (nothing indexed in "
                                     f"{folder}/index.json). Train one with `python -m mura_core train ...`; "
                                     "until then nothing can be scored.")
    if default in names:  # the index's default (a checkpoint or an ensemble) leads the list
        names = [default] + [n for n in names if n != default]
    return ModelChoice(tuple(names), names[0])


def selected_model() -> str | None:
    """The model chosen in the sidebar (or the default one), None when no weights exist."""
    choice = available_models()
    name = st.session_state.get(MODEL_KEY)
    return name if name in choice.names else choice.default


def model_selector() -> str | None:
    """Draw the sidebar's model picker (on every page) and return the chosen name."""
    choice = available_models()
    if not choice.names:
        st.sidebar.warning(choice.problem or "No model available.")
        return None
    current = selected_model()
    name = st.sidebar.selectbox("Model", choice.names, index=choice.names.index(current),
                                key="sidebar_model",
                                format_func=lambda n: f"{n} (weak: AUC < 0.7)" if model_warning(n) else n,
                                help="Checkpoints listed in weights/index.json (the first is the default).")
    st.session_state[MODEL_KEY] = name
    warning = model_warning(name)
    if warning:
        st.sidebar.warning(warning, icon=":material/warning:")
    return name


def get_predictor(name: str) -> Any:
    """SCORE's Predictor for an indexed checkpoint or ensemble of the weights folder, built once per
    process and shared by every session."""
    return _build_predictor(name, str(weights_folder()))


def loaded_models(name: str) -> list[Any]:
    """TRAIN's LoadedModel(s) behind a model name (one, or an ensemble's members), loaded once.

    sha256 is verified by `checkpoints.load_weights`; a missing or tampered file raises CheckpointError.
    """
    return _load_models(name, str(weights_folder()))


@st.cache_resource(show_spinner="Loading the model (once per server)…", max_entries=4)
def _load_models(name: str, folder: str) -> list[Any]:
    from mura_core.models import weights
    from mura_core.models.devices import pick_device

    device = pick_device("auto")
    members = weights.list_ensembles(folder).get(name, [name])
    return [weights.load_weights(m, device=device, weights_dir=folder) for m in members]


@st.cache_resource(show_spinner=False, max_entries=4)
def _build_predictor(name: str, folder: str) -> Any:
    from mura_core.models.devices import pick_device
    from mura_core.explain.predictor import Predictor

    return Predictor.from_index(name, _load_models(name, folder), device=pick_device("auto"), weights_dir=folder)


_WARM: dict[str, threading.Event] = {}
_WARM_LOCK = threading.Lock()


def _warm_key(name: str) -> str:
    return f"{weights_folder()}::{name}"


def warm_up(name: str | None) -> None:
    """Load the model (and torch) in a background thread, once per server process, so that no page waits
    for it before drawing; a page that needs the model then waits only for what is left of the load."""
    if name is None:
        return
    folder, key = str(weights_folder()), _warm_key(name)
    with _WARM_LOCK:
        if key in _WARM:
            return
        done = _WARM[key] = threading.Event()

    def load() -> None:
        try:
            _build_predictor(name, folder)
            device_name()
        except Exception:  # the page that needs the model reports the error when it loads it itself
            pass
        finally:
            done.set()

    threading.Thread(target=load, name=f"warm-up {name}", daemon=True).start()


def model_ready(name: str | None, wait: float = 0.0) -> bool:
    """True once the model's warm-up has finished (waiting up to `wait` seconds); starts it if needed."""
    if name is None:
        return True
    warm_up(name)
    return _WARM[_warm_key(name)].wait(max(0.0, wait))


@st.cache_resource(show_spinner=False)
def result_cache() -> ResultCache:
    """The process-wide cache of scored studies (bounded; shared by every session)."""
    return ResultCache(max_entries=24)


def _with_bytes(study: Study) -> tuple[Study, list[bytes | None]]:
    """The study with each on-disk view's bytes read once (unreadable files keep no bytes)."""
    views, datas = [], []
    for view in study.views:
        try:
            data = read_view_bytes(view)
        except DecodeError:
            data = None
        datas.append(data)
        views.append(View(view.name, view.path, data, view.boxes) if data is not None else view)
    return dataclasses.replace(study, views=tuple(views)), datas


def score_study(model: str, study: Study, *, cam: str | None, target: str = "abnormal", tta: bool | None = None,
                window: tuple[float, float] | None = None) -> tuple[Any, bool]:
    """Score a study (or fetch it from the cache): returns (StudyResult, came_from_cache). `tta` None: the
    model's own test-time flip."""
    predictor = get_predictor(model)
    tta = predictor.resolve_tta(tta)
    study, datas = _with_bytes(study)
    key = score_key(f"{weights_folder()}::{model}", datas, [v.name for v in study.views], body_part=study.body_part,
                    cam=cam, target=target, tta=tta, window=window)
    cache = result_cache()
    hit = cache.get(key)
    if hit is not None:
        return hit, True
    result = predictor.predict_study(study, body_part=study.body_part, cam=cam, target=target, tta=tta,
                                     window=window)
    cache.put(key, result)
    return result, False


@st.cache_resource(show_spinner=False)
def device_name() -> str:
    """The device models run on, in words (e.g. 'CUDA GPU (NVIDIA H100)' or 'CPU')."""
    try:
        import torch

        from mura_core.models.devices import pick_device

        device = pick_device("auto")
        if device.type == "cuda":
            return f"CUDA GPU ({torch.cuda.get_device_name(device)})"
        if device.type == "mps":
            return "Apple GPU (MPS)"
        return f"CPU ({torch.get_num_threads()} threads)"
    except Exception as exc:  # no torch / broken driver: still show the page
        return f"unknown ({exc})"


@st.cache_data(show_spinner="Reading the data folder…", max_entries=4, ttl=900)
def open_dataset_cached(path: str) -> Any:
    """DATA's `open_dataset` for a folder or manifest, cached per path for 15 minutes."""
    from mura_core.data.sources import open_dataset

    return open_dataset(Path(path))


def view_thumbnail(view: View, root: Path) -> bytes | None:
    """A small square PNG of a dataset view with its boxes, or None when it is unreadable or lies
    outside `root` (then it is never opened)."""
    if view.path is None or not is_within(view.path, [root]):
        return None
    path = Path(view.path)
    try:
        mtime = path.stat().st_mtime
    except OSError:
        return None
    return _thumbnail_png(str(path.resolve()), mtime, tuple(tuple(b) for b in view.boxes))


@st.cache_data(show_spinner=False, max_entries=2048)
def _thumbnail_png(path: str, mtime: float, boxes: tuple, size: int = 160) -> bytes | None:
    """The cached thumbnail of one image file (`mtime` in the key, so a changed file is re-read)."""
    from mura_core.imaging.decode import DecodeError, decode_view
    from mura_core.app.views import draw_boxes, thumbnail, to_png_bytes

    try:
        decoded = decode_view(View(Path(path).name, Path(path)))
    except (DecodeError, OSError):
        return None
    small = draw_boxes(thumbnail(decoded.pixels, size), boxes)
    canvas = thumbnail(small, size, square=True)
    return to_png_bytes(canvas)


# ------------------------------------------------------------------------------------------------
# explanation methods and studies
# ------------------------------------------------------------------------------------------------

def default_tta(model: str | None) -> bool:
    """The model's own test-time flip (index.json "default_tta"): where the viewer's switch starts."""
    return default_tta_for(model, weights_folder()) if model else False


def cam_methods(model: str | None) -> tuple[list[str], str]:
    """The heat-map methods the model supports (SCORE's order) and its default one.

    Without a loadable model: every method that needs no particular architecture (attention methods
    are left out) and `FALLBACK_CAM` (works on every architecture), so the sidebar still renders.
    """
    if model is not None:
        try:
            predictor = get_predictor(model)
            return list(predictor.cam_methods()), str(predictor.default_cam)
        except Exception:  # the page reports the load error where it scores
            pass
    from mura_core.explain.cams import ATTENTION_METHODS, CAM_METHODS, FALLBACK_CAM

    return [m for m in CAM_METHODS if m not in ATTENTION_METHODS], FALLBACK_CAM


def overlay_fn() -> Any:
    """SCORE's `explain.overlay(image, heatmap, colormap=..., alpha=...)`."""
    from mura_core.explain.cams import overlay

    return overlay


def study_from_files(files: list[tuple[str, bytes]], body_part: str | None) -> Study:
    """DATA's `study_from_uploads`: in-memory views, body part from the user or DICOM."""
    from mura_core.data.uploads import study_from_uploads

    return study_from_uploads(files, body_part=body_part)


def remember_root(path: str | Path) -> None:
    """Record a data folder the user typed in this session, so links into it may be opened."""
    roots = st.session_state.setdefault(ROOTS_KEY, [])
    text = str(Path(path).expanduser().resolve())
    if text not in roots:
        roots.append(text)


def allowed_roots() -> list[Path]:
    """Configured data roots (default, MURA_DATA) plus the folders this session typed."""
    roots = configured_roots()
    for text in st.session_state.get(ROOTS_KEY, []):
        roots += [r for r in configured_roots(text) if r not in roots]
    return roots


@dataclass(frozen=True)
class LinkedStudy:
    """The study named by the page's query parameters (`data`, `study`), or why it cannot be opened."""

    study: Study | None = None
    error: str | None = None
    data: str | None = None


def linked_study() -> LinkedStudy:
    """Open the study linked by ``?data=<folder or manifest>&study=<study id>`` (from the browser).

    The data path must lie inside an allowed root and every view inside that root; views that
    escape it are dropped and named in the error. No query parameters -> an empty LinkedStudy.
    """
    params = st.query_params
    study_id = params.get("study")
    if not study_id:
        return LinkedStudy()
    data = params.get("data") or (str(default_data_root()) if default_data_root() else None)
    if not data:
        return LinkedStudy(error="The link names a study but no data folder.")
    return find_linked_study(data, study_id)


def find_linked_study(data: str, study_id: str) -> LinkedStudy:
    """The study `study_id` of the data at `data` (inside an allowed root), its views outside the root
    dropped and named in the error (the browser's and the worklist's way into a study)."""
    roots = allowed_roots()
    if not is_within(data, roots):
        return LinkedStudy(error=f"{data} is not inside a configured data folder; open it from the "
                                 "Dataset browser first (or set MURA_DATA).", data=data)
    try:
        index = open_dataset_cached(str(Path(data).expanduser().resolve()))
    except Exception as exc:
        return LinkedStudy(error=f"The data at {data} could not be read: {exc}", data=data)
    found = find_study(index, study_id)
    if found is None:
        return LinkedStudy(error=f"No study {study_id!r} in {data}.", data=data)
    root = root_for(data, roots) or Path(data)
    safe, refused = safe_study(found, root)
    return LinkedStudy(safe, "; ".join(refused) or None, data)


def close_linked_study() -> None:
    """Forget the linked study (clears the query parameters)."""
    st.query_params.clear()


# ------------------------------------------------------------------------------------------------
# model facts and browser predictions
# ------------------------------------------------------------------------------------------------

def model_card(name: str | None) -> Any:
    """The ModelCard of a model (an ensemble: its first member's), None when there is no model."""
    if name is None:
        return None
    return loaded_models(name)[0].card


def shipped_card(name: str | None) -> Any:
    """The ModelCard of an indexed checkpoint as its shipped evaluate report records it (sha256 matching the
    index), read without torch or the model; None when the report cannot vouch for it (then `model_card`)."""
    from mura_core.evaluation.reports import report_card
    from mura_core.models.weights import read_index

    if name is None:
        return None
    try:
        entry = read_index(weights_folder())["models"].get(name) or {}
    except Exception:  # an unreadable index: the page falls back to the loaded model
        return None
    report, _ = model_report(name)
    return report_card(report, entry.get("sha256")) if report is not None else None


@dataclass(frozen=True)
class ShippedEnsemble:
    """An indexed ensemble as its shipped evaluate report records it: members and the thresholds it used."""

    members: tuple[dict[str, Any], ...]
    thresholds: dict[str, float]
    maps_from: tuple[str, ...] = ()
    """The members whose heat maps it shows (every member when they are all listed)."""


def shipped_ensemble(name: str | None) -> ShippedEnsemble | None:
    """`shipped_card` for an ensemble: its members and thresholds from the shipped report, read without torch,
    when the report scored exactly the indexed members' files; None otherwise (not an ensemble, no report)."""
    from mura_core.evaluation.reports import report_ensemble, report_maps_from, thresholds_of
    from mura_core.models.weights import read_index

    if name is None:
        return None
    try:
        index = read_index(weights_folder())
        shas = [(index["models"].get(m) or {}).get("sha256") for m in index.get("ensembles", {}).get(name, [])]
    except Exception:  # an unreadable index: the page falls back to the loaded model
        return None
    report, _ = model_report(name) if shas else (None, "")
    members = report_ensemble(report, shas) if report is not None and all(shas) else None
    if not members:
        return None
    return ShippedEnsemble(tuple(members), thresholds_of(report), tuple(report_maps_from(report)))


def model_thresholds(name: str | None) -> dict[str, float]:
    """The thresholds the model decides with (body part -> threshold; "default" always present): the card's,
    or for an ensemble its own (index.json) or else its members' averaged, as its `Predictor` applies them."""
    try:
        thresholds = get_predictor(name).thresholds if name is not None else None
    except Exception:
        thresholds = None
    return dict(thresholds or {"default": 0.5})


def report_for_model(name: str | None) -> ReportRef | None:
    """The evaluate report shipped for this model (``<weights folder>/<name>.report/``), or None."""
    return shipped_report(name, weights_folder())


def model_report(name: str | None) -> tuple[dict[str, Any] | None, str]:
    """The shipped evaluate report of a model (None when there is none) and where it lives, in words.

    Home, the Model card and the Validation page quote this report: one source for every figure.
    """
    ref = report_for_model(name)
    if ref is None:
        return None, f"no evaluate report in {weights_folder()}/{name}.report"
    try:
        report = _report_json_cached(str(ref.report), ref.report.stat().st_mtime)
    except Exception as exc:  # an unreadable report is reported, never raised into a page
        return None, f"{ref.report} could not be read ({exc})"
    return report, f"{ref.report.parent.name}/{ref.report.name}"


@st.cache_data(show_spinner=False, max_entries=16)
def _report_json_cached(path: str, mtime: float) -> dict[str, Any]:
    """A report.json alone (no predictions file): what Home and the sidebar quote on every page's first run."""
    from mura_core.evaluation.reports import read_report

    return read_report(Path(path))


@st.cache_data(show_spinner=False, max_entries=16)
def _read_predictions_cached(path: str, mtime: float) -> list[StudyPrediction]:
    return read_predictions(path)


_SCORES_KEY = "browser_scores"


def browser_probabilities(model: str | None, data: str, studies: list[Study]) -> tuple[dict[str, float], str]:
    """study_id -> probability for this data and model, and where they came from (in words).

    The shipped predictions.csv of the model is used when at least 90% of its rows name studies of
    this data with the same label; studies scored on demand in this session are added on top.
    """
    if model is None:
        return {}, "no model"
    probs: dict[str, float] = {}
    sources = []
    ref = report_for_model(model)
    if ref is not None and ref.predictions is not None:
        try:
            preds = _read_predictions_cached(str(ref.predictions), ref.predictions.stat().st_mtime)
        except (OSError, ValueError):
            preds = []
        if preds and predictions_match(preds, studies) >= 0.9:
            probs.update({p.study_id: p.probability for p in preds if p.probability is not None})
            sources.append(f"{model}'s evaluation ({ref.predictions.name}, {len(probs)} studies)")
    computed = st.session_state.get(_SCORES_KEY, {}).get((model, data), {})
    if computed:
        probs.update(computed)
        sources.append(f"scored here ({len(computed)} studies)")
    return probs, " + ".join(sources) or "none"


def score_for_browser(model: str, data: str, studies: list[Study], root: Path,
                      progress: Any = None) -> dict[str, float]:
    """Score studies without heat maps (views inside `root` only) and remember their probabilities
    in this session."""
    store = st.session_state.setdefault(_SCORES_KEY, {}).setdefault((model, data), {})
    for i, study in enumerate(studies, start=1):
        safe, _ = safe_study(study, root)
        if safe.views:
            try:  # scores only, straight from the Predictor: a batch must not evict the viewer's cache
                result = get_predictor(model).predict_study(safe, body_part=safe.body_part, cam=None)
                if result.probability is not None:
                    store[study.study_id] = float(result.probability)
            except Exception:  # one bad study must not stop the batch
                pass
        if progress is not None:
            progress(i, len(studies))
    return store


# ------------------------------------------------------------------------------------------------
# validation
# ------------------------------------------------------------------------------------------------

@st.cache_data(show_spinner=False, max_entries=8, ttl=600)
def load_report_cached(report_path: str) -> tuple[dict[str, Any], list[StudyPrediction]]:
    """An evaluate report.json and its predictions.csv (cached for 10 minutes)."""
    path = Path(report_path)
    refs = [r for r in find_reports([path.parent], max_depth=0) if r.report == path]
    ref = refs[0] if refs else ReportRef(path.parent.name, path.parent, path, None)
    return load_report(ref)


@st.cache_data(show_spinner="Fitting thresholds out of fold…", max_entries=8, ttl=600)
def cross_fitted_cached(report_path: str) -> CrossFitted | None:
    """`evaluation.cross_fitted.cross_fitted_figures` of a report's study predictions (cached: 20 draws of 5 folds
    take about half a second, and the page reruns on every widget change)."""
    from mura_core.evaluation.cross_fitted import cross_fitted_figures

    return cross_fitted_figures(load_report_cached(report_path)[1])


def model_loso(name: str | None) -> dict[str, Any] | None:
    """`training.loso.model_loso` of the weights folder (an ensemble quotes its members'); None when there is
    none or it (or the index) cannot be read."""
    from mura_core.models.card import CheckpointError
    from mura_core.training.loso import model_loso as shipped_loso

    if name is None:
        return None
    try:
        return shipped_loso(name, weights_folder())
    except (OSError, ValueError, CheckpointError):
        return None


def model_warning(name: str | None) -> str | None:
    """The weak-model warning for a model whose shipped report is below chance-like AUC on every source."""
    from mura_core.evaluation.reports import weak_model_warning

    report, _ = model_report(name)
    return weak_model_warning(report)


def map_warning(name: str | None, method: str | None) -> str | None:
    """The heat-map caution for `method` from the model's shipped report (`evaluation.reports.map_caution`)."""
    from mura_core.evaluation.reports import map_caution

    if not method:
        return None
    report, _ = model_report(name)
    return map_caution(report, method)


def report_thresholds(report: dict[str, Any], name: str) -> dict[str, float]:
    """The thresholds the report was computed at, else the model card's when the model is known."""
    found = thresholds_of(report)
    if set(found) == {"default"} and name in available_models().names:
        return model_thresholds(name)
    return found


_EVAL_KEY = "evaluations"


def run_evaluation(model: str, data: str, split: str | None, progress: Any = None) -> list[StudyPrediction]:
    """Score every image of a data split (inside configured roots) with `evaluate`, heat maps on images
    with finding boxes for the pointing game; keep the study predictions and the report in this session."""
    from mura_core.evaluation.evaluate import evaluate_rows
    from mura_core.evaluation.reports import aggregate_studies

    resolved = Path(data).expanduser().resolve()
    remember_root(resolved)
    if not is_within(resolved, allowed_roots()):
        raise ValueError(f"{data} is not inside a configured data folder")
    report, rows = evaluate_rows(str(resolved), split=split, predictor=get_predictor(model), cam="auto",
                                 n_bootstrap=0, workers=0, progress=False, on_progress=progress)
    if not rows:
        raise ValueError(f"no studies in split {split!r} of {data}")
    out = aggregate_studies((r.study, r.body_part, r.label, r.probability, r.split, r.source) for r in rows)
    st.session_state.setdefault(_EVAL_KEY, {})[_evaluation_key(model, data, split)] = (out, report)
    return out


def _evaluation_key(model: str, data: str, split: str | None) -> tuple[str, str, str]:
    """Where `run_evaluation` keeps a run: (model, resolved data path, split or "all")."""
    resolved = str(Path(data).expanduser().resolve()) if str(data).strip() else ""
    return model, resolved, split or "all"


def evaluation_results(model: str, data: str, split: str | None) -> tuple[list[StudyPrediction], dict[str, Any]]:
    """Study predictions and report of an evaluation run in this session (([], {}) when none yet)."""
    return st.session_state.get(_EVAL_KEY, {}).get(_evaluation_key(model, data, split), ([], {}))


def card_markdown(name: str) -> str:
    """The model card as markdown, the same text `python -m mura_core card` writes (`evaluation.cards.card_text`:
    metrics quoted from the shipped report, default map and flip, heat-map caution); an ensemble's card (members,
    rule, thresholds, its own report) followed by each member's card with the member's own figures."""
    from mura_core.models.weights import list_ensembles

    members = list_ensembles(weights_folder()).get(name) or []
    return _card_markdown(name, tuple(members), str(weights_folder()))


@st.cache_data(show_spinner=False, max_entries=4)
def _card_markdown(name: str, members: tuple[str, ...], folder: str) -> str:
    from mura_core.evaluation.cards import card_text

    return "\n\n---\n\n".join(card_text(n, folder) for n in (name, *members))


def windowed_view(study: Study, view: Any, window: tuple[float, float] | None) -> Any:
    """`view` (a scored ViewResult) with its image re-decoded under a DICOM display `window`.

    Display only: the probability and heat map stay those the model gave on the file's own window, so
    changing window/level never changes a score. Returns `view` unchanged without a window, for
    non-DICOM views, or when the file cannot be read again.
    """
    from mura_core.imaging.decode import decode_view

    if window is None or getattr(getattr(view, "meta", None), "format", None) != "DICOM":
        return view
    source = next((v for v in study.views if v.name == view.name), None)
    if source is None:
        return view
    try:
        shown = decode_view(source, window=window)
    except DecodeError:
        return view
    return dataclasses.replace(view, image=shown.pixels, meta=shown.meta)


def triage_study(model: str, study: Study, result: Any) -> Any:
    """The scope check of every view and the body-part suggestion of a scored study (cached with it).

    One feature pass over what the model saw (`explain.triage`); a model without fitted heads gets only
    what the DICOM tags say.
    """
    from mura_core.explain.triage import triage_study as run_triage

    study, datas = _with_bytes(study)
    key = ("triage", score_key(f"{weights_folder()}::{model}", datas, [v.name for v in study.views], cam=None))
    cache = result_cache()
    hit = cache.get(key)
    if hit is None:
        hit = run_triage(get_predictor(model), result)
        cache.put(key, hit)
    return hit


# ------------------------------------------------------------------------------------------------
# compare heat maps (teaching page): one image, every method, cached per (model, image, method)
# ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class MapRun:
    """One method's heat map of one image: at the model's input size, with the score and the runtime."""

    method: str
    heatmap: Any
    probability: float
    seconds: float


def decode_for_compare(name: str, data: bytes | None = None, path: str | None = None) -> tuple[Any, str]:
    """(grey image 0..1, cache key) of an uploaded file or a dataset file; DecodeError when unreadable."""
    import hashlib

    from mura_core.imaging.decode import decode_view

    view = View(name=name, path=Path(path) if path else None, data=data)
    raw = data if data is not None else read_view_bytes(view)
    return decode_view(view).pixels, hashlib.sha256(raw).hexdigest()


def _first_member(model: str) -> Any:
    """The model's predictor and the first member whose heat maps it shows (its input size sizes the maps)."""
    predictor = get_predictor(model)
    return predictor, predictor.map_members[0]


@st.cache_data(show_spinner=False, max_entries=512)
def compare_map(model: str, image_key: str, method: str, target: str, _image: Any) -> MapRun:
    """A fast method's map of the image keyed by `image_key` (the image itself is not hashed)."""
    import time

    predictor, member = _first_member(model)
    batches = predictor.prepare([_image])
    start = time.perf_counter()
    prob, maps = predictor.run_batches_many(batches, [method], target=target)
    seconds = time.perf_counter() - start
    size = (member.config.image_size, member.config.image_size)
    return MapRun(method, predictor.combine_maps(maps[method], 0, size), float(prob[0]), seconds)


@st.cache_data(show_spinner=False, max_entries=64)
def slow_estimate(model: str, image_key: str, method: str, _image: Any) -> float:
    """Seconds a slow method should take on this server for the image (one timed probe forward per
    model of the ensemble that gives maps)."""
    from mura_core.explain.slow import estimate_seconds

    predictor = get_predictor(model)
    batches = predictor.prepare([_image])
    return float(sum(estimate_seconds(m.model, m.spec, batches[m.config].to(predictor.device), method)
                     for m in predictor.map_members))


@st.cache_resource(show_spinner=False)
def _slow_results() -> ResultCache:
    """Process-wide cache of slow maps (not st.cache_data: the run draws a progress bar)."""
    return ResultCache(max_entries=64, max_bytes=64 * 1024 * 1024)


def slow_map_cached(model: str, image_key: str, method: str, target: str) -> MapRun | None:
    """The slow map `slow_map` already computed for this (model, image, method, target), else None;
    never starts a run."""
    return _slow_results().get((model, image_key, method, target))


def slow_map(model: str, image_key: str, method: str, target: str, _image: Any, _progress: Any = None) -> MapRun:
    """A slow method's map with progress (`_progress(fraction)`); one slow run per server at a time.

    Every model of an ensemble that gives maps (`Predictor.map_members`) runs in turn (progress split evenly
    between them); their maps are combined as the Predictor combines fast maps. The probability is the
    predictor's own (every member, one plain forward). The map is at the first map member's input size.
    Raises `explain.slow.SlowBusy` when another session's slow run holds the server; a failed or stopped run
    is not cached.
    """
    import time

    from mura_core.explain.slow import run_slow

    cached = slow_map_cached(model, image_key, method, target)
    if cached is not None:
        return cached
    predictor = get_predictor(model)
    batches = predictor.prepare([_image])
    members = predictor.map_members
    maps = []
    start = time.perf_counter()
    for k, member in enumerate(members):
        share = (lambda f, k=k: _progress((k + f) / len(members))) if _progress is not None else None
        member_maps, _ = run_slow(member.model, member.spec, batches[member.config].to(predictor.device),
                                  method, target, progress=share)
        maps.append(member_maps)
    seconds = time.perf_counter() - start
    probability = float(predictor.run_batches(batches)[0][0])
    size = (members[0].config.image_size, members[0].config.image_size)
    run = MapRun(method, predictor.combine_maps(maps, 0, size), probability, seconds)
    _slow_results().put((model, image_key, method, target), run)
    return run


@st.cache_data(show_spinner=False, max_entries=32)
def sanity_maps(model: str, image_key: str, target: str, level: float, methods: tuple[str, ...],
                _image: Any) -> dict[str, tuple[Any, float]]:
    """{method: (randomised model's map, Spearman similarity to the trained map)} for fast methods."""
    from mura_core.explain.sanity import sanity_check

    predictor, member = _first_member(model)
    x = predictor.prepare([_image])[member.config].to(predictor.device)
    trained = {m: compare_map(model, image_key, m, target, _image).heatmap for m in methods}
    result = sanity_check(member.model, member.spec, x, list(methods), level=level, target=target,
                          trained_maps=trained)
    return {m: (r.randomised, r.similarity) for m, r in result.items()}


def heads_report_markdown(name: str | None) -> str:
    """The `fit-heads` report (scope check rates, body-part accuracy) of a model's checkpoint(s), or ''."""
    if name is None:
        return ""
    parts = []
    for loaded in loaded_models(name):
        report = Path(loaded.path).with_name(f"{Path(loaded.path).stem}.heads.md")
        if report.is_file():
            parts.append(report.read_text())
    return "\n\n".join(parts)


def boxed_examples(limit: int = 40) -> list[View]:
    """Abnormal views with finding boxes from the default data folder (valid split first), for teaching;
    [] when no data folder is configured or it cannot be read."""
    root = default_data_root()
    if root is None:
        return []
    try:
        index = open_dataset_cached(str(Path(root).expanduser().resolve()))
    except Exception:
        return []
    studies = sorted(index.studies, key=lambda s: s.split != "valid")
    return [v for s in studies if s.label == 1 for v in s.views if v.boxes][:limit]
