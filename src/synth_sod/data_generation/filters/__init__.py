"""Composable sample filters, built from the ``filters:`` list of a filtering config.

Each entry names a filter by ``type`` (``flip_consistency``, ``semantic_quality``,
``mask_artifacts``, ``teacher_agreement``, ``mask_confidence``) or by a published ``_target_``
(``data_generation.filters.<Class>``); the other keys are constructor arguments, checked against
the constructor's signature.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from synth_sod.data_generation.filters.base import BaseFilter, FilterResult, Sample, iou
from synth_sod.data_generation.filters.consistency import HorizontalFlipConsistencyFilter
from synth_sod.data_generation.filters.teacher import MaskConfidenceFilter, TeacherAgreementFilter
from synth_sod.data_generation.filters.vlm import GemmaMaskArtifactFilter, GemmaSemanticFilter
from synth_sod.data_generation.sharding import PipelineError

FILTERS: dict[str, type[BaseFilter]] = {
    "flip_consistency": HorizontalFlipConsistencyFilter,
    "semantic_quality": GemmaSemanticFilter,
    "mask_artifacts": GemmaMaskArtifactFilter,
    "teacher_agreement": TeacherAgreementFilter,
    "mask_confidence": MaskConfidenceFilter,
}
_BY_CLASS = {cls.__name__: cls for cls in FILTERS.values()}


def build_filter(spec: Mapping[str, Any]) -> BaseFilter:
    """One filter from its config entry."""
    spec = dict(spec)
    kind = spec.pop("type", None)
    target = spec.pop("_target_", None)
    if kind is None and target is not None:
        kind = str(target).rsplit(".", 1)[-1]
    cls = FILTERS.get(str(kind)) or _BY_CLASS.get(str(kind))
    if cls is None:
        raise PipelineError(f"unknown filter {kind or spec!r}; known: {sorted(FILTERS)}")
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "predictor", "client"}
    unknown = sorted(set(spec) - accepted)
    if unknown:
        raise PipelineError(f"filter {kind}: unknown setting(s) {unknown}; "
                            f"valid: {sorted(accepted)}")
    try:
        return cls(**spec)
    except (TypeError, ValueError) as err:  # a setting of the wrong type or range
        raise PipelineError(f"filter {kind}: {err}") from None


__all__ = ["FILTERS", "BaseFilter", "FilterResult", "GemmaMaskArtifactFilter",
           "GemmaSemanticFilter", "HorizontalFlipConsistencyFilter", "MaskConfidenceFilter",
           "Sample", "TeacherAgreementFilter", "build_filter", "iou"]
