"""Architecture registry: network family name -> builder, default input size, default config.

One table decides what an ``architecture`` string in a checkpoint, a training config or an
export means; loading (:mod:`s3od.hub`, :func:`s3od.modeling.build_model`), training
(``synth_sod.model_training.models``) and export (``synth_sod.model_training.export``,
:mod:`s3od.export.exporter`) all look names up here instead of keeping their own tables.

This module imports neither torch nor the modules it builds (``import s3od`` must stay
torch-free for the ONNX Runtime path); each builder imports its module when called.

Adding a family: write the ``nn.Module`` under :mod:`s3od.modeling` (forward contract in
:mod:`s3od.modeling.segmentation`) and decorate a builder with :func:`register_architecture`
here. A family that only training uses (the FLUX teacher) registers itself from its own module
with ``inference=False``, so the predictors and the exporters refuse it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from s3od.errors import CheckpointError

if TYPE_CHECKING:
    from torch import nn

#: A builder takes the constructor config as keywords, plus ``pretrained`` (start from the
#: family's pretrained encoder weights; training only) and ``encoder_name`` (where those live).
Builder = Callable[..., "nn.Module"]


class UnknownArchitectureError(CheckpointError):
    """An architecture name that no registered family has (or not one the caller can run)."""


@dataclass(frozen=True)
class Architecture:
    """One network family and the facts every consumer needs about it."""

    name: str
    builder: Builder
    #: Input side used when neither the caller, the checkpoint nor a model spec gives one.
    image_size: int
    #: Default constructor arguments; a caller's config is applied over them.
    config: Mapping[str, Any] = field(default_factory=dict)
    #: ``module.QualName`` of the class the builder returns, to name a module passed in directly.
    module_type: str = ""
    #: False for training-only families: no predictor runs them and they are not exported.
    inference: bool = True
    description: str = ""

    def build(self, *, pretrained: bool = False, encoder_name: str | None = None,
              **config: Any) -> nn.Module:
        """Instantiate with the defaults overridden by ``config``."""
        return self.builder(pretrained=pretrained, encoder_name=encoder_name,
                            **{**self.config, **config})


_REGISTRY: dict[str, Architecture] = {}
#: Read-only view of the registry (name -> :class:`Architecture`).
ARCHITECTURES: Mapping[str, Architecture] = MappingProxyType(_REGISTRY)


def register_architecture(name: str, *, image_size: int, config: Mapping[str, Any] | None = None,
                          module_type: str = "", inference: bool = True,
                          description: str = "") -> Callable[[Builder], Builder]:
    """Decorator: register ``builder`` under ``name``. Registering a name twice is an error
    (two modules would silently disagree about what a checkpoint means)."""

    def decorate(builder: Builder) -> Builder:
        existing = _REGISTRY.get(name)
        if existing is not None and existing.builder is not builder:
            raise ValueError(f"architecture {name!r} is already registered by "
                             f"{existing.builder.__module__}.{existing.builder.__qualname__}")
        _REGISTRY[name] = Architecture(name, builder, image_size, dict(config or {}),
                                       module_type, inference, description)
        return builder

    return decorate


def get_architecture(name: str, *, inference: bool = False) -> Architecture:
    """The registered family ``name``; with ``inference=True`` training-only ones are refused."""
    arch = _REGISTRY.get(name)
    if arch is None:
        raise UnknownArchitectureError(
            f"unknown architecture {name!r}; expected one of {sorted(_REGISTRY)}")
    if inference and not arch.inference:
        runnable = sorted(n for n, a in _REGISTRY.items() if a.inference)
        raise UnknownArchitectureError(
            f"architecture {name!r} is training-only and has no inference predictor "
            f"(runnable: {runnable})")
    return arch


def list_architectures(*, inference: bool = False) -> list[str]:
    """Registered names, sorted; ``inference=True`` keeps those the predictors can run."""
    return sorted(n for n, a in _REGISTRY.items() if a.inference or not inference)


def architecture_of(model: object) -> Architecture | None:
    """The family whose builder makes ``type(model)`` (exact class), if any."""
    qualified = f"{type(model).__module__}.{type(model).__qualname__}"
    return next((a for a in _REGISTRY.values() if a.module_type == qualified), None)


def build_model(name: str, **config: Any) -> nn.Module:
    """Instantiate the inference family ``name`` with constructor arguments ``config``."""
    return get_architecture(name, inference=True).build(**config)


# ----------------------------------------------------------------------------- the families


@register_architecture(
    "dpt_dinov3", image_size=1024, config={"encoder_config": "dinov3_vitb16", "num_masks": 3},
    module_type="s3od.modeling.segmentation.DPTSegmentation",
    description="DINOv3 ViT + DPT decoder (the published S3OD models)")
def _build_dpt_dinov3(*, pretrained: bool = False, encoder_name: str | None = None,
                      **config: Any) -> nn.Module:
    from s3od.modeling.encoders.dinov3 import load_pretrained_dinov3
    from s3od.modeling.segmentation import DPTSegmentation

    model = DPTSegmentation(**config)
    if pretrained:
        if not encoder_name:
            raise ValueError("pretrained DINOv3 weights need encoder_name (a hub id), "
                             "e.g. model.encoder_name in a training config")
        load_pretrained_dinov3(model.encoder, encoder_name)
    return model


@register_architecture(
    "lite", image_size=320, module_type="s3od.modeling.segmentation.LiteSegmentation",
    description="EfficientNet-Lite0 + DPT-style fusion decoder (s3od-lite); 320 px is its "
                "training resolution")
def _build_lite(*, pretrained: bool = False, encoder_name: str | None = None,
                **config: Any) -> nn.Module:
    from s3od.modeling.segmentation import LiteSegmentation

    # The ImageNet encoder weights ship in a pip package; ``encoder_name`` does not apply.
    return LiteSegmentation(**config, pretrained_encoder=pretrained)
