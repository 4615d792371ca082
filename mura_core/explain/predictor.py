"""Score a study: per-view abnormality probabilities, the study's decision and heat maps.

`Predictor` holds one model (or an ensemble) on one device and scores the views of a study in ONE
batched forward pass (on the CPU, forwards of at most `models.devices.CPU_FORWARD_ROWS` rows, which are faster
there). With a heat-map method the same forward gives the scores (`explain.explain_batch`); without one the
forward runs under `torch.inference_mode`.

Decisions, as in MURA: the study probability is the mean of its views' probabilities (``aggregate="max"``
as an option); the study is abnormal when ``probability >= threshold`` where the threshold is the
model card's ``thresholds[body_part]``, else ``thresholds["default"]``. Views that cannot be decoded get
an error (the `DecodeError` reason) and the rest of the study is still scored.

Test-time augmentation (``tta=True``): each view is also scored horizontally flipped; probabilities are
averaged, and heat maps are averaged after flipping the flipped map back (`explain.explain_with_flip`:
``cam-zoom`` and ``cam-ms`` already forward the mirror images, so there the flip costs no extra forward).
An ensemble's members named in the index's ``"ensemble_unflipped"`` (`unflipped=`) skip the flip: the shipped
default's 768 px window member, whose flip doubled its cost and moved the valid AUCs by less than their noise
(README, Results).
``tta=None`` (every method's default) means the model's own choice, `Predictor.tta`: on for an index entry
listed in ``"default_tta"`` (the shipped default ensemble), so the viewer, the worklist and `evaluate` score it
the same way.

Ensembles: several `LoadedModel`s (``weights/index.json`` "ensembles"). Probabilities are the mean of
the members' probabilities. Heat maps are AVERAGED across the map members after each member's map is
resized to the original image size and then min-max normalised again; the map members are every member
unless the index names some (``"ensemble_maps_from"``, `maps_from=`): the shipped default shows the maps of
its Lite2 member alone, whose maps point at findings more often than the average (README, Results). Each
member uses its own preprocessing (size, mean, std). The ensemble's thresholds are its own when the index has
them (``"ensemble_thresholds"``, fitted on its valid predictions) or `thresholds=` is given, else the members'
thresholds averaged key by key (keys present in every member).

Determinism: models are in eval mode, nothing is random, and on CUDA cuDNN is set to deterministic
algorithms (``torch.backends.cudnn.deterministic = True``, ``benchmark = False``); the same input gives
the same numbers on the same device.

Features: the scoring forward also leaves the first model's pooled features on each `ViewResult`
(`explain.features.capture_pooled`), so the scope check and the body-part suggestion (`explain.triage`)
need no second forward.

int8 scoring (opt-in, CPU): `Predictor.enable_int8(calibration_images)` switches scoring to int8 copies of the
members (`explain.quantize`), which also return the pooled features, so the scope check still works. Scores
only: any heat-map request then raises `ExplainError`. Name and sha256 gain an "int8" mark, so a worklist
never resumes float rows into an int8 run.

Thread safety: every forward through a member holds that model's lock (`explain.model_lock`), so one
`Predictor` may be shared by many threads (e.g. Streamlit sessions).

Example:
    >>> predictor = Predictor.from_weights()                      # doctest: +SKIP
    >>> result = predictor.predict_study(study, cam="cam")        # doctest: +SKIP
    >>> result.probability, result.abnormal, result.views[0].peak  # doctest: +SKIP
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mura_core.models.card import mean_thresholds
from mura_core.models.checkpoints import LoadedModel
from mura_core.models.weights import (
    default_cam_for, default_name, default_tta_for, ensemble_maps_from, ensemble_thresholds, ensemble_unflipped,
    list_ensembles, load_weights, weights_folder,
)
from mura_core.imaging.decode import DecodeError, ImageMeta, decode_view
from mura_core.models.devices import forward_chunks, pick_device
from mura_core.explain.cams import (
    CAM_METHODS, DEFAULT_CAM, FALLBACK_CAM, MULTILAYER_METHODS, SLOW_METHODS, TARGETS, ExplainError, default_method,
    explain_many, explain_with_flip, heatmap_peak, model_lock, normalise_map, resize_heatmap, supports_method,
)
from mura_core.explain.features import capture_pooled
from mura_core.explain.quantize import DEFAULT_MAX_DELTA
from mura_core.models.registry import get_arch
from mura_core.imaging.preprocess import PreprocessConfig, to_model_input
from mura_core.data.studies import AGGREGATES, BodyPart, Study, View, study_probability, threshold_for

__all__ = ["AGGREGATES", "Predictor", "StudyResult", "ViewResult", "study_probability"]

ENSEMBLE_THRESHOLDS_SOURCE = ("fitted on this ensemble's own valid predictions (Youden's J per body part with at "
                              "least 5 normal and 5 abnormal in-scope studies; index.json ensemble_thresholds, "
                              "`python -m mura_core fit-thresholds`)")
"""`Predictor.thresholds_source` of an ensemble whose index entry carries its own thresholds."""

AUTO_CAM = ("auto", "default")
"""`cam` values that mean "the model's default method" (its index entry's, else classic CAM where possible, else
Grad-CAM, per member)."""


@dataclass
class ViewResult:
    """One view's outcome: a probability and heat map, or the reason it could not be read."""

    name: str
    probability: float | None = None
    error: str | None = None
    image: np.ndarray | None = field(default=None, repr=False)
    """The decoded image, 2-D float32 0..1 at its original size."""
    heatmap: np.ndarray | None = field(default=None, repr=False)
    """2-D float32 0..1 at the image's original size (None without a CAM method)."""
    peak: tuple[float, float] | None = None
    """Heat-map maximum as (x, y) in 0..1 image coordinates (`explain.heatmap_peak`); None if flat."""
    meta: ImageMeta | None = None
    model_image: np.ndarray | None = field(default=None, repr=False)
    """What the model saw when it differs from `image` (a DICOM shown with a display window): the file's
    own default window, so window/level never changes a score. None when `image` is what it saw."""
    scope: Any = None
    """The scope check (`explain.scope.ScopeResult`) when the model has fitted heads, else None."""
    features: np.ndarray | None = field(default=None, repr=False)
    """(C,) pooled features of the first model from the scoring forward (`explain.features`), the input of
    the scope and body-part heads; None when that forward did not run through the model (slow methods)."""

    @property
    def input_image(self) -> np.ndarray | None:
        """The pixels the model scored (default window), whatever the display window."""
        return self.model_image if self.model_image is not None else self.image


