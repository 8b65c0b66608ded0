"""BackgroundRemoval: resolve weights -> build model -> preprocess -> forward -> postprocess."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from s3od import compose
from s3od.hub import ResolvedCheckpoint, build_from_checkpoint, resolve
from s3od.imageio import ImageInput, load_image
from s3od.transforms import preprocess, unletterbox, validate_image_size

log = logging.getLogger("s3od")


@dataclass
class RemovalResult:
    """What one image gives. Field names and dtypes follow the published S3OD package.

    Attributes:
        predicted_mask: ``(H, W)`` float32 in [0, 1], the candidate with the highest IoU score.
        all_masks: ``(N, H, W)`` float32 in [0, 1], every candidate at the original size.
        all_ious: ``(N,)`` float32, the model's predicted IoU of each candidate (sigmoid).
        rgba_image: the input with ``predicted_mask`` as alpha (PIL, mode RGBA, size (W, H)).
        image: the decoded input, ``(H, W, 3)`` uint8 RGB.
        threshold: used by :meth:`binary_mask` and :meth:`crop`; the alpha stays soft.
    """

    predicted_mask: np.ndarray
    all_masks: np.ndarray
    all_ious: np.ndarray
    rgba_image: Image.Image
    image: np.ndarray
    best_index: int = 0
    threshold: float = 0.5

    def binary_mask(self, threshold: float | None = None) -> np.ndarray:
        """Hard ``(H, W)`` bool mask of the best candidate."""
        return self.predicted_mask > (self.threshold if threshold is None else threshold)

    def mask_image(self) -> Image.Image:
        """The soft mask as an 8-bit greyscale image."""
        return compose.mask_image(self.predicted_mask)

    def composite(self, background: compose.Color | str | np.ndarray | Image.Image) -> Image.Image:
        """The object over a colour (name, #hex, r,g,b) or a background image."""
        if isinstance(background, str):
            background = compose.parse_color(background)
        return compose.composite(self.image, self.predicted_mask, background)

    def crop(self, image: Image.Image | None = None, margin: int = 0) -> Image.Image:
        """``image`` (default: the cut-out) cropped to the object's bounding box."""
        return compose.crop_to_object(image or self.rgba_image, self.predicted_mask,
                                      self.threshold, margin)

    @property
    def ambiguous(self) -> bool:
        """True when two candidates disagree (IoU < 0.8 at 0.5), as the published demo flags."""
        binar = self.all_masks > 0.5
        for i in range(len(binar)):
            for j in range(i + 1, len(binar)):
                inter = np.logical_and(binar[i], binar[j]).sum()
                union = np.logical_or(binar[i], binar[j]).sum()
                if inter / (union + 1e-6) < 0.8:
                    return True
        return False


def _default_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


class BackgroundRemoval:
    """Salient-object cut-outs from any image.

    Args:
        model_id: registry name (``s3od``, ``s3od-lite`` ...), hub id, checkpoint file or folder.
            ``None`` picks the published ``okupyn/s3od`` when available, else ``s3od-lite``.
        image_size: network input side (multiple of the encoder stride). ``None`` uses the
            model's own default (1024 for the DINOv3 models, as published).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``; ``None`` picks the best available.
    """

    def __init__(
        self,
        model_id: str | os.PathLike | None = None,
        image_size: int | None = None,
        device: str | torch.device | None = None,
        *,
        _resolved: ResolvedCheckpoint | None = None,
        _model: torch.nn.Module | None = None,
    ) -> None:
        if _model is None:
            resolved = _resolved or resolve(model_id)
            _model = build_from_checkpoint(resolved)
            self.model_name = resolved.name
            self.source = resolved.source
            default_size = resolved.image_size
        else:
            self.model_name = type(_model).__name__
            self.source = "in-memory module"
            default_size = 1024
        self.device = torch.device(device) if device is not None else _default_device()
        self.model = _model.to(self.device).eval()
        multiple = int(getattr(self.model, "size_multiple", 16))
        self.image_size = validate_image_size(image_size or default_size, multiple)

    @classmethod
    def from_pretrained(cls, model_id: str | os.PathLike | None = None,
                        **kwargs: Any) -> BackgroundRemoval:
        """Alternative constructor, as in the published package."""
        return cls(model_id, **kwargs)

    @classmethod
    def from_model(cls, model: torch.nn.Module, image_size: int = 1024,
                   device: str | torch.device | None = None) -> BackgroundRemoval:
        """Wrap an in-memory module (tests, training loops, custom checkpoints)."""
        return cls(image_size=image_size, device=device, _model=model)

    # ------------------------------------------------------------------ core

    @torch.inference_mode()
    def predict_arrays(self, images: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        """One forward pass over RGB uint8 arrays -> ``[(all_masks (N,H,W), ious (N,))]``."""
        batch, boxes = preprocess(images, self.image_size, self.device)
        out = self.model(batch)
        probs = torch.sigmoid(out["pred_masks"].float())
        ious = torch.sigmoid(out["pred_iou"].float()).cpu().numpy()
        return [
            (unletterbox(probs[i], box).cpu().numpy().astype(np.float32, copy=False), ious[i])
            for i, box in enumerate(boxes)
        ]

    def _result(self, rgb: np.ndarray, masks: np.ndarray, ious: np.ndarray,
                threshold: float) -> RemovalResult:
        best = int(np.argmax(ious))
        mask = masks[best]
        return RemovalResult(mask, masks, ious.astype(np.float32), compose.cutout(rgb, mask),
                             rgb, best, threshold)

    def remove_background(self, image: ImageInput, threshold: float = 0.5) -> RemovalResult:
        """Cut out the salient object of one image (PIL, numpy, path or bytes)."""
        rgb = load_image(image)
        masks, ious = self.predict_arrays([rgb])[0]
        return self._result(rgb, masks, ious, threshold)

    def iter_remove_backgrounds(self, images: Iterable[ImageInput], batch_size: int = 4,
                                threshold: float = 0.5) -> Iterator[RemovalResult]:
        """Lazily process a stream of images, one forward pass per ``batch_size`` images."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        pending: list[np.ndarray] = []
        for image in images:
            pending.append(load_image(image))
            if len(pending) == batch_size:
                yield from self._flush(pending, threshold)
                pending = []
        if pending:
            yield from self._flush(pending, threshold)

    def _flush(self, rgbs: list[np.ndarray], threshold: float) -> Iterator[RemovalResult]:
        for rgb, (masks, ious) in zip(rgbs, self.predict_arrays(rgbs), strict=True):
            yield self._result(rgb, masks, ious, threshold)

    def remove_backgrounds(self, images: Iterable[ImageInput], batch_size: int = 4,
                           threshold: float = 0.5) -> list[RemovalResult]:
        """Process many images, one forward pass per batch."""
        return list(self.iter_remove_backgrounds(images, batch_size, threshold))

    def __repr__(self) -> str:
        return (f"BackgroundRemoval(model={self.model_name!r}, image_size={self.image_size}, "
                f"device='{self.device}')")


def save_result(result: RemovalResult, path: str | Path, **kwargs: Any) -> Path:
    """Save the cut-out (PNG/WebP keep alpha) atomically."""
    from s3od.imageio import save_image_atomic

    return save_image_atomic(result.rgba_image, path, **kwargs)
