"""Read a FracAtlas folder, as published, into study records.

FracAtlas (Abedeen et al., Scientific Data 10, 521, 2023; licence CC BY 4.0: credit the authors
wherever the data or a model trained on it is shown) holds musculoskeletal radiographs with a
fracture label and region flags for every image, and expert fracture boxes. Layout read as is:

    dataset.csv                                   image_id,hand,leg,hip,shoulder,mixed,hardware,
                                                  multiscan,fractured,fracture_count,frontal,...
    images/Fractured/*.jpg, images/Non_fractured/*.jpg
    Annotations/COCO JSON/COCO_fracture_masks.json   bbox = [x, y, w, h] in pixels of the file

Decisions (documented once, here):

- Each image is its own study (FracAtlas has no patient or study ids): study_id = image id without
  extension, one view, `source="fracatlas"`, `patient_id=None`.
- Label: the csv `fractured` column, when it agrees with the folder. When it does not, see
  `_resolve_label`: the folder wins only when `fracture_count` backs it (the published
  IMG0003298.jpg sits in Fractured with fractured=0 and fracture_count=1: label 1); otherwise the csv
  wins. Every disagreement (folder vs csv, csv vs fracture_count, csv vs annotations) is a problem line
  naming the file, the values and the rule applied.
- Region (`region_for_flags`): FracAtlas regions are not MURA's seven body parts, so they map to the
  coarser `BodyPart` regions. Out of scope wins: an image with leg or hip set is LEG, HIP or
  LOWER_LIMB (both, or leg/hip mixed with an upper flag) even when hand or shoulder is also set,
  because such an image shows a lower limb, which MURA's tool does not score. Otherwise hand only ->
  HAND_WRIST_FOREARM, shoulder only -> SHOULDER_HUMERUS, both -> UPPER_LIMB; no flag -> UNKNOWN with a
  problem line.
- Boxes: COCO `bbox` [x, y, w, h] divided by the COCO image width/height, as (x0, y0, x1, y1) clipped
  to 0..1; empty boxes are dropped with a problem line.
- Near-duplicates: the published set holds the same radiograph saved more than once. Candidate pairs
  are images whose 64-bit difference hashes (dHash, 9x8 grey thumbnail) differ in at most
  `HASH_MAX_DISTANCE` bits; a candidate is linked only when the 256-bit dHash (17x16 thumbnail)
  confirms it (`CONFIRM_MAX_DISTANCE`), because radiographs are alike enough that 64 bits alone chain
  half the data set into one group; links are followed (union-find). A group's key is its
  smallest image id (`Study.group`). Hashes are cached in ~/.cache/mura_core (see `hash_cache_path`).
- Split: FracAtlas publishes no classification split; `SPLIT_RULE` makes one, per group, so that a
  near-duplicate pair never straddles it.
- Problems never stop the reading: they are collected as "kind: detail" lines (missing file, file
  without csv row, inconsistent row, no region, bad box, unreadable image, conflicting duplicates: a
  near-duplicate group whose images carry different labels). Rows without a file and
  files without a row are left out.

Usage:
    >>> index = read_fracatlas(Path("../shared/data/FracAtlas"), split="valid")  # doctest: +SKIP
    >>> index.kind, index.studies[0].source                                      # doctest: +SKIP
    ('fracatlas', 'fracatlas')
"""
from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable

import numpy as np

from mura_core.data.mura_folder import DatasetError
from mura_core.data.studies import BodyPart, Box, DatasetIndex, Study, View

__all__ = [
    "CSV_NAME", "COCO_PATH", "IMAGE_FOLDERS", "HASH_MAX_DISTANCE", "CONFIRM_MAX_DISTANCE",
    "SPLIT_RULE",
    "looks_like_fracatlas", "find_fracatlas_root", "read_fracatlas", "region_for_flags",
    "split_for_group", "dhash", "image_hashes", "near_duplicate_groups", "hash_cache_path",
]

