"""Score many studies into a worklist, most suspicious first (``python -m mura_core score``).

A second reader faces a day's studies: every study of a data set (a MURA folder, a manifest, a FracAtlas
folder or a plain folder of DICOM / PNG / JPEG files) is scored and becomes one row: study probability
(mean of its views, as in MURA), decision at its body part's threshold, the view that drove it, a scope
column and the unreadable files with their reasons. ``worklist.csv`` is sorted by probability, highest
first; studies with no readable view come last (decision ``not scored``).

Resumable: each scored study is appended (and flushed) to ``DIR/partial/rank<R>-of-<W>.csv`` as soon
as its last view is scored; a new run with the same model skips the studies found there (rows written by
another model are ignored). A half-written last line from a killed run is cut off before appending.

Scope: a study whose body part lies outside MURA's upper extremity (leg, hip) reads ``out of scope: ...``.
Every view also gets the model's own scope check (`explain.scope.check_scope`: its fitted heads on the pooled
features of the very forward that scored it, so no second forward, plus explicit DICOM tags); an
out-of-scope view's warning names it in the column. A model without fitted heads gets the DICOM tags only and
the column reads ``not checked`` for the rest. `score_worklist(scope=...)` also takes an optional per-view check
``scope(image) -> warning or None`` run on each decoded image (0..1 grey, original size) in the decoding
workers. The study probability stays the mean of every scored view: the column warns, it does not drop.

Speed: views are decoded in DataLoader workers and scored in large batches (scores only, under inference
mode) under bf16 autocast wherever bf16 runs in hardware (`models.devices.native_bf16`: CUDA GPUs, CPUs with
AMX or AVX512-BF16) and the first batch scored both ways agrees within `BF16_TOLERANCE` (else float32; the
``model`` column says "(bf16)" when it ran so, per row, as each torchrun rank decides for itself;
``score --precision float32|bf16`` decides instead); on CUDA the batches come in pinned memory and the model
runs channels-last.

Beyond one machine: under ``torchrun`` (``WORLD_SIZE`` > 1) each rank scores every WORLD_SIZE-th pending
study, writes its own partial file, and rank 0 merges them into the one sorted worklist.csv (gloo on the
CPU, NCCL on GPUs; `training.distributed.init_distributed`).
"""
from __future__ import annotations

import csv
import io
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from mura_core.data.studies import BodyPart, Study, View, label_name, study_probability
from mura_core.evaluation.evaluate import ViewDataset
from mura_core.explain.scope import check_scope, warning_text
from mura_core.training.distributed import Dist, barrier, init_distributed

__all__ = [
    "BF16_MARK",
    "FLIP_MARK",
    "BF16_TOLERANCE",
    "COLUMNS",
    "ScopeCheck",
    "Worklist",
    "WorklistRow",
    "merge_partials",
    "read_rows",
    "score_studies",
    "score_worklist",
    "scope_text",
    "view_warnings",
    "sorted_rows",
    "worklist_csv",
]

ScopeCheck = Callable[[np.ndarray], "str | None"]
"""A per-view scope check: the decoded image (2-D float 0..1) -> a warning, or None when in scope."""

NOT_CHECKED = "not checked"
NOT_SCORED = "not scored"
WORKLIST_NAME = "worklist.csv"
PARTIAL_DIR = "partial"


@dataclass
class WorklistRow:
    """One study of the worklist."""

    study: str
    probability: float | None
    decision: str
    """'abnormal', 'normal' or 'not scored'."""
    threshold: float
    body_part: str
    driving_view: str
    driving_probability: float | None
    views: int
    scored: int
    scope: str
    unreadable: str
    """'name: reason' of each unreadable view, joined by ' | '."""
    label: str
    """The data's ground truth when it has one ('abnormal', 'normal', 'unlabelled')."""
    source: str
    model: str
    sha256: str


COLUMNS: tuple[str, ...] = ("rank", *(f.name for f in fields(WorklistRow)))
"""worklist.csv's columns: rank (1 = most suspicious) then the `WorklistRow` fields."""


@dataclass
class Worklist:
    """The outcome of `score_worklist`: rows sorted most suspicious first, and what happened."""

    rows: list[WorklistRow]
    scored_now: int
    resumed: int
    problems: list[str]
    path: Path | None = None


# ----------------------------------------------------------------------------------------------
# rows, sorting, CSV
# ----------------------------------------------------------------------------------------------

