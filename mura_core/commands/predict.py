"""``python -m mura_core predict FILE...``: score one study (the files are its views) from the shell.

Prints per-image and study results, writes heat-map overlay PNGs to ``--out``; unreadable files are
listed with their reason and the rest are still scored. Exit code: 0 when at least one image was
scored, 1 when none could be, 2 for usage errors (bad options, weights that cannot be loaded).

With ``--json`` stdout carries exactly one JSON object (warnings and progress go to stderr)::

    {"model": "densenet169", "sha256": "...", "cam": "cam", "target": "abnormal", "tta": false,
     "study": {"probability": 0.71, "abnormal": true, "threshold": 0.5, "body_part": "WRIST",
               "aggregate": "mean", "driving_image": 0},
     "images": [{"file": "a.png", "probability": 0.71, "error": null,
                 "overlay": "out/00_a_overlay.png", "peak": [0.41, 0.63]},
                {"file": "b.dcm", "probability": null, "error": "not an image (...)",
                 "overlay": null, "peak": null}]}

Issue #13 additions: every image has ``"scope": {"in_scope": bool, "label": str, "score": float}`` (null when
the model has no fitted heads and no DICOM tag decides; ``score >= 1`` is out of scope, see
`explain.scope`), and the study has ``"body_part_suggested": {"part": str, "confidence": float,
"source": "dicom" | "image"}`` (or null) and ``"excluded_images"`` (indices left out of the study
probability because they are out of scope; ``--keep-out-of-scope`` keeps them). Without ``--body-part``
and without a DICOM body part, a suggested MURA part with at least 50% confidence picks the
threshold, as in the viewer.

``peak`` is the heat-map maximum as [x, y] in 0..1 of the image width/height, at the centre of the
maximal pixel (``x = (column + 0.5) / width``), null without a heat map. DICOM tags are never printed
(only the file names given on the command line and the numbers above).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
from pathlib import Path
from typing import Any

__all__ = ["build_parser", "cli_main", "result_to_json", "write_overlays"]


def build_parser() -> argparse.ArgumentParser:
    """The `predict` argument parser."""
    from mura_core.explain.cams import CAM_METHODS, COLORMAPS

    parser = argparse.ArgumentParser(
        prog="python -m mura_core predict",
        description="Score one study (its image files: PNG, JPEG or DICOM) and write heat-map overlays.")
    parser.add_argument("files", nargs="+", metavar="FILE", help="the study's images (one study)")
    parser.add_argument("--weights", default=None, help="indexed weights or ensemble name, or a checkpoint "
                                                        "path (default: weights/index.json's default)")
    parser.add_argument("--weights-dir", type=Path, default=None,
                        help="folder holding index.json (default: $MURA_WEIGHTS_DIR, else the repo's weights/)")
    parser.add_argument("--cam", default="auto", choices=["auto", "none", *CAM_METHODS],
                        help="heat-map method (default auto: the CAM table's default, classic CAM, where "
                             "the model allows, else Grad-CAM; none: scores only; scorecam/ablationcam are slow)")
    parser.add_argument("--target", default="abnormal", choices=["abnormal", "normal"],
                        help="which decision the heat map explains")
    parser.add_argument("--out", type=Path, default=None, help="folder for overlay PNGs")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument("--body-part", default=None,
                        help="ELBOW, FINGER, FOREARM, HAND, HUMERUS, SHOULDER or WRIST (picks the threshold; "
                             "default: from DICOM BodyPartExamined, else the default threshold)")
    parser.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                        help="also score horizontally flipped images and average (default: the model's own, "
                             "index.json default_tta)")
    parser.add_argument("--aggregate", default="mean", choices=["mean", "max"],
                        help="study probability from the image probabilities (MURA: mean)")
    parser.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda or mps")
    parser.add_argument("--colormap", default="jet", choices=sorted(COLORMAPS), help="overlay colour map")
    parser.add_argument("--alpha", type=float, default=0.4, help="overlay opacity 0..1")
    parser.add_argument("--window", type=float, nargs=2, metavar=("CENTER", "WIDTH"), default=None,
                        help="DICOM display window for the overlays (the score always uses the file's own window)")
    parser.add_argument("--keep-out-of-scope", action="store_true",
                        help="count images the scope check flags in the study probability too")
    return parser


def _safe_stem(name: str) -> str:
    """A file-name-safe stem of a view name (no separators or odd characters)."""
    stem = Path(name).stem or "image"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem)[:80]


def write_overlays(result: Any, out: Path, *, colormap: str = "jet", alpha: float = 0.4) -> list[str | None]:
    """Write ``NN_<stem>_overlay.png`` for every view with a heat map; returns the paths (None elsewhere)."""
    import cv2

    from mura_core.explain.cams import overlay

    out.mkdir(parents=True, exist_ok=True)
    paths: list[str | None] = []
    for i, view in enumerate(result.views):
        if view.heatmap is None or view.image is None:
            paths.append(None)
            continue
        rgb = overlay(view.image, view.heatmap, colormap=colormap, alpha=alpha)
        path = out / f"{i:02d}_{_safe_stem(view.name)}_overlay.png"
        if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
            raise OSError(f"could not write {path}")
        paths.append(str(path))
    return paths


def _round(value: float | None, digits: int = 6) -> float | None:
    return None if value is None else round(float(value), digits)


def _scope_json(view: Any) -> dict[str, Any] | None:
    scope = getattr(view, "scope", None)
    return None if scope is None else scope.as_json()


def result_to_json(result: Any, predictor: Any, overlays: list[str | None] | None = None,
                   triage: Any = None, keep: Any = ()) -> dict[str, Any]:
    """The documented JSON object for one study result (no image data, no DICOM tags)."""
    data = _result_json(result, predictor, overlays)
    suggestion = getattr(triage, "suggestion", None)
    data["study"]["body_part_suggested"] = None if suggestion is None else suggestion.as_json()
    if triage is not None:
        from mura_core.explain.triage import excluded_views

        data["study"]["excluded_images"] = excluded_views(triage, keep)
    else:
        data["study"]["excluded_images"] = []
    for image, view in zip(data["images"], result.views):
        image["scope"] = _scope_json(view)
    return data


def _result_json(result: Any, predictor: Any, overlays: list[str | None] | None) -> dict[str, Any]:
    overlays = overlays or [None] * len(result.views)
    return {
        "model": predictor.name,
        "sha256": predictor.sha256,
        "cam": result.cam,
        "target": result.target,
        "tta": result.tta,
        "study": {
            "probability": _round(result.probability),
            "abnormal": result.abnormal,
            "threshold": _round(result.threshold),
            "body_part": result.body_part,
            "aggregate": result.aggregate,
            "driving_image": result.driving_view,
        },
        "images": [
            {"file": view.name, "probability": _round(view.probability), "error": view.error,
             "overlay": path, "peak": None if view.peak is None else [_round(view.peak[0], 4), _round(view.peak[1], 4)]}
            for view, path in zip(result.views, overlays)
        ],
    }


def _print_text(data: dict[str, Any]) -> None:
    """Human-readable summary on stdout."""
    study = data["study"]
    print(f"model: {data['model']}  heat map: {data['cam'] or 'none'}")
    for i, img in enumerate(data["images"]):
        if img["error"] is not None:
            print(f"  [{i}] {img['file']}: UNREADABLE - {img['error']}")
            continue
        extra = f"  peak=({img['peak'][0]:.3f}, {img['peak'][1]:.3f})" if img["peak"] else ""
        scope = img.get("scope")
        if scope is not None and not scope["in_scope"]:
            extra += f"  OUT OF SCOPE ({scope['label']}, score {scope['score']:.2f})"
        extra += f"  overlay={img['overlay']}" if img["overlay"] else ""
        print(f"  [{i}] {img['file']}: P(abnormal)={img['probability']:.4f}{extra}")
    if study["probability"] is None:
        print("study: every readable image is out of scope (--keep-out-of-scope scores them)"
              if study.get("excluded_images") else "study: nothing could be scored")
        return
    if study.get("body_part_suggested"):
        sug = study["body_part_suggested"]
        print(f"body part suggested: {sug['part']} ({sug['confidence']:.0%}, from the {sug['source']})")
    verdict = "ABNORMAL" if study["abnormal"] else "normal"
    print(f"study ({study['aggregate']} of {sum(i['error'] is None for i in data['images']) - len(study.get('excluded_images', []))} images, "
          f"body part {study['body_part']}): P(abnormal)={study['probability']:.4f} -> {verdict} "
          f"(threshold {study['threshold']:.3f})")


def cli_main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m mura_core predict``; returns the exit code."""
    args = build_parser().parse_args(argv)
    if not 0.0 <= args.alpha <= 1.0:
        print("--alpha must be within 0..1", file=sys.stderr)
        return 2
    # In --json mode stdout belongs to the JSON object alone: anything printed meanwhile goes to stderr.
    quiet = contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext()
    with quiet:
        from mura_core.models.checkpoints import CheckpointError
        from mura_core.models.devices import DeviceError
        from mura_core.explain.cams import SLOW_METHODS, ExplainError
        from mura_core.explain.predictor import Predictor
        from mura_core.imaging.decode import printable_name
        from mura_core.data.studies import BodyPart, View

        try:
            predictor = Predictor.from_weights(args.weights, device=args.device, weights_dir=args.weights_dir)
        except (CheckpointError, DeviceError, ValueError) as error:
            print(f"cannot load weights: {error}", file=sys.stderr)
            return 2
        if args.body_part and BodyPart.parse(args.body_part) is BodyPart.UNKNOWN:
            print(f"warning: unknown body part {args.body_part!r}; using the default threshold", file=sys.stderr)
        cam = None if args.cam == "none" else args.cam
        if cam in SLOW_METHODS:
            print(f"note: {cam} runs many forward passes per image; this may take minutes", file=sys.stderr)
        views = [View(name=printable_name(str(f)), path=Path(f)) for f in args.files]
        try:
            result = predictor.predict_study(
                views, body_part=args.body_part, cam=cam, target=args.target, tta=args.tta,
                aggregate=args.aggregate, window=tuple(args.window) if args.window else None)
        except ExplainError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        from mura_core.explain.triage import restrict_study, triage_study

        triage = triage_study(predictor, result)
        if triage.problem:
            print(f"warning: scope and body-part heads not used: {triage.problem}", file=sys.stderr)
        suggested = triage.suggestion
        part = None
        if not args.body_part and result.body_part == "UNKNOWN" and suggested is not None and suggested.usable:
            part = suggested.part
        keep = range(len(views)) if args.keep_out_of_scope else ()
        result = restrict_study(result, triage, predictor.thresholds, keep=keep, body_part=part)
        overlays = None
        if args.out is not None and cam is not None:
            overlays = write_overlays(result, args.out, colormap=args.colormap, alpha=args.alpha)
        data = result_to_json(result, predictor, overlays, triage, keep)
        for name, reason in result.errors:
            print(f"unreadable: {name}: {reason}", file=sys.stderr)
    if args.json:
        sys.stdout.write(json.dumps(data, allow_nan=False) + "\n")
    else:
        _print_text(data)
    return 0 if result.scored > 0 else 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(cli_main())
