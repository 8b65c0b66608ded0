"""Benchmark folders on disk: find sets, pair files by stem, read masks of any format.

Recognised layouts of one set (folder names are matched case-insensitively)::

    <set>/images/ + <set>/masks/          (this project, ../shared/data)
    <set>/Image/  + <set>/Mask/           (ECSSD, HKU-IS, PASCAL-S, ... as usually shipped)
    <set>/DUTS-TE-Image/ + DUTS-TE-Mask/  (any ``*-Image`` / ``*-Mask`` pair)
    <set>/im/     + <set>/gt/             (DIS5K: DIS-VD, DIS-TE1..4)

A root holding several such sets (directly or one level further down) is read set by set.
Files are paired by stem (``0001.jpg`` <-> ``0001.png``); files without a partner are reported.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from s3od.evaluation.errors import DatasetNotFoundError, MaskReadError, UnknownSetError

#: Suffixes read as images or masks, in the order preferred when a stem appears twice.
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
IMAGE_DIR_NAMES: tuple[str, ...] = ("images", "image", "imgs", "img", "im")
MASK_DIR_NAMES: tuple[str, ...] = ("masks", "mask", "gt", "gts", "groundtruth", "ground_truth")
_IMAGE_DIR_ENDINGS = ("-image", "-images", "_image", "_images")
_MASK_DIR_ENDINGS = ("-mask", "-masks", "_mask", "_masks", "-gt", "_gt")


@dataclass(frozen=True)
class EvalSet:
    """One benchmark set: its name, its mask folder and (for benchmarking) its image folder."""

    name: str
    mask_dir: Path
    image_dir: Path | None = None
    layout: str = ""

    @property
    def is_dis(self) -> bool:
        """DIS5K-style set (binary, highly detailed GT), where HCE is reported."""
        return self.name.upper().startswith("DIS") or self.layout.lower() == "im/gt"


@dataclass
class Pairing:
    """Files of two folders matched by stem."""

    pairs: list[tuple[str, Path, Path]] = field(default_factory=list)
    left_only: list[Path] = field(default_factory=list)
    right_only: list[Path] = field(default_factory=list)
    duplicates: list[Path] = field(default_factory=list)


def _dir_kind(name: str) -> tuple[str, int] | None:
    """``("image" | "mask", priority)`` for a folder name, or ``None``."""
    low = name.lower()
    if low in IMAGE_DIR_NAMES:
        return "image", IMAGE_DIR_NAMES.index(low)
    if low in MASK_DIR_NAMES:
        return "mask", MASK_DIR_NAMES.index(low)
    if low.endswith(_IMAGE_DIR_ENDINGS):
        return "image", len(IMAGE_DIR_NAMES)
    if low.endswith(_MASK_DIR_ENDINGS):
        return "mask", len(MASK_DIR_NAMES)
    return None


def _visible_dirs(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        return []


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def list_images(folder: str | Path) -> tuple[dict[str, Path], list[Path]]:
    """Image files of ``folder`` by stem, and the files dropped because their stem repeats.

    When a stem has several files (``a.png`` and ``a.jpg``) the earlier suffix of
    :data:`IMAGE_SUFFIXES` wins.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetNotFoundError(f"no such folder: {folder}")
    files = sorted((p for p in folder.iterdir() if p.is_file() and is_image_file(p)),
                   key=lambda p: (p.stem, IMAGE_SUFFIXES.index(p.suffix.lower()), p.name))
    by_stem: dict[str, Path] = {}
    dropped: list[Path] = []
    for path in files:
        if path.stem in by_stem:
            dropped.append(path)
        else:
            by_stem[path.stem] = path
    return by_stem, dropped


def pair_by_stem(left: str | Path, right: str | Path) -> Pairing:
    """Pair the image files of two folders by stem; report the files left over."""
    lhs, ldup = list_images(left)
    rhs, rdup = list_images(right)
    result = Pairing(duplicates=ldup + rdup)
    for stem in sorted(lhs.keys() | rhs.keys()):
        if stem in lhs and stem in rhs:
            result.pairs.append((stem, lhs[stem], rhs[stem]))
        elif stem in lhs:
            result.left_only.append(lhs[stem])
        else:
            result.right_only.append(rhs[stem])
    return result


def detect_set(folder: str | Path) -> EvalSet | None:
    """The set stored in ``folder`` if it has a recognised mask sub-folder, else ``None``."""
    folder = Path(folder)
    best: dict[str, tuple[int, Path]] = {}
    for sub in _visible_dirs(folder):
        kind = _dir_kind(sub.name)
        if kind is not None and (kind[0] not in best or kind[1] < best[kind[0]][0]):
            best[kind[0]] = (kind[1], sub)
    if "mask" not in best:
        return None
    mask_dir = best["mask"][1]
    image_dir = best["image"][1] if "image" in best else None
    layout = f"{image_dir.name}/{mask_dir.name}" if image_dir else mask_dir.name
    return EvalSet(folder.name, mask_dir, image_dir, layout)


def has_images(folder: Path) -> bool:
    try:
        return any(p.is_file() and is_image_file(p) for p in folder.iterdir())
    except OSError:
        return False