def _sort_key(row: WorklistRow) -> tuple[int, float, str]:
    return (row.probability is None, -(row.probability or 0.0), row.study)


def sorted_rows(rows: Sequence[WorklistRow]) -> list[WorklistRow]:
    """Most suspicious first; studies with no score last; ties by study id."""
    return sorted(rows, key=_sort_key)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6f}"
    return str(value)


def worklist_csv(rows: Sequence[WorklistRow]) -> str:
    """The worklist as CSV text (sorted, with a rank column)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for rank, row in enumerate(sorted_rows(rows), start=1):
        writer.writerow([rank, *(_cell(v) for v in asdict(row).values())])
    return out.getvalue()


def _row_from_dict(record: dict[str, str]) -> WorklistRow | None:
    """A row read back from CSV, or None when the line is incomplete or malformed."""
    try:
        prob = record["probability"]
        drive = record["driving_probability"]
        return WorklistRow(
            study=record["study"], probability=float(prob) if prob else None, decision=record["decision"],
            threshold=float(record["threshold"]), body_part=record["body_part"],
            driving_view=record["driving_view"], driving_probability=float(drive) if drive else None,
            views=int(record["views"]), scored=int(record["scored"]), scope=record["scope"],
            unreadable=record["unreadable"], label=record["label"], source=record["source"],
            model=record["model"], sha256=record["sha256"])
    except (KeyError, TypeError, ValueError):
        return None


def read_rows(path: Path) -> list[WorklistRow]:
    """Rows of a worklist.csv or a partial file (malformed lines skipped)."""
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8") as handle:
        return [r for r in (_row_from_dict(rec) for rec in csv.DictReader(handle)) if r is not None]


def _cut_partial_line(path: Path) -> None:
    """Drop a half-written last line (a run killed mid-write) so appended rows start on their own line."""
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        path.write_bytes(data[: data.rfind(b"\n") + 1])


class _PartialWriter:
    """Appends finished studies to one partial CSV, flushed and synced after each batch."""

    def __init__(self, path: Path | None) -> None:
        self.handle = None
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            _cut_partial_line(path)
        new = not path.exists() or path.stat().st_size == 0
        self.handle = path.open("a", newline="", encoding="utf-8")
        self.writer = csv.writer(self.handle, lineterminator="\n")
        if new:
            self.writer.writerow(COLUMNS[1:])

    def write(self, rows: Sequence[WorklistRow]) -> None:
        if self.handle is None or not rows:
            return
        for row in rows:
            self.writer.writerow([_cell(v) for v in asdict(row).values()])
        self.handle.flush()
        os.fsync(self.handle.fileno())

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()


def merge_partials(out: Path, sha256: str | None = None) -> list[WorklistRow]:
    """Every partial file's rows (of this model when `sha256` is given), one per study, sorted."""
    rows: dict[str, WorklistRow] = {}
    for path in sorted((out / PARTIAL_DIR).glob("rank*.csv")):
        for row in read_rows(path):
            if sha256 is None or row.sha256 == sha256:
                rows[row.study] = row
    return sorted_rows(list(rows.values()))


def scope_text(part: BodyPart, warnings: Sequence[tuple[str, str]], checked: bool) -> str:
    """The scope column: out of scope by body part, the views' warnings, 'in scope' or 'not checked'."""
    if not part.in_scope:
        return f"out of scope: {part.label} (MURA covers the upper extremity)"
    if warnings:
        return "; ".join(f"{name}: {text}" for name, text in warnings)
    return "in scope" if checked else NOT_CHECKED


# ----------------------------------------------------------------------------------------------
# decoding in workers and batched scoring
# ----------------------------------------------------------------------------------------------

def _collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """A batch: the good items' inputs stacked per configuration (so they can be pinned), the rest listed."""
    import torch

    good = [it for it in items if it["error"] is None]
    n_configs = len(good[0]["inputs"]) if good else 0
    return {"good": [it["index"] for it in good], "scope": [it["scope"] for it in good],
            "meta": [it.get("meta") for it in good],
            "bad": [(it["index"], it["error"]) for it in items if it["error"] is not None],
            "inputs": [torch.stack([it["inputs"][k] for it in good]) for k in range(n_configs)]}


def _fast_setup(predictor: Any, channels_last: bool) -> None:
    """Channels-last weights on CUDA (once per model)."""
    import torch

    if channels_last:
        for member in predictor.members:
            member.model.to(memory_format=torch.channels_last)