@dataclass
class StudyResult:
    """A study's outcome: aggregated probability, threshold, decision and the per-view results."""

    probability: float | None
    threshold: float
    abnormal: bool | None
    body_part: str
    aggregate: str
    views: list[ViewResult]
    driving_view: int | None
    """Index (into `views`) of the view with the highest probability: the one driving the decision."""
    model_name: str
    cam: str | None = None
    target: str = "abnormal"
    tta: bool = False
    threshold_reason: str = ""
    """Which threshold was applied and why (`Predictor.threshold_reason`)."""

    @property
    def errors(self) -> list[tuple[str, str]]:
        """(name, reason) of every view that could not be read."""
        return [(v.name, v.error) for v in self.views if v.error is not None]

    @property
    def scored(self) -> int:
        """How many views were scored."""
        return sum(v.probability is not None for v in self.views)


@dataclass
class _Member:
    """One model of the (possibly one-model) ensemble, with what it needs to run."""

    model: torch.nn.Module
    spec: Any
    config: PreprocessConfig
    name: str
    sha256: str | None
    thresholds: dict[str, float]
    temperature: float = 1.0
    """Calibration from the card: P = sigmoid(logit / temperature)."""

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated P(abnormal) of raw logits: sigmoid(logit / temperature), float64."""
        return 1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64) / self.temperature))


def _member(loaded: LoadedModel, device: torch.device) -> _Member:
    card = loaded.card
    model = loaded.model.to(device).eval()
    config = PreprocessConfig(image_size=int(card.image_size), mean=tuple(card.mean), std=tuple(card.std))
    return _Member(model, get_arch(card.arch), config, card.name, loaded.sha256, dict(card.thresholds),
                   float(getattr(card, "temperature", 1.0) or 1.0))



def _member_indexes(names: Sequence[str], chosen: Sequence[str], argument: str) -> list[int]:
    """Positions in `names` of the members named in `chosen` (the `argument` of `Predictor`); an unknown name is
    an error, not a silently ignored choice."""
    unknown = [m for m in chosen if m not in names]
    if unknown:
        raise ValueError(f"{argument} names {', '.join(unknown)}, not a member ({', '.join(names)})")
    wanted = set(chosen)
    return [k for k, n in enumerate(names) if n in wanted]


class Predictor:
    """A loaded model (or ensemble) on a device, ready to score studies; load once, call many times.

    Args:
        models: one `LoadedModel` or several (an ensemble: probabilities averaged).
        device: ``"auto"`` (CUDA, then MPS, then CPU), ``"cpu"``, ``"cuda"``, ``"mps"`` or a torch.device.
        name: display name (default: the card's name, or members joined by "+").
        thresholds: override the card thresholds (body part -> threshold, with "default").
        thresholds_source: where `thresholds` came from, in words (reports quote it); default: said from the
            rule applied.
        maps_from: names of the members whose heat maps are shown (default: every member's, averaged);
            scores always average every member.
        default_cam: the heat-map method "auto" stands for when every map member supports it (the index's
            "default_cam" for indexed weights); otherwise each member's `explain.default_method`.
        tta: the model's own test-time flip, applied wherever a call leaves ``tta=None`` (the index's
            "default_tta" for indexed weights).
        unflipped: names of members scored without the flip even when a call asks for it (the index's
            "ensemble_unflipped"): their probability and map are the plain view's.
    """

    def __init__(self, models: LoadedModel | Sequence[LoadedModel], *, device: str | torch.device = "auto",
                 name: str | None = None, thresholds: Mapping[str, float] | None = None,
                 maps_from: Sequence[str] | None = None, default_cam: str | None = None,
                 thresholds_source: str | None = None, tta: bool = False,
                 unflipped: Sequence[str] = ()) -> None:
        loaded = [models] if isinstance(models, LoadedModel) else list(models)
        if not loaded:
            raise ValueError("Predictor needs at least one model")
        self.device = pick_device(device)
        if self.device.type == "cuda":
            torch.backends.cudnn.deterministic = True
            torch.backends.cudnn.benchmark = False
        self.members = [_member(m, self.device) for m in loaded]
        names = [m.name for m in self.members]
        self.map_indexes = _member_indexes(names, maps_from, "maps_from") if maps_from else list(range(len(names)))
        """Positions of the members whose heat maps are shown (all by default)."""
        self.unflipped_indexes = frozenset(_member_indexes(names, unflipped, "unflipped"))
        """Positions of the members that never take the test-time flip."""
        self.loaded = loaded
        self.name = name or "+".join(m.name for m in self.members)
        base = dict(thresholds) if thresholds is not None else mean_thresholds([m.thresholds for m in self.members])
        base.setdefault("default", 0.5)
        self.thresholds: dict[str, float] = {str(k): float(v) for k, v in base.items()}
        self.thresholds_source = thresholds_source or (
            "given by the caller" if thresholds is not None
            else "model card (fitted on the model's validation split)" if len(self.members) == 1
            else "mean of the ensemble members' model-card thresholds")
        """Where `thresholds` came from, in words."""
        self.preferred_cam = default_cam if default_cam is not None and all(
            supports_method(m.model, m.spec, default_cam) for m in self.map_members) else None
        """The model's own default method when every map member supports it (None: the library's rule)."""
        self.tta = bool(tta)
        """The model's own test-time flip: what ``tta=None`` means in every scoring call."""
        self.int8: list[Any] | None = None
        """The members' `explain.quantize.Int8Scorer`s once `enable_int8` ran (scores only), else None."""

    # ------------------------------------------------------------------ construction and facts

    @classmethod
    def from_weights(cls, name: str | None = None, device: str | torch.device = "auto",
                     weights_dir: str | Path | None = None) -> "Predictor":
        """Load indexed weights (or an ensemble named in weights/index.json, or a checkpoint path).

        `weights_dir` defaults to ``$MURA_WEIGHTS_DIR`` when set, else the repository's weights/.
        """
        weights_dir = weights_folder(weights_dir)
        target = pick_device(device)
        ensembles = list_ensembles(weights_dir)
        name = default_name(weights_dir) if name is None else name
        if name is not None and str(name) in ensembles:
            members = [load_weights(m, device="cpu", weights_dir=weights_dir) for m in ensembles[str(name)]]
            return cls.from_index(str(name), members, device=target, weights_dir=weights_dir)
        loaded = load_weights(name, device="cpu", weights_dir=weights_dir)
        return cls.from_index(loaded.card.name, [loaded], device=target, weights_dir=weights_dir)

    @classmethod
    def from_index(cls, name: str, loaded: Sequence[LoadedModel], *, device: str | torch.device = "auto",
                   weights_dir: str | Path | None = None) -> "Predictor":
        """A Predictor for indexed weights `name` already loaded (one checkpoint, or an ensemble's members), with
        what the index says about its maps (the members that give them, the default method), its thresholds and its
        test-time flip."""
        folder = weights_folder(weights_dir)
        ensemble = len(loaded) > 1
        own = ensemble_thresholds(str(name), folder) if ensemble else None
        return cls(list(loaded) if ensemble else loaded[0], device=device, name=str(name),
                   maps_from=ensemble_maps_from(str(name), folder) if ensemble else None,
                   default_cam=default_cam_for(str(name), folder), thresholds=own,
                   thresholds_source=ENSEMBLE_THRESHOLDS_SOURCE if own else None,
                   tta=default_tta_for(str(name), folder),
                   unflipped=ensemble_unflipped(str(name), folder) if ensemble else ())

    @property
    def card(self) -> Any:
        """The (first member's) model card."""
        return self.loaded[0].card

    @property
    def sha256(self) -> str | None:
        """The checkpoint sha256 (members' joined by "+" for an ensemble)."""
        shas = [m.sha256 or "" for m in self.members]
        sha = shas[0] if len(shas) == 1 else "+".join(shas)
        return sha + ":int8" if self.int8 is not None else sha

    @property
    def is_ensemble(self) -> bool:
        return len(self.members) > 1

    @property
    def map_members(self) -> list[_Member]:
        """The members whose heat maps are shown, in order (every member unless `maps_from` chose some)."""
        return [self.members[k] for k in self.map_indexes]

    @property
    def default_cam(self) -> str:
        """The model's own default (`preferred_cam`) when every map member supports it, else `DEFAULT_CAM`
        (classic CAM) when they all allow it, else ``"gradcam"``."""
        if self.preferred_cam is not None:
            return self.preferred_cam
        methods = {default_method(m.model, m.spec) for m in self.map_members}
        return DEFAULT_CAM if methods == {DEFAULT_CAM} else FALLBACK_CAM

    def cam_methods(self) -> list[str]:
        """Heat-map methods every member supports (slow ones included; see `explain.SLOW_METHODS`); none on
        the int8 path."""
        if self.int8 is not None:
            return []
        return [meth for meth in CAM_METHODS
                if all(supports_method(m.model, m.spec, meth) for m in self.map_members)]

    def threshold_for(self, body_part: BodyPart | str | None) -> float:
        """The body part's threshold, else the default."""
        return threshold_for(self.thresholds, body_part)

    def threshold_reason(self, body_part: BodyPart | str | None) -> str:
        """Which threshold applies to `body_part` and why, in words a reader can check against the card."""
        part = BodyPart.parse(getattr(body_part, "value", body_part))
        value = self.threshold_for(part)
        if part is not BodyPart.UNKNOWN and part.value in self.thresholds:
            return f"{part.label}'s own threshold {value:.1%}, fitted on its valid images"
        if part is BodyPart.UNKNOWN:
            return f"global threshold {value:.1%}: no body part given"
        return (f"global threshold {value:.1%}: the valid data has too few normal and abnormal "
                f"{part.label} images to fit one of its own")

    @property
    def input_configs(self) -> list[PreprocessConfig]:
        """The distinct preprocessing configurations the members need (one for a single model)."""
        out: list[PreprocessConfig] = []
        for m in self.members:
            if m.config not in out:
                out.append(m.config)
        return out

    def resolve_tta(self, tta: bool | None) -> bool:
        """A call's test-time flip: `tta` itself, or the model's own (`Predictor.tta`) for None."""
        return self.tta if tta is None else bool(tta)

    def resolve_cam(self, cam: str | None) -> str | None:
        """The method name `cam` stands for: "auto" -> the default shared by every member ("auto" kept
        when an ensemble's members differ, each then using its own default); None stays None."""
        if cam not in AUTO_CAM:
            return cam
        if self.preferred_cam is not None:
            return self.preferred_cam
        methods = {default_method(m.model, m.spec) for m in self.map_members}
        return methods.pop() if len(methods) == 1 else "auto"

    def enable_int8(self, calibration: Sequence[np.ndarray], *, backend: str | None = None,
                    observer: str = "histogram", max_delta: float | None = DEFAULT_MAX_DELTA) -> None:
        """Score with int8 copies of the members from now on (CPU only; scores and pooled features, no maps).

        Args:
            calibration: decoded 2-D training images (not the ones to be measured) that set the int8 ranges
                (`explain.quantize.calibration_images`).
            backend: the quantised engine (default `explain.quantize.DEFAULT_BACKEND`).
            observer, max_delta: see `explain.quantize.quantize_for_scoring` (None: no accuracy check).

        Raises:
            QuantizeError: not on the CPU, no images, or an architecture that cannot be quantised (named).
        """
        from mura_core.explain.quantize import DEFAULT_BACKEND, QuantizeError, quantize_for_scoring

        if self.device.type != "cpu":
            raise QuantizeError(f"int8 scoring runs on the CPU only (this predictor is on {self.device})")
        if not len(calibration):
            raise QuantizeError("int8 scoring needs calibration images (decoded training images)")
        scorers = []
        for member in self.members:
            batch = torch.stack([to_model_input(img, member.config) for img in calibration])
            batches = [batch[i:i + 8] for i in range(0, len(batch), 8)]
            scorers.append(quantize_for_scoring(
                member.model, member.spec, batches, backend=backend or DEFAULT_BACKEND, observer=observer,
                temperature=member.temperature, max_delta=max_delta))
        if self.int8 is None:
            self.name = f"{self.name} (int8)"
        self.int8 = scorers

    def _method_for(self, member: _Member, cam: str) -> str:
        if self.int8 is not None:
            raise ExplainError(f"heat maps ({cam}) are not available on the int8 scoring path (scores only); "
                               "score without int8 to get them")
        if cam in AUTO_CAM:
            return self.preferred_cam or default_method(member.model, member.spec)
        if not supports_method(member.model, member.spec, cam):
            if cam in CAM_METHODS:
                raise ExplainError(f"{cam!r} is not available for {member.spec.name} "
                                   f"(available: {', '.join(self.cam_methods())})")
            raise ExplainError(f"unknown CAM method {cam!r}; choose from {', '.join(CAM_METHODS)} or 'auto'")
        return cam

    # ------------------------------------------------------------------ the core

    def prepare(self, images: Sequence[np.ndarray]) -> dict[PreprocessConfig, torch.Tensor]:
        """Decoded 2-D images -> one (N, 3, S, S) batch per distinct preprocessing configuration."""
        return {config: torch.stack([to_model_input(img, config) for img in images])
                for config in self.input_configs}

    def run_batches(self, batches: Mapping[PreprocessConfig, torch.Tensor], *, cam: str | None = None,
                    target: str = "abnormal", tta: bool | None = None
                    ) -> tuple[np.ndarray, list[np.ndarray] | None]:
        """Probabilities (N,) and, with `cam`, each map member's heat maps (N, S_m, S_m) at its input size.

        One forward per member over the whole batch (2N rows with the flip, where ``cam-zoom`` or ``cam-ms`` does
        not already forward the mirror images; on the CPU a few rows per forward, `models.devices.forward_chunks`);
        heat maps come from that same forward.
        """
        prob, maps = self.run_batches_many(batches, [cam] if cam is not None else [], target=target, tta=tta)
        return prob, (maps[cam] if cam is not None else None)

    def run_batches_many(self, batches: Mapping[PreprocessConfig, torch.Tensor], methods: Sequence[str], *,
                         target: str = "abnormal", tta: bool | None = None
                         ) -> tuple[np.ndarray, dict[str, list[np.ndarray]]]:
        """Probabilities (N,) and {method: each map member's heat maps} from one forward per member
        (`map_members`; the other members give scores only).

        Several fast methods share that forward (`explain.explain_many`): evaluating the pointing game
        for seven methods costs about one forward, not seven. No methods: scores only (inference mode).
        """
        prob, maps, _ = self._run(batches, methods, target=target, tta=tta)
        return prob, maps

    def _run(self, batches: Mapping[PreprocessConfig, torch.Tensor], methods: Sequence[str], *,
             target: str, tta: bool | None) -> tuple[np.ndarray, dict[str, list[np.ndarray]], np.ndarray | None]:
        """`run_batches_many` plus the first member's pooled features when the int8 copies gave them (the
        float path leaves them to `capture_pooled`)."""
        if target not in TARGETS:
            raise ExplainError(f"unknown target {target!r}; choose 'abnormal' or 'normal'")
        methods = list(dict.fromkeys(methods))
        tta = self.resolve_tta(tta)
        probs: list[np.ndarray] = []
        maps: dict[str, list[np.ndarray]] = {m: [] for m in methods}
        int8_features = None
        for k, member in enumerate(self.members):
            x = batches[member.config].to(self.device, dtype=torch.float32)
            n = x.shape[0]
            flip = tta and k not in self.unflipped_indexes
            member_maps: dict[str, np.ndarray] = {}
            if not methods or k not in self.map_indexes:
                logits, pooled = self._scores_forward(k, torch.cat([x, torch.flip(x, dims=[-1])]) if flip else x)
                int8_features = pooled[:n] if k == 0 and pooled is not None else int8_features
            else:
                resolved = {m: self._method_for(member, m) for m in methods}
                explain = explain_with_flip if flip else explain_many
                by_name, logits = explain(member.model, member.spec, x, list(resolved.values()), target)
                member_maps = {m: by_name[resolved[m]] for m in methods}
            p = member.probabilities(logits)
            probs.append((p[:n] + p[n:]) / 2.0 if flip else p)
            for m in member_maps:
                maps[m].append(member_maps[m])
        return np.mean(probs, axis=0), maps, int8_features

    def _scores_forward(self, k: int, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray | None]:
        """Member `k`'s scores-only forwards (a few rows each on the CPU, `models.devices.forward_chunks`): raw
        logits (rows,) and, from its int8 copy (`enable_int8`), the pooled features (rows, C) that copy returns;
        None from the float model (hooks take them there)."""
        if self.int8 is not None:
            scorer = self.int8[k]
            with model_lock(scorer), torch.inference_mode():
                parts = [scorer(chunk) for chunk in forward_chunks(x)]
            return (torch.cat([logits.reshape(-1) for logits, _ in parts]).numpy(),
                    torch.cat([pooled for _, pooled in parts]).numpy().astype(np.float32))
        model = self.members[k].model
        with model_lock(model), torch.inference_mode():
            logits = [model(chunk).float().reshape(-1) for chunk in forward_chunks(x)]
        return torch.cat(logits).cpu().numpy(), None

    def run_batches_features(self, batches: Mapping[PreprocessConfig, torch.Tensor], methods: Sequence[str] = (),
                             *, target: str = "abnormal", tta: bool | None = None
                             ) -> tuple[np.ndarray, dict[str, list[np.ndarray]], np.ndarray | None]:
        """`run_batches_many` plus the first member's (N, C) pooled features taken from that same forward
        (`explain.features.capture_pooled`): the scope and body-part heads need no second forward. Features are
        None when only slow methods were asked (they run on a private copy of the model)."""
        member = self.members[0]
        if self.int8 is not None:  # the int8 copies return their features; no hook can see inside them
            return self._run(batches, methods, target=target, tta=tta)
        if methods and all(m in SLOW_METHODS for m in methods):
            return (*self.run_batches_many(batches, methods, target=target, tta=tta), None)
        rows = len(batches[member.config])
        with model_lock(member.model), capture_pooled(member.model, member.spec, rows=rows) as found:
            prob, maps = self.run_batches_many(batches, methods, target=target, tta=tta)
        n = len(prob)
        features = found[0][:n] if found and len(found[0]) >= n else None  # with tta: the unflipped rows
        return prob, maps, features

    @staticmethod
    def combine_maps(member_maps: Sequence[np.ndarray], index: int, size: tuple[int, int]) -> np.ndarray:
        """Image `index`'s heat map at `size` (H, W): members' maps resized, averaged, renormalised."""
        resized = [resize_heatmap(maps[index], size) for maps in member_maps]
        if len(resized) == 1:
            return resized[0]
        return normalise_map(np.mean(resized, axis=0))

    def predict_images(self, images: Sequence[np.ndarray], *, cam: str | None = None,
                       target: str = "abnormal", tta: bool | None = None
                       ) -> tuple[np.ndarray, list[np.ndarray] | None]:
        """Probabilities (N,) and heat maps at each image's own size (or None) for decoded 2-D images."""
        prob, heatmaps, _ = self._score_images(images, cam=cam, target=target, tta=tta)
        return prob, heatmaps

    def chunk_size(self, cam: str | None, count: int) -> int:
        """How many images to score per forward: all of them, except one at a time for a multi-layer heat map
        on the CPU (`explain.MULTILAYER_METHODS`: a backward through the whole network, whose autograd graph
        grows with the batch and is the app's peak memory: 1.98 GB for 3 DenseNet-169 views at 320 px in one
        batch, 1.3 GB one by one; on the CPU a smaller batch costs no speed)."""
        methods = {self._method_for(m, cam) for m in self.map_members} if cam is not None else set()
        return 1 if self.device.type == "cpu" and methods & MULTILAYER_METHODS else max(1, count)

    def _score_images(self, images: Sequence[np.ndarray], *, cam: str | None, target: str, tta: bool | None
                      ) -> tuple[np.ndarray, list[np.ndarray] | None, np.ndarray | None]:
        """`predict_images` plus the pooled features of the same forward (None when it has none), in chunks of
        `chunk_size` images."""
        if not len(images):
            return np.zeros(0), ([] if cam is not None else None), None
        step = self.chunk_size(cam, len(images))
        if step < len(images):
            parts = [self._score_images(images[i:i + step], cam=cam, target=target, tta=tta)
                     for i in range(0, len(images), step)]
            features = [f for _, _, f in parts]
            return (np.concatenate([p for p, _, _ in parts]), [h for _, maps, _ in parts for h in maps or []],
                    None if any(f is None for f in features) else np.concatenate(features))
        prob, maps, features = self.run_batches_features(self.prepare(images), [cam] if cam is not None else [],
                                                         target=target, tta=tta)
        if cam is None:
            return prob, None, features
        heatmaps = [self.combine_maps(maps[cam], i, np.asarray(img).shape[:2]) for i, img in enumerate(images)]
        return prob, heatmaps, features

    # ------------------------------------------------------------------ studies

    def predict_study(
        self,
        views: Sequence[View] | Study,
        *,
        body_part: BodyPart | str | None = None,
        cam: str | None = None,
        target: str = "abnormal",
        tta: bool | None = None,
        aggregate: str = "mean",
        window: tuple[float, float] | None = None,
    ) -> StudyResult:
        """Score every view of one study in one batch; unreadable views are reported, not fatal.

        Args:
            views: a `Study` or its views.
            body_part: overrides the study's body part (which otherwise comes from the study, else
                from the DICOM BodyPartExamined of the views, else UNKNOWN); picks the threshold.
            cam: a method from `explain.CAM_METHODS`, ``"auto"`` for the model's default, or None
                for scores only (fastest).
            target: ``"abnormal"`` or ``"normal"``: which decision the heat maps explain.
            tta: also score horizontally flipped views and average; None: the model's own (`Predictor.tta`).
            aggregate: ``"mean"`` (MURA) or ``"max"`` of the view probabilities.
            window: DICOM (center, width) for DISPLAY only (`ViewResult.image`); the model always sees
                the file's own window (or VOI LUT), so window/level never changes a score.
        """
        if aggregate not in AGGREGATES:
            raise ValueError(f"unknown aggregate {aggregate!r}; choose 'mean' or 'max'")
        if cam is not None and cam not in AUTO_CAM:
            for member in self.map_members:
                self._method_for(member, cam)  # fail early, before decoding
        study = views if isinstance(views, Study) else None
        view_list = list(study.views if study is not None else views)
        results = [_decode(view, window) for view in view_list]
        good = [i for i, r in enumerate(results) if r.image is not None]
        if good:
            prob, heatmaps, features = self._score_images([results[i].input_image for i in good], cam=cam,
                                                          target=target, tta=tta)
            for k, i in enumerate(good):
                results[i].probability = float(prob[k])
                results[i].features = None if features is None else features[k]
                if heatmaps is not None:
                    results[i].heatmap = heatmaps[k]
                    results[i].peak = heatmap_peak(heatmaps[k]) if heatmaps[k].max() > 0 else None
        part = _resolve_body_part(body_part, study, results)
        threshold = self.threshold_for(part)
        probability = study_probability([r.probability for r in results if r.probability is not None], aggregate)
        driving = max(good, key=lambda i: results[i].probability) if good else None
        return StudyResult(
            probability=probability, threshold=threshold,
            abnormal=None if probability is None else bool(probability >= threshold),
            body_part=part.value, aggregate=aggregate, views=results, driving_view=driving,
            model_name=self.name, cam=self.resolve_cam(cam), target=target, tta=self.resolve_tta(tta),
            threshold_reason=self.threshold_reason(part))


