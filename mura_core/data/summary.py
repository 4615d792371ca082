"""Summarise a data set: studies and images by split, body part and label, and the problems met.

Counts are given by split, by body part and by label (and split x body part), so a data set can be
checked at a glance before training or evaluation (`python -m mura_core index`). Never imports torch.
"""
from __future__ import annotations

from collections import Counter
from typing import Any

from mura_core.data.studies import DatasetIndex, Study, label_name

__all__ = ["summarise", "problem_kind", "format_summary"]

def problem_kind(problem: str) -> str:
    """The kind of a problem line ("missing file: x" -> "missing file")."""
    head, sep, _ = problem.partition(":")
    return head.strip() if sep else "other"


def _empty_counts() -> dict[str, int]:
    return {"studies": 0, "images": 0, "abnormal": 0, "normal": 0, "unlabelled": 0}


def _add(counts: dict[str, int], study: Study) -> None:
    counts["studies"] += 1
    counts["images"] += len(study.views)
    counts[label_name(study.label)] += 1


def summarise(index: DatasetIndex, *, max_problems: int = 20) -> dict[str, Any]:
    """Counts of studies and images by split, body part and label, plus the problems found.

    Label counts (abnormal/normal/unlabelled) count studies. Returns plain JSON-ready types.
    """
    total = _empty_counts()
    by_split: dict[str, dict[str, int]] = {}
    by_part: dict[str, dict[str, int]] = {}
    by_split_part: dict[str, dict[str, dict[str, int]]] = {}
    for study in index.studies:
        split = study.split or "none"
        part = study.body_part.value
        _add(total, study)
        _add(by_split.setdefault(split, _empty_counts()), study)
        _add(by_part.setdefault(part, _empty_counts()), study)
        _add(by_split_part.setdefault(split, {}).setdefault(part, _empty_counts()), study)
    kinds = Counter(problem_kind(p) for p in index.problems)
    return {
        "root": str(index.root),
        "kind": index.kind,
        "total": total,
        "by_split": dict(sorted(by_split.items())),
        "by_body_part": dict(sorted(by_part.items())),
        "by_split_body_part": {s: dict(sorted(p.items())) for s, p in sorted(by_split_part.items())},
        "by_label": {name: total[name] for name in ("abnormal", "normal", "unlabelled")},
        "problems": {"count": len(index.problems), "by_kind": dict(sorted(kinds.items())),
                     "first": index.problems[:max_problems]},
    }


def _table(title: str, rows: dict[str, dict[str, int]]) -> list[str]:
    columns = ("studies", "images", "abnormal", "normal", "unlabelled")
    lines = [f"{title:<22}" + "".join(f"{c:>11}" for c in columns)]
    lines += [f"{name:<22}" + "".join(f"{counts[c]:>11}" for c in columns) for name, counts in rows.items()]
    return lines


def format_summary(summary: dict[str, Any]) -> str:
    """The summary as a plain-text report."""
    lines = [f"{summary['kind']} data set at {summary['root']}", ""]
    lines += _table("split", {**summary["by_split"], "all": summary["total"]}) + [""]
    lines += _table("body part", summary["by_body_part"]) + [""]
    for split, parts in summary["by_split_body_part"].items():
        lines += _table(f"{split} by body part", parts) + [""]
    problems = summary["problems"]
    lines.append(f"problems: {problems['count']}")
    lines += [f"  {kind}: {count}" for kind, count in problems["by_kind"].items()]
    if problems["first"]:
        lines.append("first problems:")
        lines += [f"  {p}" for p in problems["first"]]
        if problems["count"] > len(problems["first"]):
            lines.append(f"  ... and {problems['count'] - len(problems['first'])} more (see --json)")
    return "\n".join(lines)