def _study_row(study: Study, probs: dict[int, float], errors: dict[int, str], warnings: dict[int, str],
               predictor: Any, checked: bool, model: str) -> WorklistRow:
    part = BodyPart.parse(getattr(study.body_part, "value", study.body_part))
    threshold = float(predictor.threshold_for(part))
    probability = study_probability(list(probs.values()))
    driving = max(probs, key=probs.get) if probs else None
    return WorklistRow(
        study=study.study_id, probability=probability,
        decision=NOT_SCORED if probability is None else ("abnormal" if probability >= threshold else "normal"),
        threshold=threshold, body_part=part.value,
        driving_view="" if driving is None else study.views[driving].name,
        driving_probability=None if driving is None else float(probs[driving]),
        views=len(study.views), scored=len(probs),
        scope=scope_text(part, [(study.views[k].name, w) for k, w in sorted(warnings.items())], checked),
        unreadable=" | ".join(f"{study.views[k].name}: {e}" for k, e in sorted(errors.items())),
        label=label_name(study.label), source=study.source, model=model, sha256=predictor.sha256 or "")


BF16_TOLERANCE = 0.01
"""Largest |bf16 - float32| probability on the first batch for automatic bf16 to stay on. Measured over both
sources' 992 valid images: DenseNet-169 moves at most 0.0023 (kept), the EfficientNet-Lite0 default 0.02 on
average and up to 0.22 (refused)."""


BF16_MARK = " (bf16)"
"""Ends the ``model`` column of rows whose scores came from bf16."""


FLIP_MARK = " (flip)"
"""Marks the ``model`` column of rows scored with the model's own test-time flip (`Predictor.tta`)."""


def _model_label(predictor: Any, bf16: bool) -> str:
    """The worklist's ``model`` column: the predictor's name, with `FLIP_MARK` when it scores with test-time flip
    and `BF16_MARK` when its scores came from bf16."""
    return predictor.name + (FLIP_MARK if getattr(predictor, "tta", False) else "") + (BF16_MARK if bf16 else "")


def _bf16_agrees(predictor: Any, inputs: dict[Any, Any], prob: np.ndarray, features: Any
                 ) -> tuple[bool, np.ndarray, Any]:
    """Score the first batch again in float32: (keep bf16?, the probabilities and features to use). When bf16
    moves a probability by more than `BF16_TOLERANCE` the run goes on in float32 and says so on stderr."""
    exact, _, exact_features = predictor.run_batches_features(inputs)
    delta = float(np.max(np.abs(np.asarray(prob) - np.asarray(exact)))) if len(exact) else 0.0
    if delta <= BF16_TOLERANCE:
        return True, prob, features
    print(f"bf16 moved a probability of {predictor.name} by {delta:.3f} on the first batch (more than "
          f"{BF16_TOLERANCE}): scoring in float32", file=sys.stderr)
    return False, exact, exact_features


def view_warnings(heads: Any | None, features: np.ndarray | None, metas: Sequence[Any],
                  checks: Sequence[str | None]) -> list[str | None]:
    """Each view's scope warning: the heads' verdict on its features (and its DICOM tags) joined with the
    optional per-view check's warning; None when nothing flags it."""
    verdicts = check_scope(heads, features, metas)
    out = []
    for verdict, check in zip(verdicts, checks):
        parts = [warning_text(verdict)] if verdict is not None and not verdict.in_scope else []
        parts += [str(check)] if check else []
        out.append("; ".join(parts) or None)
    return out