def find_sets(root: str | os.PathLike[str], names: Iterable[str] | None = None,
              max_depth: int = 2) -> list[EvalSet]:
    """All sets under ``root`` (``root`` itself may be one), optionally only those ``names``.

    Raises:
        DatasetNotFoundError: ``root`` is missing or holds no recognisable set.
        UnknownSetError: a requested name is not among the sets found.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetNotFoundError(f"no such folder: {root}")
    found: list[EvalSet] = []
    own = detect_set(root)
    if own is not None:
        found.append(own)
    else:
        frontier = [root]
        for _ in range(max_depth):
            nxt: list[Path] = []
            for folder in frontier:
                for sub in _visible_dirs(folder):
                    if _dir_kind(sub.name) is not None:
                        continue
                    hit = detect_set(sub)
                    if hit is None:
                        nxt.append(sub)
                    else:
                        found.append(hit)
            frontier = nxt
    if not found:
        raise DatasetNotFoundError(
            f"no dataset found in {root}: expected <set>/images+masks, <set>/Image+Mask, "
            "<set>/<NAME>-Image+<NAME>-Mask or <set>/im+gt (DIS5K)"
        )
    # Two sets with the same folder name at different depths: name them by relative path.
    counts: dict[str, int] = {}
    for s in found:
        counts[s.name] = counts.get(s.name, 0) + 1
    found = [
        s if counts[s.name] == 1 or s.mask_dir.parent == root
        else EvalSet(s.mask_dir.parent.relative_to(root).as_posix(), s.mask_dir, s.image_dir,
                     s.layout)
        for s in found
    ]
    found.sort(key=lambda s: s.name.lower())
    if names:
        return select_sets(found, names)
    return found


def select_sets(sets: list[EvalSet], names: Iterable[str]) -> list[EvalSet]:
    """The sets called ``names`` (case-insensitive, in the order asked)."""
    by_name = {s.name.lower(): s for s in sets}
    chosen: list[EvalSet] = []
    missing: list[str] = []
    for name in names:
        hit = by_name.get(name.strip().lower())
        if hit is None:
            missing.append(name)
        elif hit not in chosen:
            chosen.append(hit)
    if missing:
        raise UnknownSetError(
            f"unknown set(s) {', '.join(missing)}; available: "
            + ", ".join(s.name for s in sets)
        )
    return chosen


def resolve_gt(path: str | os.PathLike[str], names: Iterable[str] | None = None) -> list[EvalSet]:
    """Ground truth given on the command line: a mask folder, one set, or a root of sets."""
    path = Path(path)
    if not path.is_dir():
        raise DatasetNotFoundError(f"no such folder: {path}")
    if detect_set(path) is None and has_images(path):
        kind = _dir_kind(path.name)
        name = path.parent.name if kind is not None and kind[0] == "mask" else path.name
        sets = [EvalSet(name or path.name, path, None, "masks only")]
        return select_sets(sets, names) if names else sets
    return find_sets(path, names)


def read_mask(path: str | Path) -> np.ndarray:
    """Read a mask or a prediction as a 2-D ``uint8`` map (0..255), whatever its format.

    - 1-bit, 8-bit, 16-bit and float images are mapped to 0..255 (16-bit by /257; floats in
      [0, 1] by x255); label masks holding only 0 and 1 become 0 and 255;
    - images with transparency (e.g. RGBA cut-outs from rembg) give their alpha channel;
    - colour images give the maximum over R, G and B (a grey map stored as RGB is unchanged).

    Raises:
        MaskReadError: the file cannot be decoded.
    """
    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            arr = _mask_array(img)
    except MaskReadError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise MaskReadError(f"cannot read {path}: {err}") from err
    if arr.ndim != 2 or arr.size == 0:
        raise MaskReadError(f"cannot read {path}: not a 2-D mask (shape {arr.shape})")
    if arr.max() == 1:  # a label mask stored as 0/1
        arr = arr * 255
    return np.ascontiguousarray(arr, dtype=np.uint8)


def _mask_array(img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode == "1":
        return np.asarray(img, dtype=bool).astype(np.uint8) * 255
    if mode == "L":
        return np.asarray(img, dtype=np.uint8)
    if mode.startswith("I"):
        arr = np.asarray(img).astype(np.int64)
        if arr.max() > 255:
            arr = (arr.clip(0, 65535) * 255 + 32767) // 65535
        return arr.clip(0, 255).astype(np.uint8)
    if mode == "F":
        floats = np.nan_to_num(np.asarray(img, dtype=np.float64))
        if floats.max() <= 1.0:
            floats = floats * 255.0
        return np.clip(np.rint(floats), 0, 255).astype(np.uint8)
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif mode in ("LA", "La", "PA", "RGBa"):
        img = img.convert("RGBA")
    if img.mode == "RGBA":
        rgba = np.asarray(img, dtype=np.uint8)
        alpha = rgba[..., 3]
        if alpha.min() < 255:
            return alpha
        return rgba[..., :3].max(axis=2)
    return np.asarray(img.convert("RGB"), dtype=np.uint8).max(axis=2)
