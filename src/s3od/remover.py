"""What every remover does whatever runs its network: images in, :class:`RemovalResult` out.

:class:`Remover` owns loading inputs, batching, the choice of post-processing (including the
memory policy for very large photos) and building results. A backend implements only
:meth:`Remover.predict_arrays`: :class:`s3od.predictor.BackgroundRemoval` on PyTorch,
:class:`s3od.export.ort_predictor.OnnxBackgroundRemoval` on ONNX Runtime. Pick one with
:func:`s3od.load_remover`.

This module never imports torch, so the ONNX Runtime backend runs where PyTorch is absent.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from s3od.imageio import ImageInput, load_image
from s3od.result import RemovalResult

if TYPE_CHECKING:
    from s3od.refine import Postprocess, RefineConfig

#: Above this many pixels (in any photo of a batch), ``full_size_candidates=None`` keeps the
#: candidates other than the best at network resolution: each full-size candidate costs 4 bytes
#: per pixel, i.e. 64 MB per candidate at this size.
LARGE_IMAGE_PIXELS = 16_000_000


def candidates_fit(images: Sequence[np.ndarray]) -> bool:
    """The memory policy: full-size candidate masks unless a photo exceeds
    :data:`LARGE_IMAGE_PIXELS`."""
    return all(a.shape[0] * a.shape[1] <= LARGE_IMAGE_PIXELS for a in images)


def postprocess_for(images: Sequence[np.ndarray], refine: str | RefineConfig = "none",
                    fg_estimate: bool = False, full_size_candidates: bool | None = True
                    ) -> Postprocess | None:
    """The post-processing for one batch; ``None`` is the published path, untouched.

    ``full_size_candidates=None`` applies the memory policy (:func:`candidates_fit`).
    """
    if full_size_candidates is None:
        full_size_candidates = candidates_fit(images)
    if isinstance(refine, str) and refine == "none" and not fg_estimate and full_size_candidates:
        return None  # skips importing s3od.refine on the common path
    from s3od.refine import postprocess

    return postprocess(refine, fg_estimate, full_size_candidates)


class Remover(ABC):
    """The public remover API; subclasses say how the network runs (:meth:`predict_arrays`).

    Attributes every backend sets: ``model_name``, ``source`` (where the weights came from),
    ``image_size`` (network input side) and ``device``; ``runtime`` describes PyTorch's
    precision and compilation (``None`` where the backend has no such options);
    :func:`s3od.load_remover` records in ``threads`` the CPU threads per forward pass it chose
    (a :class:`s3od.threads.ThreadChoice`).
    """

    backend: ClassVar[str]
    model_name: str
    source: str
    image_size: int
    device: Any
    runtime: Any = None
    threads: Any = None

    @abstractmethod
    def predict_arrays(self, images: Sequence[np.ndarray], *, full_resolution: bool = True
                       ) -> list[tuple[np.ndarray, np.ndarray]]:
        """One forward pass over RGB uint8 arrays -> ``[(all_masks (N,H,W), ious (N,))]``.

        ``full_resolution=False`` skips the resize to ``(H, W)``: the masks stay at the
        network's resolution with the padding cut off (``(N, h, w)``, the image's aspect), for
        callers that upsample themselves (edge refinement, video, very large photos).
        """

    def describe(self) -> str:
        """One line for logs and banners: model, source, input size, device, runtime."""
        runtime = f", {self.runtime.describe()}" if self.runtime is not None else ""
        if self.threads is not None and str(self.device).lower().startswith("cpu"):
            runtime += f", {self.threads.describe()}"
        return (f"model {self.model_name} ({self.source}), {self.image_size}px, "
                f"{self.device}{runtime}")

    def result(self, rgb: np.ndarray, masks: np.ndarray, ious: np.ndarray,
               threshold: float = 0.5) -> RemovalResult:
        """The result for one image from full-resolution :meth:`predict_arrays` output, for
        callers that batch the forward pass themselves (the server's micro-batcher)."""
        return RemovalResult.from_candidates(rgb, masks, ious, threshold)

    def remove_arrays(self, rgbs: Sequence[np.ndarray], threshold: float = 0.5, *,
                      refine: str | RefineConfig = "none", fg_estimate: bool = False,
                      full_size_candidates: bool | None = True) -> Iterator[RemovalResult]:
        """Decoded RGB arrays -> results; the forward pass runs before this returns.

        Results are built as the iterator reaches them (each holds a full-size cut-out), so a
        caller can write one before the next exists. Options as in :meth:`remove_background`.
        """
        post = postprocess_for(rgbs, refine, fg_estimate, full_size_candidates)
        predictions = self.predict_arrays(
            rgbs, full_resolution=post is None or not post.needs_low_res)
        return (self._finish(rgb, masks, ious, threshold, post)
                for rgb, (masks, ious) in zip(rgbs, predictions, strict=True))

    def _finish(self, rgb: np.ndarray, masks: np.ndarray, ious: np.ndarray, threshold: float,
                post: Postprocess | None) -> RemovalResult:
        if post is None:
            return self.result(rgb, masks, ious, threshold)
        return RemovalResult(**post.finish(rgb, masks, ious), threshold=threshold)

    def remove_background(self, image: ImageInput, threshold: float = 0.5, *,
                          refine: str | RefineConfig = "none", fg_estimate: bool = False,
                          full_size_candidates: bool | None = True) -> RemovalResult:
        """Cut out the salient object of one image (PIL, numpy, path or bytes).

        Args:
            threshold: used by :meth:`RemovalResult.binary_mask` and ``crop``; alpha stays soft.
            refine: ``"none"`` (as published), ``"guided"`` or ``"matting"`` edges, or a
                :class:`s3od.refine.RefineConfig`; see docs/edges-video.md.
            fg_estimate: replace the colour of semi-transparent pixels of ``rgba_image`` by the
                estimated foreground, so no halo of the old background remains (pymatting).
            full_size_candidates: ``False`` leaves ``all_masks`` at the network's resolution,
                saving ``4 x (N - 1)`` bytes per pixel on very large photos; ``None`` does so
                only above :data:`LARGE_IMAGE_PIXELS`.
        """
        return next(self.remove_arrays([load_image(image)], threshold, refine=refine,
                                       fg_estimate=fg_estimate,
                                       full_size_candidates=full_size_candidates))

    def iter_remove_backgrounds(self, images: Iterable[ImageInput], batch_size: int = 4,
                                threshold: float = 0.5, *, refine: str | RefineConfig = "none",
                                fg_estimate: bool = False,
                                full_size_candidates: bool | None = True
                                ) -> Iterator[RemovalResult]:
        """Lazily process a stream of images, one forward pass per ``batch_size`` images."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        options: dict[str, Any] = {"refine": refine, "fg_estimate": fg_estimate,
                                   "full_size_candidates": full_size_candidates}
        pending: list[np.ndarray] = []
        for image in images:
            pending.append(load_image(image))
            if len(pending) == batch_size:
                yield from self.remove_arrays(pending, threshold, **options)
                pending = []
        if pending:
            yield from self.remove_arrays(pending, threshold, **options)

    def remove_backgrounds(self, images: Iterable[ImageInput], batch_size: int = 4,
                           threshold: float = 0.5, *, refine: str | RefineConfig = "none",
                           fg_estimate: bool = False, full_size_candidates: bool | None = True
                           ) -> list[RemovalResult]:
        """Process many images, one forward pass per batch (options as in
        :meth:`remove_background`)."""
        return list(self.iter_remove_backgrounds(
            images, batch_size, threshold, refine=refine, fg_estimate=fg_estimate,
            full_size_candidates=full_size_candidates))
