"""BackgroundRemoval: resolve weights -> build model -> preprocess -> forward -> postprocess."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from s3od.hub import ResolvedCheckpoint, build_from_checkpoint, resolve
from s3od.imageio import ImageInput, load_image
from s3od.result import RemovalResult
from s3od.runtime import autocast, prepare_model, to_memory_format
from s3od.transforms import crop_padding, preprocess, unletterbox, validate_image_size

if TYPE_CHECKING:
    from s3od.refine import Postprocess, RefineConfig

log = logging.getLogger("s3od")


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
        precision: ``"fp32"`` (exact, the default), ``"bf16"``, ``"fp16"`` or ``"auto"`` (the
            fastest that keeps masks close to fp32 on this device: bf16 on CPUs with
            AMX/AVX512-BF16 and on recent GPUs, fp16 on older GPUs, else fp32). See docs/speed.md.
        channels_last: NHWC weights and inputs; ``None`` turns it on where it is faster.
        compile: run the model through ``torch.compile`` (the first pass per batch shape
            compiles, which takes a while; worth it for long-running servers).
    """

    def __init__(
        self,
        model_id: str | os.PathLike | None = None,
        image_size: int | None = None,
        device: str | torch.device | None = None,
        *,
        precision: str = "fp32",
        channels_last: bool | None = None,
        compile: bool = False,
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

    # ------------------------------------------------------------------ core

    @torch.inference_mode()
    def predict_arrays(self, images: Sequence[np.ndarray], *, full_resolution: bool = True
                       ) -> list[tuple[np.ndarray, np.ndarray]]:
        """One forward pass over RGB uint8 arrays -> ``[(all_masks (N,H,W), ious (N,))]``.

        ``full_resolution=False`` skips the resize to ``(H, W)``: the masks stay at the network's
        resolution with the padding cut off (``(N, h, w)``, the image's aspect), for callers that
        upsample in tiles themselves (edge refinement, very large photos).
        """
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

    def _result(self, rgb: np.ndarray, masks: np.ndarray, ious: np.ndarray,
                threshold: float) -> RemovalResult:
        return RemovalResult.from_candidates(rgb, masks, ious, threshold)

    def remove_background(self, image: ImageInput, threshold: float = 0.5, *,
                          refine: str | RefineConfig = "none", fg_estimate: bool = False,
                          full_size_candidates: bool = True) -> RemovalResult:
        """Cut out the salient object of one image (PIL, numpy, path or bytes).

        Args:
            refine: ``"none"`` (as published), ``"guided"`` or ``"matting"`` edges, or a
                :class:`s3od.refine.RefineConfig`; see docs/edges-video.md.
            fg_estimate: replace the colour of semi-transparent pixels of ``rgba_image`` by the
                estimated foreground, so no halo of the old background remains (pymatting).
            full_size_candidates: ``False`` leaves ``all_masks`` at the network's resolution,
                saving ``4 x (N - 1)`` bytes per pixel on very large photos.
        """
        rgb = load_image(image)
        post = _postprocess(refine, fg_estimate, full_size_candidates)
        return next(self._flush([rgb], threshold, post))

    def iter_remove_backgrounds(self, images: Iterable[ImageInput], batch_size: int = 4,
                                threshold: float = 0.5, *, refine: str | RefineConfig = "none",
                                fg_estimate: bool = False, full_size_candidates: bool = True
                                ) -> Iterator[RemovalResult]:
        """Lazily process a stream of images, one forward pass per ``batch_size`` images."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        post = _postprocess(refine, fg_estimate, full_size_candidates)
        pending: list[np.ndarray] = []
        for image in images:
            pending.append(load_image(image))
            if len(pending) == batch_size:
                yield from self._flush(pending, threshold, post)
                pending = []
        if pending:
            yield from self._flush(pending, threshold, post)

    def _flush(self, rgbs: list[np.ndarray], threshold: float,
               post: Postprocess | None = None) -> Iterator[RemovalResult]:
        if post is None:
            for rgb, (masks, ious) in zip(rgbs, self.predict_arrays(rgbs), strict=True):
                yield self._result(rgb, masks, ious, threshold)
            return
        predictions = self.predict_arrays(rgbs, full_resolution=not post.needs_low_res)
        for rgb, (masks, ious) in zip(rgbs, predictions, strict=True):
            yield RemovalResult(**post.finish(rgb, masks, ious), threshold=threshold)

    def remove_backgrounds(self, images: Iterable[ImageInput], batch_size: int = 4,
                           threshold: float = 0.5, *, refine: str | RefineConfig = "none",
                           fg_estimate: bool = False, full_size_candidates: bool = True
                           ) -> list[RemovalResult]:
        """Process many images, one forward pass per batch (options as in
        :meth:`remove_background`)."""
        return list(self.iter_remove_backgrounds(
            images, batch_size, threshold, refine=refine, fg_estimate=fg_estimate,
            full_size_candidates=full_size_candidates))

    def __repr__(self) -> str:
        return (f"BackgroundRemoval(model={self.model_name!r}, image_size={self.image_size}, "
                f"device='{self.device}', runtime={self.runtime.describe()!r})")


def _postprocess(refine: str | RefineConfig, fg_estimate: bool,
                 full_size_candidates: bool) -> Postprocess | None:
    """``None`` (the published path, untouched) unless an edge or memory option is set."""
    if isinstance(refine, str) and refine == "none" and not fg_estimate and full_size_candidates:
        return None
    from s3od.refine import postprocess

    return postprocess(refine, fg_estimate, full_size_candidates)


def save_result(result: RemovalResult, path: str | Path, **kwargs: Any) -> Path:
    """Save the cut-out (PNG/WebP keep alpha) atomically."""
    from s3od.imageio import save_image_atomic

    return save_image_atomic(result.rgba_image, path, **kwargs)
