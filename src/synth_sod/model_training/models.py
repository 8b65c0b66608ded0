"""Models for training, built from the ``model`` config group.

A model config names an ``architecture`` and its constructor ``params``; those two are exactly
what the export writes next to the weights, so the inference side rebuilds the same module.
Names resolve through the one architecture registry, :mod:`s3od.architectures`; the FLUX teacher
(training only) registers itself there from :mod:`synth_sod.model_training.flux_teacher`.
``pretrained`` only affects the start of training (ImageNet weights for the lite encoder,
DINOv3 weights from the Hugging Face hub for the ViT encoders) and is never exported.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

import synth_sod.model_training.flux_teacher  # noqa: F401  (registers "flux_teacher")
from s3od.architectures import get_architecture
from s3od.modeling.encoders.dinov3 import load_pretrained_dinov3 as load_pretrained_dinov3

log = logging.getLogger(__name__)


def freeze_unused(model: nn.Module) -> nn.Module:
    """Freeze parameters the forward pass never uses, so DDP needs no unused-parameter search.

    The DPT fusion chain's deepest block (``refinenet4``) never receives a skip input, so its
    first residual unit exists (published checkpoints hold it) but never runs. The DINOv3
    encoder's mask token (masked-image modelling only) and final norm (the decoder reads the
    raw block outputs) are likewise unused.
    """
    scratch = getattr(getattr(model, "seg_head", None), "scratch", None)
    unit = getattr(getattr(scratch, "refinenet4", None), "resConfUnit1", None)
    if unit is not None:
        unit.requires_grad_(False)
    encoder = getattr(model, "encoder", None)
    embeddings = getattr(encoder, "embeddings", None)
    if isinstance(getattr(embeddings, "mask_token", None), nn.Parameter):
        embeddings.mask_token.requires_grad_(False)
    if isinstance(getattr(encoder, "norm", None), nn.Module):
        encoder.norm.requires_grad_(False)
    return model


def build_training_model(cfg: Mapping[str, Any]) -> nn.Module:
    """``cfg``: ``architecture``, ``params`` and optional ``pretrained`` / ``encoder_name``."""
    return freeze_unused(_build(cfg))


def train_only(model: nn.Module, prefixes: Sequence[str]) -> list[str]:
    """Freeze every parameter outside the sub-modules named by ``prefixes``.

    A stage that trains one head on top of released weights (``model.trainable``) must leave
    the rest bit for bit as it was. Returns the frozen top-most module names, which the caller
    keeps in eval mode so their batch-norm statistics do not drift either. Raises ValueError for
    a prefix that names no module (a typo would otherwise train nothing and say nothing).
    """
    modules = dict(model.named_modules())
    missing = [p for p in prefixes if p not in modules]
    if missing:
        raise ValueError(f"model.trainable names no module: {missing}; "
                         f"e.g. {[n for n in modules if n.count('.') < 2 and n][:8]}")
    keep = tuple(prefixes)

    def inside(name: str) -> bool:
        return any(name == p or name.startswith(p + ".") for p in keep)

    for name, param in model.named_parameters():
        if not inside(name):
            param.requires_grad_(False)
    frozen: list[str] = []
    for name in modules:
        if not name or inside(name) or any(p.startswith(name + ".") for p in keep):
            continue  # the root, a trained module, or a parent of one: not frozen as a whole
        if not any(name.startswith(f + ".") for f in frozen):  # inside one already listed
            frozen.append(name)
    return frozen


def _build(cfg: Mapping[str, Any]) -> nn.Module:
    arch = get_architecture(str(cfg["architecture"]))
    return arch.build(pretrained=bool(cfg.get("pretrained", False)),
                      encoder_name=cfg.get("encoder_name") or None,
                      **dict(cfg.get("params") or {}))


def enable_gradient_checkpointing(model: nn.Module) -> bool:
    """Turn on activation checkpointing in a transformers encoder, if the model has one."""
    encoder = getattr(model, "encoder", None)
    if encoder is not None and hasattr(encoder, "gradient_checkpointing_enable"):
        encoder.gradient_checkpointing_enable()
        return True
    return False


def count_parameters(model: nn.Module) -> int:
    """All parameters, trainable or frozen (what the model file holds)."""
    return sum(p.numel() for p in model.parameters())


def to_channels_last(model: nn.Module) -> nn.Module:
    """NHWC memory layout: about 2x faster training of the conv models on CPU."""
    return model.to(memory_format=torch.channels_last)