def score_studies(predictor: Any, studies: Sequence[Study], *, batch_size: int | None = None,
                  workers: int | None = None,
                  scope: ScopeCheck | None = None, heads: Any | None = None, amp: bool | None = None,
                  channels_last: bool | None = None,
                  on_images: Callable[[int], None] | None = None) -> Iterator[list[WorklistRow]]:
    """Score studies in batches of views; yields the studies finished by each batch (input order).

    Args:
        scope: optional per-view check on the decoded image (`ScopeCheck`), run in the decoding workers.
        heads: the model's fitted heads (`explain.heads.Heads`): each view's scope verdict from the pooled
            features of its scoring forward (one forward per batch); None: DICOM tags only.
        batch_size: views per forward (None: 256 on CUDA; 4 elsewhere: small batches stay in the CPU's caches,
            measured 1.4 vs 0.7 images/s for 4 vs 16 on the 2-core machine).
        workers: decoding processes (None: every core but one on CUDA, `evaluate.default_workers()` elsewhere).
        amp: bf16 autocast (None: where bf16 runs in hardware, `models.devices.native_bf16`, and only while the
            first batch's bf16 probabilities stay within `BF16_TOLERANCE` of float32's).
        channels_last: channels-last memory (None: on for CUDA, off elsewhere).
        on_images: called with the number of views each batch handled (progress).
    """
    import torch
    from torch.utils.data import DataLoader

    from mura_core.evaluation.evaluate import default_workers
    from mura_core.models.devices import bf16_autocast, native_bf16

    device = predictor.device
    cuda = device.type == "cuda"
    check_bf16 = amp is None  # auto: bf16 where native, kept only if the first batch agrees with float32
    amp = (native_bf16(device) if amp is None else bool(amp)) and getattr(predictor, "int8", None) is None
    channels_last = cuda if channels_last is None else bool(channels_last)
    _fast_setup(predictor, channels_last)
    configs = predictor.input_configs
    owner: list[tuple[int, int]] = [(s, v) for s, study in enumerate(studies) for v in range(len(study.views))]
    views = [studies[s].views[v] for s, v in owner]
    if workers is None:
        workers = max(1, (os.cpu_count() or 2) - 1) if cuda else default_workers()
    workers = max(0, int(workers))
    batch_size = (256 if cuda else 4) if batch_size is None else batch_size
    loader = DataLoader(ViewDataset(views, configs, scope), batch_size=max(1, int(batch_size)), shuffle=False,
                        num_workers=workers, collate_fn=_collate, pin_memory=cuda,
                        persistent_workers=False, prefetch_factor=4 if workers else None)
    probs: list[dict[int, float]] = [{} for _ in studies]
    errors: list[dict[int, str]] = [{} for _ in studies]
    warnings: list[dict[int, str]] = [{} for _ in studies]
    remaining = [len(s.views) for s in studies]
    next_study = 0
    memory = torch.channels_last if channels_last else torch.contiguous_format
    checked = scope is not None or heads is not None
    for batch in loader:
        for i, reason in batch["bad"]:
            s, v = owner[i]
            errors[s][v] = reason
            remaining[s] -= 1
        if batch["good"]:
            inputs = {c: x.to(device, non_blocking=cuda).contiguous(memory_format=memory)
                      for c, x in zip(configs, batch["inputs"])}
            with bf16_autocast(device, amp):
                prob, _, features = predictor.run_batches_features(inputs)
            if amp and check_bf16:
                amp, prob, features = _bf16_agrees(predictor, inputs, prob, features)
                check_bf16 = False
            found = view_warnings(heads, features, batch["meta"], batch["scope"])
            for i, p, warning in zip(batch["good"], prob, found):
                s, v = owner[i]
                probs[s][v] = float(p)
                if warning:
                    warnings[s][v] = str(warning)
                remaining[s] -= 1
        done = []
        while next_study < len(studies) and remaining[next_study] == 0:
            done.append(_study_row(studies[next_study], probs[next_study], errors[next_study],
                                   warnings[next_study], predictor, checked, _model_label(predictor, amp)))
            next_study += 1
        if done:
            yield done  # written before progress moves on
        if on_images is not None:
            on_images(len(batch["good"]) + len(batch["bad"]))
    tail = [_study_row(studies[k], probs[k], errors[k], warnings[k], predictor, checked, _model_label(predictor, amp))
            for k in range(next_study, len(studies))]  # studies without views
    if tail:
        yield tail


# ----------------------------------------------------------------------------------------------
# the worklist
# ----------------------------------------------------------------------------------------------

