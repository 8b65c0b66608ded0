"""What counts as a sample on disk, and the checks a sample passes before it moves on.

``pseudo-label`` writes, ``filter`` reads and copies, ``export`` packs: all three list photos by
the same suffixes (:data:`IMAGE_SUFFIXES`), so a ``.webp`` labelled in one step is not dropped
without a word by the next. :func:`check_sample` decodes the image and the mask, compares their
sizes and reads the metadata, so a broken sample is reported (per sample) by the step that meets
it instead of aborting the run or reaching training as a row that fails there.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from s3od.errors import InvalidImageError
from s3od.imageio import DEFAULT_MAX_PIXELS, load_image
from synth_sod.data_generation.sharding import PipelineError, readable_text

#: Photo suffixes every data-generation step reads (lower case, with the dot).
IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".webp", ".bmp")

#: Metadata keys that, when present, must be strings (training and the parquet schema read them
#: as text); ``None`` stands for "absent".
TEXT_KEYS = ("id", "category", "caption")


class SampleError(PipelineError):
    """One sample cannot be used (undecodable, sizes differ, bad metadata): skip and report it."""


def is_image_file(path: Path) -> bool:
    """A visible file whose suffix is one of :data:`IMAGE_SUFFIXES`."""
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def check_name(name: str) -> None:
    """Refuse a file or folder name that is not valid UTF-8 (ids end up in JSON and parquet)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise SampleError(f"file name is not valid UTF-8: {readable_text(name)!r}") from None


def read_metadata(path: Path | None) -> dict[str, Any]:
    """The metadata object of a sample (``{}`` when there is none).

    Raises:
        SampleError: not UTF-8, not JSON, not a JSON object, or a text key that is not text.
    """
    if path is None or not path.exists():
        return {}
    try:
        text = path.read_bytes().decode("utf-8")
        meta = json.loads(text)
    except UnicodeDecodeError:
        raise SampleError(f"metadata {path.name} is not UTF-8 text") from None
    except json.JSONDecodeError as err:
        raise SampleError(f"metadata {path.name} is not valid JSON: {err}") from None
    except OSError as err:
        raise SampleError(f"cannot read metadata {path.name}: {err.strerror or err}") from None
    if not isinstance(meta, dict):
        raise SampleError(f"metadata {path.name} is a JSON {type(meta).__name__}, "
                          "expected an object")
    for key in TEXT_KEYS:
        value = meta.get(key)
        if value is not None and not isinstance(value, str):
            raise SampleError(f"metadata {path.name}: {key!r} is a {type(value).__name__}, "
                              "expected a string")
    return meta


def number_in_range(value: Any, low: float, high: float) -> float | None:
    """``value`` as a float when it is a real number (not a bool) in ``[low, high]``, else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    if not math.isfinite(value) or not low <= value <= high:
        return None
    return value


@dataclass(frozen=True)
class CheckedSample:
    """What :func:`check_sample` found: the decoded size and the metadata object."""

    height: int
    width: int
    metadata: dict[str, Any]


def check_sample(image_path: Path, mask_path: Path, metadata_path: Path | None = None, *,
                 sample_id: str = "", max_pixels: int = DEFAULT_MAX_PIXELS) -> CheckedSample:
    """Decode image and mask completely and read the metadata; raise :class:`SampleError`.

    Sizes are compared after EXIF orientation, as ``datasets`` and the training loaders see
    them. Names must be UTF-8 (they become ids in JSON and parquet).
    """
    for part in (sample_id, image_path.name, mask_path.name):
        check_name(part)
    try:
        image = load_image(image_path, max_pixels=max_pixels)
    except InvalidImageError as err:
        raise SampleError(f"image {image_path.name}: {err}") from None
    height, width = image.shape[:2]
    del image
    try:
        mask = load_image(mask_path, max_pixels=max_pixels)
    except InvalidImageError as err:
        raise SampleError(f"mask {mask_path.name}: {err}") from None
    if mask.shape[:2] != (height, width):
        raise SampleError(f"mask {mask_path.name} is {mask.shape[1]}x{mask.shape[0]} but its "
                          f"image is {width}x{height}")
    return CheckedSample(height, width, read_metadata(metadata_path))


def list_images(folder: Path) -> tuple[list[Path], list[Path]]:
    """(photos by :data:`IMAGE_SUFFIXES`, other visible files) of ``folder``, sorted."""
    taken, other = [], []
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        (taken if is_image_file(path) else other).append(path)
    return taken, other


def describe_ignored(other: list[Path], without_mask: list[Path],
                     duplicates: list[Path] | None = None) -> str:
    """One line saying which files a step did not take as samples and why."""
    parts = []
    if duplicates:
        parts.append(f"{len(duplicates)} image(s) sharing a stem with another image (one id, "
                     f"two files; e.g. {readable_text(duplicates[0].name)})")
    if other:
        parts.append(f"{len(other)} file(s) with a suffix outside {', '.join(IMAGE_SUFFIXES)} "
                     f"(e.g. {readable_text(other[0].name)})")
    if without_mask:
        parts.append(f"{len(without_mask)} image(s) without a mask (e.g. "
                     f"{readable_text(without_mask[0].name)})")
    return "; ".join(parts)


def fspath_text(path: str | os.PathLike) -> str:
    """A path as UTF-8-safe text for logs and JSON."""
    return readable_text(os.fspath(path))
