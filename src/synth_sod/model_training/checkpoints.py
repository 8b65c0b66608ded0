"""Read Lightning checkpoints written by the training run and rebuild their models."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from synth_sod.model_training.models import build_training_model


def read_lightning_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(model state_dict without the "model." prefix, run config)`` of a ``.ckpt``.

    The checkpoint is our own training output (it pickles the run config), hence
    ``weights_only=False``; only load checkpoints you trust.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    hparams = ckpt.get("hyper_parameters") or {}
    config = hparams.get("config")
    if config is None:
        raise ValueError(f"{path}: no hyper_parameters['config']; not a synth_sod training "
                         "checkpoint")
    state = {k[len("model."):]: v for k, v in ckpt["state_dict"].items()
             if k.startswith("model.")}
    if not state:
        raise ValueError(f"{path}: no model weights in the checkpoint")
    return state, dict(config)


def model_from_checkpoint(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """The trained model (eval mode, contiguous memory layout) and the run config."""
    state, config = read_lightning_checkpoint(path)
    model_cfg = dict(config["model"])
    model_cfg["pretrained"] = False  # the weights come from the checkpoint
    model = build_training_model(model_cfg)
    model.load_state_dict(state, strict=True)
    return model.to(memory_format=torch.contiguous_format).eval(), config
