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
from collections.abc import Mapping
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