def score_worklist(
    data: str | Path,
    *,
    predictor: Any = None,
    weights: str | None = None,
    weights_dir: str | Path | None = None,
    device: str = "auto",
    out: str | Path | None = None,
    split: str | None = None,
    limit: int | None = None,
    batch_size: int | None = None,
    workers: int | None = None,
    scope: ScopeCheck | None = None,
    heads: Any = "auto",
    amp: bool | None = None,
    channels_last: bool | None = None,
    restart: bool = False,
    progress: bool | Callable[[int, int], None] = True,
    context: Dist | None = None,
) -> Worklist:
    """Score every study of `data` into a worklist (written to ``out/worklist.csv`` when `out` is given).

    Args:
        data: a MURA folder, manifest, FracAtlas folder or plain image folder (`data.sources.open_dataset`).
        predictor: a loaded `Predictor` (else built from `weights` / `weights_dir` on `device`).
        out: output folder; None scores in memory only (the app).
        split: one split only (None: every study); limit: the first N studies.
        scope: optional per-view scope check (`ScopeCheck`).
        heads: ``"auto"``: the model's fitted heads check every view's scope from its scoring forward (a model
            without them, or with refused ones, gets DICOM tags only; the refusal is listed in `problems`);
            a `Heads` to use those; None: no image check.
        restart: ignore earlier partial results in `out`.
        progress: True for a tqdm bar on stderr, or a callable ``(done_images, total_images)``.
        context: the torchrun rank (default: `init_distributed(device)`).
    """
    from mura_core.data.sources import open_dataset

    context = context or init_distributed(device)
    if predictor is None:
        from mura_core.explain.predictor import Predictor

        target = f"cuda:{context.local_rank}" if context.world > 1 and _wants_cuda(device) else device
        predictor = Predictor.from_weights(weights, device=target, weights_dir=weights_dir)
    index = open_dataset(data, split)
    problems = list(index.problems)
    if isinstance(heads, str) and heads == "auto":
        from mura_core.explain.heads import predictor_heads

        heads, refused = predictor_heads(predictor)
        problems += [f"scope check not available: {refused}"] if refused else []
    studies = index.studies if limit is None else index.studies[: max(0, int(limit))]
    out_path = Path(out) if out is not None else None
    sha = predictor.sha256 or ""
    done = _finished_rows(out_path, sha, restart, context)
    mine = [s for s in studies if s.study_id not in done][context.rank::context.world]
    partial = (out_path / PARTIAL_DIR / f"rank{context.rank}-of-{context.world}.csv") if out_path else None
    writer = _PartialWriter(partial)
    label = f"score {predictor.name}" + (f" (rank {context.rank} of {context.world})" if context.world > 1 else "")
    advance, close_bar = _progress(progress, sum(len(s.views) for s in mine), label, quiet=context.rank != 0)
    new: list[WorklistRow] = []
    try:
        for rows in score_studies(predictor, mine, batch_size=batch_size, workers=workers, scope=scope, heads=heads,
                                  amp=amp, channels_last=channels_last, on_images=advance):
            writer.write(rows)
            new.extend(rows)
    finally:
        writer.close()
        close_bar()
    barrier(context)
    if out_path is None:
        return Worklist(sorted_rows(new), len(new), 0, problems)
    rows, path = _write_merged(out_path, sha, {s.study_id for s in studies}, context)
    return Worklist(rows, len(new), len(done), problems, path)


def _finished_rows(out_path: Path | None, sha: str, restart: bool, context: Dist) -> dict[str, WorklistRow]:
    """Studies already scored by this checkpoint in `out_path` (none after `restart`); every rank agrees."""
    if out_path is None:
        return {}
    if restart and context.rank == 0:
        for old in (out_path / PARTIAL_DIR).glob("rank*.csv"):
            old.unlink()
    barrier(context)
    done = {r.study: r for r in merge_partials(out_path, sha)}
    barrier(context)  # every rank has read the same finished set before anyone appends
    return done


def _progress(progress: bool | Callable[[int, int], None], total: int, label: str,
              quiet: bool) -> tuple[Callable[[int], None], Callable[[], None]]:
    """(advance by n images, close): a tqdm bar on stderr for True, else the caller's ``(done, total)``."""
    bar = None
    if progress is True:
        from tqdm import tqdm

        bar = tqdm(total=total, unit="img", file=sys.stderr, desc=label, disable=quiet)
    seen = 0

    def advance(n: int) -> None:
        nonlocal seen
        seen += n
        if bar is not None:
            bar.update(n)
        elif callable(progress):
            progress(seen, total)

    return advance, (bar.close if bar is not None else lambda: None)


def _write_merged(out_path: Path, sha: str, keep: set[str], context: Dist) -> tuple[list[WorklistRow], Path]:
    """Merge every rank's partial file into the sorted ``worklist.csv`` (rank 0 writes it atomically)."""
    rows = [r for r in merge_partials(out_path, sha) if r.study in keep]
    path = out_path / WORKLIST_NAME
    if context.rank == 0:
        tmp = path.with_suffix(".csv.tmp")
        tmp.write_text(worklist_csv(rows), encoding="utf-8")
        tmp.replace(path)
    barrier(context)
    return rows, path


def _wants_cuda(device: str) -> bool:
    import torch

    return torch.cuda.is_available() and str(device).split(":")[0] in ("auto", "cuda")