CSV_NAME = "dataset.csv"
COCO_PATH = Path("Annotations") / "COCO JSON" / "COCO_fracture_masks.json"
IMAGE_FOLDERS = {"Fractured": 1, "Non_fractured": 0}
"""Image folder under images/ -> the label the folder stands for."""
HASH_MAX_DISTANCE = 6
"""Two images whose 64-bit dHashes differ in at most this many bits are candidate near-duplicates."""
CONFIRM_MAX_DISTANCE = 10
"""... and are linked only when their 256-bit dHashes (17x16 thumbnail) differ in at most this many
bits. Measured on the real FracAtlas: the 64-bit rule alone links 24,621 pairs and chains 1,464
different radiographs (knees with hands) into one group; every candidate pair looked at with a 256-bit
distance of 2-7 was the same radiograph (often a copy cut short), pairs at 11-21 were different
patients."""
SPLIT_RULE = (
    "FracAtlas split (made here; FracAtlas publishes none for classification): images are grouped "
    "as near-duplicates when their 64-bit dHashes (9x8 grey thumbnail) differ in <= 6 bits and their "
    "256-bit dHashes (17x16 thumbnail) in <= 10 bits, linked transitively (union-find); a group's key is its smallest image id (e.g. 'IMG0000025'); the whole group goes "
    "to 'valid' when int(sha1(key).hexdigest()[:8], 16) % 5 == 0 (about 20%), else to 'train'.")
"""The split rule in words, to quote in model cards."""
_CACHE_VERSION = 2


# --------------------------------------------------------------------------- detection


def find_fracatlas_root(path: Path | str) -> Path | None:
    """The FracAtlas folder given itself or its dataset.csv; None when it is neither."""
    path = Path(path).expanduser()
    folder = path.parent if path.is_file() and path.name == CSV_NAME else path
    if not folder.is_dir() or not (folder / CSV_NAME).is_file():
        return None
    if not any((folder / "images" / name).is_dir() for name in IMAGE_FOLDERS):
        return None
    return folder


def looks_like_fracatlas(path: Path | str) -> bool:
    """True for a folder with dataset.csv and images/Fractured or images/Non_fractured (or that csv)."""
    return find_fracatlas_root(path) is not None


# --------------------------------------------------------------------------- rules


def region_for_flags(hand: bool, leg: bool, hip: bool, shoulder: bool) -> BodyPart:
    """The region of an image from its FracAtlas flags; out of scope wins (see module notes).

    leg and hip -> LOWER_LIMB; leg or hip mixed with hand or shoulder -> LOWER_LIMB (the image shows
    a lower limb whatever else it shows); leg only -> LEG; hip only -> HIP; hand and shoulder ->
    UPPER_LIMB; hand only -> HAND_WRIST_FOREARM; shoulder only -> SHOULDER_HUMERUS; none -> UNKNOWN.
    """
    if leg or hip:
        if (leg and hip) or hand or shoulder:
            return BodyPart.LOWER_LIMB
        return BodyPart.LEG if leg else BodyPart.HIP
    if hand and shoulder:
        return BodyPart.UPPER_LIMB
    if hand:
        return BodyPart.HAND_WRIST_FOREARM
    if shoulder:
        return BodyPart.SHOULDER_HUMERUS
    return BodyPart.UNKNOWN


def split_for_group(group_key: str) -> str:
    """'valid' or 'train' for a near-duplicate group, by `SPLIT_RULE`."""
    return "valid" if int(hashlib.sha1(group_key.encode("utf-8")).hexdigest()[:8], 16) % 5 == 0 else "train"


def _resolve_label(file: str, folder_label: int, fractured: int | None, count: int | None,
                   n_boxes: int, problems: list[str]) -> int:
    """The study label from folder, csv `fractured`, `fracture_count` and annotations.

    Rule: trust the csv `fractured` when it agrees with the folder. When the folder disagrees with
    `fractured` but agrees with `fracture_count` (count > 0 <=> fractured folder), label by the folder
    and the count. Otherwise (no usable `fractured`, or the count backs the csv) trust the csv (or the
    folder when `fractured` is unreadable). Every disagreement gives a problem line.
    """
    count_says = None if count is None else int(count > 0)
    if fractured is None:
        problems.append(f"inconsistent row: {file}: fractured unreadable; folder says {folder_label}; "
                        f"rule: label by folder ({folder_label})")
        return folder_label
    if fractured == folder_label:
        label = fractured
        if count_says is not None and count_says != fractured:
            problems.append(f"inconsistent row: {file}: fractured={fractured} but fracture_count={count}; "
                            f"rule: csv fractured and folder agree, label {label}")
        if n_boxes and not fractured:
            problems.append(f"inconsistent row: {file}: fractured=0 but {n_boxes} annotated fracture box(es); "
                            f"rule: csv fractured and folder agree, label 0 (boxes kept)")
        return label
    folder_name = "Fractured" if folder_label else "Non_fractured"
    if count_says == folder_label:
        problems.append(f"inconsistent row: {file} is in images/{folder_name} but dataset.csv has "
                        f"fractured={fractured}, fracture_count={count}, {n_boxes} annotated box(es); "
                        f"rule: folder and fracture_count agree, label {folder_label}")
        return folder_label
    problems.append(f"inconsistent row: {file} is in images/{folder_name} but dataset.csv has "
                    f"fractured={fractured}, fracture_count={count}, {n_boxes} annotated box(es); "
                    f"rule: trust csv fractured, label {fractured}")
    return fractured


