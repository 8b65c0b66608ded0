"""Filters for pseudo-labels: drop masks the teacher was unsure of.

``teacher_agreement`` reads the agreement of the teacher's test-time-augmentation views that the
pseudo-label step stored with each sample (flip / scale consistency, no model needed here);
``mask_confidence`` looks at the mask itself: a wide soft band, or an object too small or too
large to be "the main object", fails.
"""

from __future__ import annotations

import numpy as np

from synth_sod.data_generation.filters.base import BaseFilter, FilterResult, Sample
from synth_sod.data_generation.pseudo_label import mask_confidence
from synth_sod.data_generation.samples import SampleError, number_in_range, read_metadata


class TeacherAgreementFilter(BaseFilter):
    """Pass iff the teacher's TTA views agree: the lowest IoU of a view with their mean is at
    least ``min_agreement``. Samples without a stored agreement fail (no silent pass)."""

    def __init__(self, min_agreement: float = 0.85, name: str = "teacher_agreement") -> None:
        self.name = name
        threshold = number_in_range(min_agreement, 0.0, 1.0)
        if threshold is None:
            raise ValueError(f"min_agreement must be a number from 0 to 1, got {min_agreement!r}")
        self.min_agreement = threshold

    def check(self, sample: Sample) -> FilterResult:
        try:
            meta = read_metadata(sample.metadata_path)
        except SampleError as err:
            return FilterResult(False, 0.0, str(err))
        if "agreement" not in meta:
            return FilterResult(False, 0.0, "no teacher agreement in the metadata (not written "
                                            "by the pseudo-label step?)")
        # true/false, text, NaN or a value outside [0, 1] is no agreement: it must not pass
        value = number_in_range(meta["agreement"], 0.0, 1.0)
        if value is None:
            return FilterResult(False, 0.0, f"teacher agreement {meta['agreement']!r} is not a "
                                            "number from 0 to 1")
        ok = value >= self.min_agreement
        reason = "" if ok else f"teacher views agree at IoU {value:.3f} < {self.min_agreement}"
        return FilterResult(ok, float(value), reason)


class MaskConfidenceFilter(BaseFilter):
    """Pass iff :func:`mask_confidence` >= ``min_confidence`` and the object covers between
    ``min_area`` and ``max_area`` of the image (at 0.5)."""

    def __init__(self, min_confidence: float = 0.6, min_area: float = 0.005,
                 max_area: float = 0.95, name: str = "mask_confidence") -> None:
        if not 0 <= min_area < max_area <= 1:
            raise ValueError(f"need 0 <= min_area < max_area <= 1, got {min_area}, {max_area}")
        self.name = name
        self.min_confidence = float(min_confidence)
        self.min_area, self.max_area = float(min_area), float(max_area)

    def check(self, sample: Sample) -> FilterResult:
        mask = sample.mask.astype(np.float32) / 255.0
        area = float((mask > 0.5).mean())
        confidence = mask_confidence(mask)
        problems = []
        if area < self.min_area:
            problems.append(f"object covers {area:.4f} < {self.min_area} of the image")
        if area > self.max_area:
            problems.append(f"object covers {area:.3f} > {self.max_area} of the image")
        if confidence < self.min_confidence:
            problems.append(f"confidence {confidence:.3f} < {self.min_confidence}")
        return FilterResult(not problems, confidence, "; ".join(problems),
                            {"area": area, "confidence": confidence})
