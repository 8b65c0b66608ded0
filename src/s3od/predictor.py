"""BackgroundRemoval: resolve weights -> build model -> preprocess -> forward -> postprocess."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from s3od.hub import ResolvedCheckpoint, build_from_checkpoint, resolve
from s3od.remover import Remover
from s3od.result import RemovalResult
from s3od.runtime import autocast, prepare_model, to_memory_format
from s3od.transforms import crop_padding, preprocess, unletterbox, validate_image_size

log = logging.getLogger(__name__)


def _default_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


class BackgroundRemoval(Remover):
    """Salient-object cut-outs from any image, on PyTorch.

    The removal methods (``remove_background(s)``, ``iter_remove_backgrounds``, ``result``)
    come from :class:`s3od.remover.Remover`; this class loads the model and runs the network.

    Args:
        model_id: registry name (``s3od``, ``s3od-lite`` ...), hub id, checkpoint file or folder,
            or a :class:`~s3od.hub.ResolvedCheckpoint` already in memory. ``None`` picks the
            published ``okupyn/s3od`` when available, else ``s3od-lite``.
        image_size: network input side (multiple of the encoder stride). ``None`` uses the
            model's own default (1024 for the DINOv3 models, as published).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``; ``None`` picks the best available.
        precision: ``"fp32"`` (exact, the default), ``"bf16"``, ``"fp16"`` or ``"auto"`` (the
            fastest that keeps masks close to fp32 on this device: bf16 on CPUs with
            AMX/AVX512-BF16 and on recent GPUs, fp16 on older GPUs, else fp32). See docs/speed.md.
        channels_last: NHWC weights and inputs; ``None`` turns it on where it is faster.
        compile: run the model through ``torch.compile`` (the first pass per batch shape
            compiles, which takes a while; worth it for long-running servers).
    """

    backend = "torch"

    def __init__(
        self,
        model_id: str | os.PathLike | ResolvedCheckpoint | None = None,
        image_size: int | None = None,
        device: str | torch.device | None = None,
        *,
        precision: str = "fp32",
        channels_last: bool | None = None,
        compile: bool = False,
        _model: torch.nn.Module | None = None,
    ) -> None:
        if _model is None:
            resolved = (model_id if isinstance(model_id, ResolvedCheckpoint)
                        else resolve(model_id))
            _model = build_from_checkpoint(resolved)
            self.model_name = resolved.name
            self.source = resolved.source
            default_size = resolved.image_size
        else:
            self.model_name = type(_model).__name__
            self.source = "in-memory module"
            default_size = 1024
        self.device = torch.device(device) if device is not None else _default_device()
        self._forward, self.runtime = prepare_model(_model, self.device, precision,
                                                    channels_last, compile)
        self.model = _model
        self.precision = self.runtime.precision
        multiple = int(getattr(self.model, "size_multiple", 16))
        self.image_size = validate_image_size(image_size or default_size, multiple)

    @classmethod
    def from_pretrained(cls, model_id: str | os.PathLike | None = None,
                        **kwargs: Any) -> BackgroundRemoval:
        """Alternative constructor, as in the published package."""
        return cls(model_id, **kwargs)

    @classmethod
    def from_model(cls, model: torch.nn.Module, image_size: int = 1024,
                   device: str | torch.device | None = None, *, precision: str = "fp32",
                   channels_last: bool | None = None,
                   compile: bool = False) -> BackgroundRemoval:
        """Wrap an in-memory module (tests, training loops, custom checkpoints)."""
        return cls(image_size=image_size, device=device, precision=precision,
                   channels_last=channels_last, compile=compile, _model=model)

    # ------------------------------------------------------------------ publishing

    def checkpoint(self) -> ResolvedCheckpoint:
        """The weights as loaded (re-read from their file; the running copy may be folded or
        cast for speed) with this remover's name and input size, for :mod:`s3od.publish`."""
        if Path(self.source).is_file():
            resolved = resolve(self.source)
        else:  # an in-memory module: its own weights, architecture read from their shapes
            from s3od.hub import infer_config

            state = {k: v.detach().float().cpu() if v.is_floating_point() else v.cpu()
                     for k, v in self.model.state_dict().items()}
            architecture, config = infer_config(state)
            resolved = ResolvedCheckpoint(state, architecture, config, self.source,
                                          self.model_name)
        resolved.name, resolved.image_size = self.model_name, self.image_size
        return resolved

    def save_pretrained(self, folder: str | os.PathLike, *,
                        benchmark: str | os.PathLike | None = None, card: Any = None) -> Path:
        """Write this model as a Hugging Face hub repository folder (weights, config.json,
        README.md card; metrics from an ``s3od benchmark`` JSON). See :mod:`s3od.publish`."""
        from s3od.publish import save_pretrained

        return save_pretrained(self.checkpoint(), folder, benchmark=benchmark, card=card)

    def push_to_hub(self, repo_id: str, *, private: bool | None = None,
                    token: str | None = None, benchmark: str | os.PathLike | None = None,
                    card: Any = None, endpoint: str | None = None) -> str:
        """Upload this model to ``repo_id`` (created if needed) -> the commit URL; raises
        :class:`s3od.publish.PublishError` without a token or network."""
        from s3od.publish import push_to_hub

        return push_to_hub(self.checkpoint(), repo_id, private=private, token=token,
                           benchmark=benchmark, card=card, endpoint=endpoint)

    # ------------------------------------------------------------------ core

    @torch.inference_mode()
    def predict_arrays(self, images: Sequence[np.ndarray], *, full_resolution: bool = True
                       ) -> list[tuple[np.ndarray, np.ndarray]]:
        """One forward pass (see :meth:`s3od.remover.Remover.predict_arrays`)."""
        batch, boxes = preprocess(images, self.image_size, self.device)
        with autocast(self.device, self.precision):
            out = self._forward(to_memory_format(batch, self.runtime.channels_last))
        probs = torch.sigmoid(out["pred_masks"].float())
        ious = torch.sigmoid(out["pred_iou"].float()).cpu().numpy()
        if not full_resolution:
            return [(crop_padding(probs[i], box).cpu().numpy().astype(np.float32), ious[i])
                    for i, box in enumerate(boxes)]
        return [
            (unletterbox(probs[i], box).cpu().numpy().astype(np.float32, copy=False), ious[i])
            for i, box in enumerate(boxes)
        ]

    def __repr__(self) -> str:
        return (f"BackgroundRemoval(model={self.model_name!r}, image_size={self.image_size}, "
                f"device='{self.device}', runtime={self.runtime.describe()!r})")


def save_result(result: RemovalResult, path: str | Path, **kwargs: Any) -> Path:
    """Save the cut-out (PNG/WebP keep alpha) atomically."""
    from s3od.imageio import save_image_atomic

    return save_image_atomic(result.rgba_image, path, **kwargs)