# --------------------------------------------------------------------------- near-duplicates


def _grey_quarter(data: bytes) -> np.ndarray | None:
    """The image at 1/4 scale in grey via OpenCV, None when it does not decode.

    A JPEG whose end-of-image marker is missing (59 published FracAtlas files end early) is decoded
    with the marker appended: libjpeg then fills any missing rows instead of giving up.
    """
    import cv2

    if data.startswith(b"\xff\xd8") and not data.rstrip(b"\x00").endswith(b"\xff\xd9"):
        data = data + b"\xff\xd9"
    buffer = np.frombuffer(data, dtype=np.uint8)
    if buffer.size == 0:
        return None
    for flag in (cv2.IMREAD_REDUCED_GRAYSCALE_4, cv2.IMREAD_GRAYSCALE):
        image = cv2.imdecode(buffer, flag)
        if image is not None and image.size:
            return image
    return None


def _dhash_bits(image: np.ndarray, width: int, height: int) -> int:
    """Difference hash of a grey image: (width+1)x height thumbnail, bit = left pixel > right one."""
    import cv2

    thumb = cv2.resize(image, (width + 1, height), interpolation=cv2.INTER_AREA).astype(np.int16)
    bits = (thumb[:, :-1] > thumb[:, 1:]).flatten()
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def dhash(data: bytes) -> tuple[int, int] | None:
    """(64-bit dHash of a 9x8 grey thumbnail, 256-bit dHash of a 17x16 one) of an image's bytes.

    Decoded by OpenCV at 1/4 scale (`IMREAD_REDUCED_GRAYSCALE_4`) for speed. None when the bytes do
    not decode. The 64-bit hash finds candidate pairs; the 256-bit one confirms them (see
    `near_duplicate_groups`).
    """
    image = _grey_quarter(data)
    if image is None:
        return None
    return _dhash_bits(image, 8, 8), _dhash_bits(image, 16, 16)


