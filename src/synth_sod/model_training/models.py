"""Models for training, built from the ``model`` config group.

A model config names an ``architecture`` and its constructor ``params``; those two are exactly
what the export writes next to the weights, so the inference side rebuilds the same module.
``pretrained`` only affects the start of training (ImageNet weights for the lite encoder,
DINOv3 weights from the Hugging Face hub for the ViT encoders) and is never exported.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from s3od.modeling import DPTSegmentation, LiteSegmentation

log = logging.getLogger(__name__)

TRAIN_ARCHITECTURES = ("lite", "dpt_dinov3", "flux_teacher")


def load_pretrained_dinov3(encoder: nn.Module, hub_id: str, **kwargs: Any) -> None:
    """Copy hub DINOv3 weights (``DINOv3ViTModel.from_pretrained``) into ``encoder``.

    The hub repositories are gated: accept the licence on the model page and log in
    (``hf auth login``) first. Shapes must match the encoder config exactly.
    """
    from transformers import DINOv3ViTModel

    source = DINOv3ViTModel.from_pretrained(hub_id, **kwargs)
    missing, unexpected = encoder.load_state_dict(source.state_dict(), strict=False)
    if missing or unexpected:
        raise RuntimeError(f"DINOv3 weights from {hub_id} do not fit the encoder: "
                           f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    log.info("loaded DINOv3 weights from %s", hub_id)


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
    arch = cfg["architecture"]
    params = dict(cfg.get("params") or {})
    pretrained = bool(cfg.get("pretrained", False))
    if arch == "lite":
        return LiteSegmentation(**params, pretrained_encoder=pretrained)
    if arch == "dpt_dinov3":
        model = DPTSegmentation(**params)
        if pretrained:
            if not cfg.get("encoder_name"):
                raise ValueError("model.pretrained=true needs model.encoder_name (a hub id)")
            load_pretrained_dinov3(model.encoder, cfg["encoder_name"])
        return model
    if arch == "flux_teacher":
        from synth_sod.model_training.flux_teacher import FluxDPTSegmentation

        model = FluxDPTSegmentation(**params)
        if pretrained and cfg.get("encoder_name") and model.use_dino_features:
            load_pretrained_dinov3(model.encoder, cfg["encoder_name"])
        return model
    raise ValueError(f"unknown model.architecture {arch!r}; expected one of {TRAIN_ARCHITECTURES}")


def enable_gradient_checkpointing(model: nn.Module) -> bool:
    """Turn on activation checkpointing in a transformers encoder, if the model has one."""
    encoder = getattr(model, "encoder", None)
    if encoder is not None and hasattr(encoder, "gradient_checkpointing_enable"):
        encoder.gradient_checkpointing_enable()
        return True
    return False


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def to_channels_last(model: nn.Module) -> nn.Module:
    """NHWC memory layout: about 2x faster training of the conv models on CPU."""
    return model.to(memory_format=torch.channels_last)
