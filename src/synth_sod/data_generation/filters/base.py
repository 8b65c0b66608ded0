"""What a filter sees (a generated sample) and what it answers (pass/fail, score, reason)."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from s3od.imageio import load_image


@dataclass
class Sample:
    """One generated image with its teacher mask.

    Attributes:
        image_path / mask_path: the files (``<class>/images/<idx>.jpg``, ``masks/<idx>.png``).
        category: class folder name.
        sample_id: index within the class (file stem).
        metadata_path: ``metadata/<idx>.json`` when the generator wrote one.
    """

    image_path: Path
    mask_path: Path
    category: str
    sample_id: str
    metadata_path: Path | None = None

    @property
    def id(self) -> str:
        """Dataset id ``<category>_<idx>``, also the flat file stem after filtering."""
        return f"{self.category}_{self.sample_id}"

    @cached_property
    def image(self) -> np.ndarray:
        """``(H, W, 3)`` uint8 RGB."""
        return load_image(self.image_path)

    @cached_property
    def mask(self) -> np.ndarray:
        """``(H, W)`` uint8 soft mask (0..255)."""
        from PIL import Image

        with Image.open(self.mask_path) as im:
            return np.asarray(im.convert("L"), dtype=np.uint8).copy()


@dataclass
class FilterResult:
    """A filter's verdict. ``score`` is filter-specific (IoU, confidence) and kept in reports."""

    passed: bool
    score: float
    reason: str = ""
    details: dict[str, Any] = field(default_factory=dict)


class BaseFilter:
    """A named check; subclasses implement :meth:`check`."""

    name: str = "filter"

    def prepare(self) -> None:
        """Load models now, so a missing model stops the run instead of failing every sample."""

    def check(self, sample: Sample) -> FilterResult:  # pragma: no cover - interface
        raise NotImplementedError


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two boolean masks; two empty masks agree perfectly (1.0), as published."""
    union = np.logical_or(a, b).sum()
    if union == 0:
        return 1.0
    return float(np.logical_and(a, b).sum() / union)
