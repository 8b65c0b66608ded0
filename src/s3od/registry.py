"""Model registry: a name -> architecture, constructor config, and where the weights live.

A model is one set of weights; its architecture (how to build the module, the default input
side) is looked up in :mod:`s3od.architectures`, so the two tables cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from s3od.architectures import get_architecture

_DINOV3_BASE_3 = dict(get_architecture("dpt_dinov3").config)


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to build a model and find its weights."""

    name: str
    architecture: str
    config: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    hub_repo: str | None = None
    hub_filenames: tuple[str, ...] = ("s3od.safetensors", "s3od.pt")
    bundled_file: str | None = None
    #: Input side; 0 means the architecture's default (``s3od.architectures``).
    image_size: int = 0
    license: str = ""

    def __post_init__(self) -> None:
        if not self.image_size:
            object.__setattr__(self, "image_size", get_architecture(self.architecture).image_size)

    def bundled_path(self) -> Path | None:
        """Path of the weights shipped inside the package, if this model has any."""
        if self.bundled_file is None:
            return None
        return Path(str(resources.files("s3od.weights").joinpath(self.bundled_file)))

    @property
    def source(self) -> str:
        """Human-readable weight source."""
        if self.bundled_file:
            return f"bundled: s3od/weights/{self.bundled_file}"
        return f"hub: {self.hub_repo} ({' or '.join(self.hub_filenames)})"


#: The shipped s3od-lite: decoder width 32, candidate masks at half resolution (chosen by
#: benchmarks/profile_lite.py and benchmarks/speed.py), candidates ranked by the
#: mask-statistics IoU head. Its last training stage ran at 384 px, and it runs at 384 by default
#: (better than 320 on every held-out metric, docs/model-card.md); a bare lite checkpoint still
#: defaults to the architecture's 320.
LITE_CONFIG: dict[str, int | str] = {"features": 32, "mask_upsample_features": 16,
                                     "mask_inter_features": 8, "mask_stride": 2, "num_masks": 3,
                                     "iou_head": "mask_statistics", "iou_hidden": 32}
LITE_IMAGE_SIZE = 384

MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec("s3od", "dpt_dinov3", _DINOV3_BASE_3,
                  "DINOv3-B + DPT, synthetic + real data (published default)", "okupyn/s3od",
                  license="MIT"),
        ModelSpec("s3od-synth", "dpt_dinov3", _DINOV3_BASE_3,
                  "DINOv3-B + DPT, synthetic data only", "okupyn/s3od-synth", license="MIT"),
        ModelSpec("s3od-dis", "dpt_dinov3", _DINOV3_BASE_3,
                  "DINOv3-B + DPT, fine-tuned on DIS5K", "okupyn/s3od-dis", license="MIT"),
        ModelSpec("s3od-sod", "dpt_dinov3", _DINOV3_BASE_3,
                  "DINOv3-B + DPT, fine-tuned on SOD benchmarks", "okupyn/s3od-sod",
                  license="MIT"),
        ModelSpec("s3od-lite", "lite", LITE_CONFIG,
                  "EfficientNet-Lite0 + fusion decoder, bundled, runs offline",
                  bundled_file="s3od-lite.safetensors", image_size=LITE_IMAGE_SIZE,
                  license="research-only weights (docs/model-card.md)"),
    )
}
HUB_ALIASES = {spec.hub_repo: name for name, spec in MODELS.items() if spec.hub_repo}
DEFAULT_MODEL = "s3od"
FALLBACK_MODEL = "s3od-lite"


def get_spec(name: str) -> ModelSpec | None:
    """Spec for a registry name or a published hub id (``okupyn/s3od``)."""
    if name in MODELS:
        return MODELS[name]
    alias = HUB_ALIASES.get(name)
    return MODELS[alias] if alias else None


def list_models() -> list[ModelSpec]:
    """All registered models, default first."""
    return list(MODELS.values())
