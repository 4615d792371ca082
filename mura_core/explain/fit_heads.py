"""Fit the scope and body-part heads of one checkpoint on its own pooled features; the ONE way they are made.

Data (read in place): FracAtlas (regions from its flags; LEG / HIP / LOWER_LIMB are the lower-limb class,
HAND_WRIST_FOREARM / SHOULDER_HUMERUS / UPPER_LIMB upper limb) and bone-fracture-xr (upper limb; its abnormal
images carry MURA parts). Generated images (`imaging.synthetic`: chest-like, photographs, documents, CT/MR
slices) come in two disjoint seed ranges: a fit set (split 'train', `FIT_SEED`) that the image-kind head
learns from, and a held-out set (split 'generated', `HELD_OUT_SEED`) that only measures the check. Both come
from the same generator, so the held-out rates say how well the head learned that generator, not how it
fares on real chest films or scanned documents (the density check is the catch-all for those).

Protocol:

1. features of every image (decoded by `imaging.decode`, preprocessed as the model's card says), cached
   per checkpoint sha256 under ``.cache/fit_heads/``; at most `max_per_group` images per (source, split,
   region), picked by a stable hash of the file name;
2. fit on the train splits: standardisation (real radiographs only), the upper-limb density model (PCA,
   whitened), the image-kind head (upper limb vs lower limb vs each generated kind), the body-part head;
3. calibrate on half of the valid splits (a stable hash picks the half): each of the two scope thresholds is
   the (1 - false_alarm / 2) quantile of its value over the calibration upper-limb images;
4. report on the other half of valid and on the held-out generated images (never seen by 2 or 3): the share
   of each category called out of scope (false alarms for upper limb, true alarms for the rest), and the
   body-part head's accuracy per class and confusion over ALL valid images with a part label (no body-part
   number was tuned on valid).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from mura_core.data.sources import open_dataset
from mura_core.data.studies import BodyPart, View
from mura_core.explain.features import pooled_features
from mura_core.explain.heads import UPPER_KIND, Heads, heads_path, save_heads
from mura_core.imaging.decode import DecodeError, decode_image, decode_view
from mura_core.imaging.preprocess import PreprocessConfig
from mura_core.imaging.synthetic import CATEGORIES, generate_set
from mura_core.models.registry import get_arch

__all__ = ["Item", "collect_items", "fit_heads", "FitResult"]

log = logging.getLogger(__name__)

UPPER_REGIONS = {BodyPart.HAND_WRIST_FOREARM, BodyPart.SHOULDER_HUMERUS, BodyPart.UPPER_LIMB}
FIT_SEED, HELD_OUT_SEED = 7, 13
"""Seed ranges of `imaging.synthetic.generate_set` for the generated images fitted on and held out."""
PART_CLASSES = ("ELBOW", "FINGER", "FOREARM", "HUMERUS", "SHOULDER", "WRIST", "HAND_WRIST_FOREARM",
                "SHOULDER_HUMERUS")


@dataclass(frozen=True)
class Item:
    """One image of the fit: where it comes from, its scope category and body-part class (or None)."""

    key: str
    source: str
    split: str
    category: str
    """'upper_limb', 'lower_limb' (with `group` LEG/HIP/LOWER_LIMB) or a generated category."""
    group: str
    part: str | None
    view: View


def _stable(text: str) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)


def collect_items(data: Sequence[str | Path], max_per_group: int, synthetic_per_category: int,
                  synthetic_fit_per_category: int = 0, leave_out_kind: str | None = None) -> list[Item]:
    """Every image used, with its labels; generated images are added as in-memory views: the fit set in split
    'train' (without `leave_out_kind`, to measure how the head does on a kind it never saw), the held-out set
    in split 'generated'."""
    items: list[Item] = []
    for root in data:
        for split in ("train", "valid"):
            index = open_dataset(root, split=split)
            groups: dict[str, list[Item]] = {}
            for study in index.studies:
                part = BodyPart(study.body_part)
                if index.kind == "fracatlas":
                    if part is BodyPart.UNKNOWN:
                        continue
                    category = "upper_limb" if part in UPPER_REGIONS else "lower_limb"
                    label = part.value if part in (BodyPart.HAND_WRIST_FOREARM, BodyPart.SHOULDER_HUMERUS) else None
                else:
                    if not part.in_scope:
                        continue
                    category, label = "upper_limb", (part.value if part.value in PART_CLASSES else None)
                for view in study.views:
                    key = f"{Path(root).name}/{view.path or view.name}"
                    item = Item(key, Path(root).name, split, category, part.value, label, view)
                    groups.setdefault(part.value, []).append(item)
            for members in groups.values():
                members.sort(key=lambda it: _stable(it.key))
                items.extend(members[:max_per_group])
    for split, count, seed in (("train", synthetic_fit_per_category, FIT_SEED),
                               ("generated", synthetic_per_category, HELD_OUT_SEED)):
        for category, name, data_bytes in generate_set(count, seed=seed):
            if split == "train" and category == leave_out_kind:
                continue
            items.append(Item(f"generated/{name}", "generated", split, category, category, None,
                              View(name=name, data=data_bytes)))
    return items


def _cached_features(items: Sequence[Item], extract: Callable[[list[np.ndarray]], np.ndarray], cache: Path,
                     progress: Callable[[str], None]) -> tuple[np.ndarray, list[bool]]:
    """(N, C) features (rows of unreadable images are zero) and which rows are valid; cached by key."""
    known: dict[str, np.ndarray] = {}
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as stored:
            known = dict(zip(stored["keys"].tolist(), stored["features"]))
    todo = [i for i, it in enumerate(items) if it.key not in known]
    batch: list[tuple[str, np.ndarray]] = []

    def flush() -> None:
        if batch:
            feats = extract([img for _, img in batch])
            known.update({k: f for (k, _), f in zip(batch, feats)})
            batch.clear()

    bad: set[str] = set()
    for n, i in enumerate(todo, 1):
        try:
            batch.append((items[i].key, decode_view(items[i].view).pixels))
        except DecodeError as error:
            log.warning("skipped %s", error)
            bad.add(items[i].key)
        if len(batch) >= 32:
            flush()
            progress(f"features {n}/{len(todo)}")
    flush()
    if todo:
        cache.parent.mkdir(parents=True, exist_ok=True)
        keys = sorted(known)
        np.savez(cache, keys=np.asarray(keys, dtype=np.str_), features=np.stack([known[k] for k in keys]))
    if not known:
        raise ValueError("no image could be read; nothing to fit")
    dim = next(iter(known.values())).shape[0]
    rows = [known.get(it.key, np.zeros(dim, np.float32)) for it in items]
    return np.stack(rows).astype(np.float64), [it.key in known for it in items]


def _fit_density(z: np.ndarray, components: int) -> tuple[np.ndarray, np.ndarray, float]:
    centre = z.mean(axis=0)
    x = z - centre
    _, s, vt = np.linalg.svd(x, full_matrices=False)
    k = min(components, len(s) - 1)
    var = s[:k] ** 2 / max(len(z) - 1, 1)
    whitened = vt[:k].T / np.sqrt(var)
    basis = vt[:k].T
    residual = x - (x @ basis) @ basis.T
    return centre, whitened, float(np.mean(residual ** 2))


def _logistic(x: np.ndarray, y: np.ndarray, c: float) -> Any:
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=c, class_weight="balanced", max_iter=3000).fit(x, y)


@dataclass
class FitResult:
    heads: Heads
    report: dict[str, Any]


def fit_heads(model: Any, spec_name: str, config: PreprocessConfig, checkpoint_sha256: str, items: Sequence[Item], *,
              false_alarm: float = 0.05, components: int = 32, cache_dir: Path = Path(".cache/fit_heads"),
              device: str = "cpu", progress: Callable[[str], None] = lambda _: None) -> FitResult:
    """Fit, calibrate and measure the heads (see the module notes); nothing is written here."""
    spec = get_arch(spec_name)

    def extract(images: list[np.ndarray]) -> np.ndarray:
        return pooled_features(model, spec, config, images, device=device)

    cache = cache_dir / f"{checkpoint_sha256[:16]}_{config.image_size}.npz"
    feats, ok = _cached_features(items, extract, cache, progress)
    cats = np.array([it.category for it in items])
    splits = np.array([it.split for it in items])
    valid_half = np.array([_stable("calib:" + it.key) % 2 == 0 for it in items])
    okm = np.asarray(ok)
    train = okm & (splits == "train")
    calib = okm & (splits == "valid") & valid_half
    held = okm & (((splits == "valid") & ~valid_half) | (splits == "generated"))
    radiographs_train = train & np.isin(cats, [UPPER_KIND, "lower_limb"])

    mu = feats[radiographs_train].mean(axis=0)
    sd = feats[radiographs_train].std(axis=0) + 1e-6
    z = (feats - mu) / sd
    upper_train = train & (cats == UPPER_KIND)
    centre, whitened, residual_var = _fit_density(z[upper_train], components)
    kind_model = _logistic(z[train], cats[train], c=0.05)
    parts = np.array([it.part or "" for it in items])
    part_train = train & (parts != "")
    part_model = _logistic(z[part_train], parts[part_train], c=0.05)

    draft = Heads(checkpoint_sha256, mu, sd, centre, whitened, residual_var, 1.0,
                  tuple(str(c) for c in kind_model.classes_), kind_model.coef_.astype(np.float64),
                  kind_model.intercept_.astype(np.float64), 1.0,
                  tuple(str(c) for c in part_model.classes_), part_model.coef_.astype(np.float64),
                  part_model.intercept_.astype(np.float64))
    density, outside = draft.density(feats), draft.outside(feats)
    upper_calib = calib & (cats == UPPER_KIND)
    q = 1.0 - false_alarm / 2.0
    heads = dataclasses.replace(draft, density_threshold=float(np.quantile(density[upper_calib], q)),
                                kind_threshold=float(np.quantile(outside[upper_calib], q)))
    flagged = np.maximum(density / heads.density_threshold, outside / heads.kind_threshold) >= 1.0
    report = _report(items, flagged, held, calib, train, okm, heads, feats, false_alarm, components)
    return FitResult(heads, report)


def _rate(mask: np.ndarray, flagged: np.ndarray) -> dict[str, Any]:
    n = int(mask.sum())
    k = int((flagged & mask).sum())
    return {"images": n, "flagged_out_of_scope": k, "rate": round(k / n, 4) if n else None}


def _report(items: Sequence[Item], flagged: np.ndarray, held: np.ndarray, calib: np.ndarray, train: np.ndarray,
            ok: np.ndarray, heads: Heads, feats: np.ndarray, false_alarm: float, components: int) -> dict[str, Any]:
    cats = np.array([it.category for it in items])
    groups = np.array([it.group for it in items])
    sources = np.array([it.source for it in items])
    scope: dict[str, Any] = {}
    for source in sorted(set(sources[held]) - {"generated"}):
        scope[f"upper_limb ({source}) - false alarms"] = _rate(held & (cats == "upper_limb") & (sources == source), flagged)
    scope["lower_limb (all) - true alarms"] = _rate(held & (cats == "lower_limb"), flagged)
    for group in ("LEG", "HIP", "LOWER_LIMB"):
        scope[f"lower_limb {group} - true alarms"] = _rate(held & (groups == group), flagged)
    for category in CATEGORIES:
        scope[f"generated {category} - true alarms"] = _rate(held & (cats == category), flagged)

    parts = np.array([it.part or "" for it in items])
    splits = np.array([it.split for it in items])
    mask = ok & (splits == "valid") & (parts != "")
    predicted = np.array(heads.part_classes)[np.argmax(heads.parts(feats[mask]), axis=1)]
    truth = parts[mask]
    classes = list(heads.part_classes)
    confusion = {t: {p: int(((truth == t) & (predicted == p)).sum()) for p in classes} for t in classes}
    per_class = {t: {"images": int((truth == t).sum()),
                     "accuracy": round(float((predicted[truth == t] == t).mean()), 4) if (truth == t).any() else None}
                 for t in classes}
    confused = sorted(((t, p, confusion[t][p] / max(per_class[t]["images"], 1)) for t in classes for p in classes
                       if t != p and confusion[t][p]), key=lambda x: -x[2])[:6]
    return {
        "protocol": {"false_alarm_budget": false_alarm, "pca_components": components,
                     "train_images": int((train & ok).sum()),
                     "generated_train_images": int((train & ok & (sources == "generated")).sum()),
                     "calibration_images": int(calib.sum()),
                     "held_out_images": int(held.sum()),
                     "thresholds": {"density": round(heads.density_threshold, 4),
                                    "outside_probability": round(heads.kind_threshold, 4)}},
        "scope_held_out": scope,
        "body_part_valid": {"overall_accuracy": round(float((predicted == truth).mean()), 4) if len(truth) else None,
                            "per_class": per_class, "confusion": confusion,
                            "most_confused": [{"true": t, "predicted": p, "share": round(s, 3)} for t, p, s in confused]},
    }


def report_markdown(report: dict[str, Any], name: str) -> str:
    """The fit report as a markdown section (for the model card and README)."""
    p = report["protocol"]
    lines = [f"### Scope check and body-part suggestion ({name})", "",
             f"Fitted on {p['train_images']} train images ({p.get('generated_train_images', 0)} of them generated); "
             f"thresholds calibrated on {p['calibration_images']} valid images (false-alarm budget "
             f"{p['false_alarm_budget']:.0%}); measured on {p['held_out_images']} held-out images (the other half "
             "of valid, and generated images from seeds never fitted on; same generator as the fitted ones, so "
             "their rates say how well the head learned the generator, not how it fares on real chest films "
             "or scanned documents).",
             "", "| held-out category | images | called out of scope |", "|---|---|---|"]
    for key, value in report["scope_held_out"].items():
        rate = "n/a" if value["rate"] is None else f"{value['rate']:.1%}"
        lines.append(f"| {key} | {value['images']} | {rate} |")
    bp = report["body_part_valid"]
    lines += ["", f"Body-part suggestion, valid images with a part label: overall accuracy "
                  f"{bp['overall_accuracy']:.1%}" if bp["overall_accuracy"] is not None else "", "",
              "| class | images | accuracy |", "|---|---|---|"]
    for cls, value in bp["per_class"].items():
        acc = "n/a" if value["accuracy"] is None else f"{value['accuracy']:.1%}"
        lines.append(f"| {cls} | {value['images']} | {acc} |")
    if bp["most_confused"]:
        lines += ["", "Most confused (true -> suggested, share of the true class): " + "; ".join(
            f"{c['true']} -> {c['predicted']} {c['share']:.0%}" for c in bp["most_confused"])]
    return "\n".join(lines) + "\n"


def write_outputs(result: FitResult, checkpoint: Path, out: Path, *, card_name: str) -> dict[str, Path]:
    """Write ``<stem>.heads.npz``, ``<stem>.heads.json`` (report + sha256) and ``.md``; record the sha256 in
    ``index.json`` when `out` indexes this checkpoint. Returns the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    target = heads_path(out / checkpoint.name)
    sha = save_heads(result.heads, target)
    stem = checkpoint.stem
    report = {"checkpoint": checkpoint.name, "checkpoint_sha256": result.heads.checkpoint_sha256,
              "heads_file": target.name, "heads_sha256": sha, **result.report}
    json_path = out / f"{stem}.heads.json"
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    md_path = out / f"{stem}.heads.md"
    md_path.write_text(report_markdown(result.report, card_name))
    card = out / f"{stem}.md"
    if card.is_file():
        update_card_section(card, md_path.read_text())
    index = out / "index.json"
    if index.is_file():
        data = json.loads(index.read_text())
        for entry in data.get("models", {}).values():
            if entry.get("file") == checkpoint.name:
                entry["heads"], entry["heads_sha256"] = target.name, sha
        index.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return {"heads": target, "report": json_path, "markdown": md_path}


CARD_START, CARD_END = "<!-- fit-heads:start -->", "<!-- fit-heads:end -->"


def update_card_section(card: Path, section: str) -> None:
    """Put `section` between the fit-heads markers of a model card (appended the first time)."""
    text = card.read_text()
    block = f"{CARD_START}\n{section.rstrip()}\n{CARD_END}"
    if CARD_START in text and CARD_END in text:
        head, rest = text.split(CARD_START, 1)
        text = head + block + rest.split(CARD_END, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    card.write_text(text)
