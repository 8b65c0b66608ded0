"""Read Lightning checkpoints written by the training run and rebuild their models."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from s3od.checkpoint_io import load_torch_checkpoint
from s3od.errors import CheckpointError
from synth_sod.model_training.models import build_training_model


def read_lightning_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(model state_dict without the "model." prefix, run config)`` of a ``.ckpt``.

    Read with ``weights_only=True`` and the checkpoint allow-list
    (:func:`s3od.checkpoint_io.load_torch_checkpoint`): a ``.ckpt`` from anywhere cannot run
    code here; one that tries raises :class:`s3od.errors.UnsafeCheckpointError`. A file that
    is not a training checkpoint raises :class:`s3od.errors.CheckpointError`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    ckpt = load_torch_checkpoint(path)
    hparams = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    config = hparams.get("config") if isinstance(hparams, Mapping) else None
    if not isinstance(config, Mapping):
        raise CheckpointError(f"{path}: no hyper_parameters['config']; not a synth_sod "
                              "training checkpoint")
    weights = ckpt.get("state_dict")
    state = {k[len("model."):]: v for k, v in (weights.items() if isinstance(weights, Mapping)
                                                else ()) if isinstance(k, str)
             and k.startswith("model.") and isinstance(v, torch.Tensor)}
    if not state:
        raise CheckpointError(f"{path}: no model weights in the checkpoint")
    return state, _plain(config)


def _plain(config: Mapping[str, Any]) -> dict[str, Any]:
    """A run config as plain dicts (checkpoints of other trainers keep omegaconf objects)."""
    try:
        from omegaconf import DictConfig, OmegaConf
    except ImportError:
        return dict(config)
    if isinstance(config, DictConfig):
        return OmegaConf.to_container(config, resolve=True)  # type: ignore[return-value]
    return dict(config)


def model_from_checkpoint(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """The trained model (eval mode, contiguous memory layout) and the run config."""
    state, config = read_lightning_checkpoint(path)
    model_cfg = dict(config["model"])
    model_cfg["pretrained"] = False  # the weights come from the checkpoint
    model = build_training_model(model_cfg)
    model.load_state_dict(state, strict=True)
    return model.to(memory_format=torch.contiguous_format).eval(), config