def _decode(view: View, window: tuple[float, float] | None) -> ViewResult:
    """Decode one view into a ViewResult holding its image, or the reason it failed."""
    try:
        decoded = decode_view(view)
        shown = decoded
        if window is not None and decoded.meta.format == "DICOM":
            shown = decode_view(view, window=window)  # display only; the model keeps `decoded`
    except DecodeError as error:
        return ViewResult(name=view.name, error=error.reason)
    except Exception as error:  # noqa: BLE001 - a view must never take the study down
        return ViewResult(name=view.name, error=f"could not read ({type(error).__name__})")
    return ViewResult(name=view.name, image=shown.pixels, meta=shown.meta,
                      model_image=None if shown is decoded else decoded.pixels)


def _resolve_body_part(explicit: BodyPart | str | None, study: Study | None,
                       results: Sequence[ViewResult]) -> BodyPart:
    """Explicit choice, else the study's, else the most common DICOM body part of the views."""
    if explicit is not None and BodyPart.parse(getattr(explicit, "value", explicit)) is not BodyPart.UNKNOWN:
        return BodyPart.parse(getattr(explicit, "value", explicit))
    if study is not None and study.body_part is not BodyPart.UNKNOWN:
        return BodyPart(study.body_part)
    parts = Counter(BodyPart.parse(r.meta.body_part) for r in results if r.meta is not None and r.meta.body_part)
    parts.pop(BodyPart.UNKNOWN, None)
    return parts.most_common(1)[0][0] if parts else BodyPart.UNKNOWN