def hash_cache_path(root: Path | str) -> Path:
    """~/.cache/mura_core/fracatlas_hashes_<sha1 of the resolved root path>.json (never in the repo)."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mura_core"
    digest = hashlib.sha1(str(Path(root).expanduser().resolve()).encode("utf-8")).hexdigest()
    return base / f"fracatlas_hashes_{digest}.json"


def _load_cache(cache_file: Path | None) -> dict[str, list]:
    if cache_file is None:
        return {}
    try:
        payload = json.loads(Path(cache_file).read_text(encoding="utf-8"))
        if payload.get("version") == _CACHE_VERSION and isinstance(payload.get("entries"), dict):
            return payload["entries"]
    except (OSError, ValueError, AttributeError):
        pass
    return {}


def _save_cache(cache_file: Path | None, entries: dict[str, list]) -> None:
    """Write the cache atomically; an unwritable cache folder just means no cache."""
    if cache_file is None:
        return
    cache_file = Path(cache_file)
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache_file.parent, prefix=cache_file.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump({"version": _CACHE_VERSION, "entries": entries}, handle)
            os.replace(tmp, cache_file)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
    except OSError:
        pass


def _hash_file(path: Path) -> tuple[int, int] | None:
    try:
        return dhash(path.read_bytes())
    except OSError:
        return None


def image_hashes(paths: Iterable[Path | str], cache_file: Path | None = None,
                 workers: int | None = None) -> dict[Path, tuple[int, int] | None]:
    """`dhash` of each file (None when missing or undecodable), reusing and updating `cache_file`.

    Cache entries are keyed by file name and valid only while size and mtime (ns) are unchanged.
    """
    paths = [Path(p) for p in paths]
    entries = _load_cache(cache_file)
    out: dict[Path, tuple[int, int] | None] = {}
    todo: list[tuple[Path, str, int, int]] = []
    for path in paths:
        try:
            info = path.stat()
        except OSError:
            out[path] = None
            continue
        entry = entries.get(path.name)
        if (isinstance(entry, list) and len(entry) == 3 and entry[0] == info.st_size
                and entry[1] == info.st_mtime_ns):
            out[path] = None if entry[2] is None else (int(entry[2][:16], 16), int(entry[2][16:], 16))
        else:
            todo.append((path, path.name, info.st_size, info.st_mtime_ns))
    if todo:
        with ThreadPoolExecutor(max_workers=workers or min(4, os.cpu_count() or 1)) as pool:
            hashes = list(pool.map(_hash_file, [t[0] for t in todo]))
        for (path, key, size, mtime), value in zip(todo, hashes):
            out[path] = value
            entries[key] = [size, mtime, None if value is None else f"{value[0]:016x}{value[1]:064x}"]
        _save_cache(cache_file, entries)
    return out


def _popcount(values: np.ndarray) -> np.ndarray:
    """Set bits of each uint64."""
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(values)
    table = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)
    return table[values.view(np.uint8).reshape(*values.shape, 8)].sum(axis=-1)


def _groups_from_hashes(hashes: list[tuple[int, int] | None], max_distance: int = HASH_MAX_DISTANCE,
                        confirm_distance: int = CONFIRM_MAX_DISTANCE) -> list[int]:
    """Union-find over confirmed near-duplicate pairs; returns each item's root (smallest index)."""
    parent = list(range(len(hashes)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    known = [i for i, h in enumerate(hashes) if h is not None]
    small = np.array([hashes[i][0] for i in known], dtype=np.uint64)
    for a in range(len(known) - 1):
        distances = _popcount(small[a + 1:] ^ small[a])
        for b in np.nonzero(distances <= max_distance)[0]:
            i, j = known[a], known[a + 1 + int(b)]
            if (hashes[i][1] ^ hashes[j][1]).bit_count() > confirm_distance:
                continue
            ri, rj = find(i), find(j)
            if ri != rj:
                parent[max(ri, rj)] = min(ri, rj)
    return [find(i) for i in range(len(hashes))]


def near_duplicate_groups(paths: Iterable[Path | str], max_distance: int = HASH_MAX_DISTANCE,
                          cache_file: Path | None = None) -> dict[Path, str]:
    """Each path -> its group id: the smallest file stem (image id) among its near-duplicates.

    Two images are linked when their 64-bit dHashes differ in at most `max_distance` bits and their
    256-bit dHashes in at most `CONFIRM_MAX_DISTANCE` bits; links are followed (union-find). Files that
    cannot be read or decoded form groups of their own.
    """
    paths = sorted({Path(p) for p in paths}, key=lambda p: (p.stem, str(p)))
    hashes = image_hashes(paths, cache_file)
    roots = _groups_from_hashes([hashes[p] for p in paths], max_distance)
    # paths are sorted by stem and union keeps the smaller index, so each root is its group's smallest id
    return {path: paths[root].stem for path, root in zip(paths, roots)}


# --------------------------------------------------------------------------- reading


def _flag(row: dict, column: str) -> int | None:
    text = (row.get(column) or "").strip()
    try:
        value = float(text)
    except ValueError:
        return None
    return int(value) if math.isfinite(value) and value == int(value) else None


def _read_boxes(root: Path, problems: list[str]) -> dict[str, list[Box]]:
    """file name -> boxes in 0..1, from the COCO JSON; missing or bad JSON is a problem line."""
    coco_file = root / COCO_PATH
    if not coco_file.is_file():
        problems.append(f"missing file: {COCO_PATH.as_posix()} (no fracture boxes)")
        return {}
    try:
        coco = json.loads(coco_file.read_text(encoding="utf-8"))
        images = {img["id"]: img for img in coco.get("images", [])}
        annotations = list(coco.get("annotations", []))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        problems.append(f"bad annotations: {COCO_PATH.as_posix()} ({type(error).__name__}); no boxes")
        return {}
    boxes: dict[str, list[Box]] = {}
    for ann in annotations:
        try:
            image = images[ann["image_id"]]
            name = str(image["file_name"])
            width, height = float(image["width"]), float(image["height"])
            x, y, w, h = (float(v) for v in ann["bbox"])
            if not (width > 0 and height > 0 and all(map(math.isfinite, (x, y, w, h)))):
                raise ValueError
        except (KeyError, TypeError, ValueError):
            problems.append(f"bad box: annotation {ann.get('id') if isinstance(ann, dict) else '?'}; dropped")
            continue
        x0, y0 = min(max(x / width, 0.0), 1.0), min(max(y / height, 0.0), 1.0)
        x1, y1 = min(max((x + w) / width, 0.0), 1.0), min(max((y + h) / height, 0.0), 1.0)
        if x1 <= x0 or y1 <= y0:
            problems.append(f"bad box: {name} annotation {ann.get('id')} is empty inside the image; dropped")
            continue
        boxes.setdefault(name, []).append((x0, y0, x1, y1))
    return boxes


def _list_images(root: Path, problems: list[str]) -> dict[str, tuple[Path, int]]:
    """file name -> (path, folder label), from images/Fractured and images/Non_fractured."""
    found: dict[str, tuple[Path, int]] = {}
    for folder_name, folder_label in IMAGE_FOLDERS.items():
        folder = root / "images" / folder_name
        try:
            names = sorted(os.listdir(folder))
        except OSError:
            continue
        for name in names:
            if name.startswith(".") or not (folder / name).is_file():
                continue
            if name in found:
                problems.append(f"duplicate file: {name} is in both image folders; the Fractured one kept")
                continue
            found[name] = (folder / name, folder_label)
    return found


def read_fracatlas(root: Path | str, split: str | None = None, *,
                   cache_file: Path | None | bool = True) -> DatasetIndex:
    """Index a FracAtlas folder (given it or its dataset.csv), optionally one split only.

    Args:
        root: the FracAtlas folder or its dataset.csv.
        split: 'train' or 'valid' (see `SPLIT_RULE`); None keeps both.
        cache_file: where to cache image hashes; True for `hash_cache_path(root)`, None/False for none.

    Raises:
        DatasetError: when `root` is not a FracAtlas folder or its dataset.csv has no image_id column.
    """
    folder = find_fracatlas_root(root)
    if folder is None:
        raise DatasetError(f"{root}: not a FracAtlas folder (needs {CSV_NAME} and images/Fractured or "
                           f"images/Non_fractured)")
    if cache_file is True:
        cache_file = hash_cache_path(folder)
    elif cache_file is False:
        cache_file = None
    problems: list[str] = []
    files = _list_images(folder, problems)
    boxes = _read_boxes(folder, problems)
    rows: dict[str, dict] = {}
    with (folder / CSV_NAME).open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        if "image_id" not in (reader.fieldnames or []):
            raise DatasetError(f"{folder / CSV_NAME}: not a FracAtlas dataset.csv (needs an image_id column)")
        for line, row in enumerate(reader, start=2):
            name = (row.get("image_id") or "").strip()
            if not name:
                problems.append(f"bad line: {CSV_NAME} line {line}: no image_id")
            elif name in rows:
                problems.append(f"duplicate row: {name} ({CSV_NAME} line {line}); the first kept")
            else:
                rows[name] = row
    for name in sorted(set(rows) - set(files)):
        problems.append(f"missing file: {name} is in {CSV_NAME} but in neither image folder; left out")
    for name in sorted(set(files) - set(rows)):
        problems.append(f"no csv row: {name} has no row in {CSV_NAME}; left out")
    for name in sorted(set(boxes) - set(files)):
        problems.append(f"unmatched annotation: {name} has boxes but no image file")
    names = sorted(set(rows) & set(files))
    paths = [files[n][0] for n in names]
    hashes = image_hashes(paths, cache_file)
    for path in paths:
        if hashes[path] is None:
            problems.append(f"unreadable image: {path.name} could not be decoded for grouping; "
                            f"it forms a group of its own")
    roots = _groups_from_hashes([hashes[p] for p in paths])
    studies: list[Study] = []
    for index, name in enumerate(names):
        path, folder_label = files[name]
        row = rows[name]
        image_boxes = tuple(boxes.get(name, ()))
        label = _resolve_label(name, folder_label, _flag(row, "fractured"), _flag(row, "fracture_count"),
                               len(image_boxes), problems)
        flags = {c: bool(_flag(row, c)) for c in ("hand", "leg", "hip", "shoulder")}
        part = region_for_flags(**flags)
        if part is BodyPart.UNKNOWN:
            problems.append(f"no region: {name} has none of hand, leg, hip, shoulder set; region UNKNOWN")
        group = Path(names[roots[index]]).stem
        studies.append(Study(
            study_id=Path(name).stem,
            views=(View(name=f"images/{path.parent.name}/{name}", path=path, boxes=image_boxes),),
            body_part=part, label=label, patient_id=None, split=split_for_group(group),
            source="fracatlas", group=group))
    members: dict[str, list[Study]] = {}
    for study in studies:
        members.setdefault(study.group, []).append(study)
    for group, group_studies in members.items():
        if len({s.label for s in group_studies}) > 1:
            listed = ", ".join(f"{s.study_id}={s.label}" for s in group_studies)
            problems.append(f"conflicting duplicates: near-duplicate group {group} has different labels "
                            f"({listed}); labels kept as published")
    if split is not None:
        studies = [s for s in studies if s.split == split]
    return DatasetIndex(root=folder, kind="fracatlas", studies=studies, problems=problems)


detect = looks_like_fracatlas
"""The reader-table face: `detect(path)`."""


def read(path: Path, split: str | None = None) -> DatasetIndex:
    """The reader-table face: `read(path, split)` with the default hash cache."""
    return read_fracatlas(path, split)
