"""RemovalResult: what a background removal gives, whichever runtime produced it.

Kept free of torch so the ONNX Runtime predictor (:mod:`s3od.export.ort_predictor`) returns
the very same class as :class:`s3od.predictor.BackgroundRemoval` without importing PyTorch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from s3od import compose

#: Rivals rated within this much predicted IoU of the pick make a photo ambiguous.
AMBIGUITY_MARGIN = 0.05
#: A pick rated below this is reported as unsure.
UNSURE_BELOW = 0.75


@dataclass(frozen=True)
class Assessment:
    """The IoU head's verdict on one photo (see :meth:`RemovalResult.assessment`)."""

    verdict: str  # "clear", "ambiguous", "unsure", or "unscored" (model without an IoU head)
    best_index: int
    best_score: float
    rivals: list[int]


@dataclass
class RemovalResult:
    """What one image gives. Field names and dtypes follow the published S3OD package.

    Attributes:
        predicted_mask: ``(H, W)`` float32 in [0, 1], the candidate with the highest IoU score.
        all_masks: ``(N, H, W)`` float32 in [0, 1], every candidate at the original size.
        all_ious: ``(N,)`` float32, the model's predicted IoU of each candidate (sigmoid);
            NaN for models without an IoU head (foreign ONNX models, see :attr:`scored`).
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

    def render(self, *, mask_only: bool = False,
               background: compose.Color | str | np.ndarray | Image.Image | None = None,
               crop: bool = False) -> Image.Image:
        """The image an output holds, as every front end makes it (CLI, server, bulk).

        The cut-out (RGBA), the soft mask with ``mask_only``, or the object over
        ``background`` (a colour or an image); ``crop`` then cuts it to the object's box.
        """
        if mask_only:
            image = self.mask_image()
        elif background is not None:
            image = self.composite(background)
        else:
            image = self.rgba_image
        return self.crop(image) if crop else image

    @property
    def scored(self) -> bool:
        """False when the model has no IoU head (``all_ious`` is NaN): nothing to rank by."""
        return bool(np.isfinite(self.all_ious).all())

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

    def assessment(self, margin: float = AMBIGUITY_MARGIN, unsure_below: float = UNSURE_BELOW,
                   ) -> Assessment:
        """What the IoU head says about this photo, for front ends to tell the user.

        ``"unsure"``: the picked candidate's predicted IoU is below ``unsure_below`` (the head
        doubts its own best mask); ``"ambiguous"``: another candidate disagrees with the pick
        (IoU < 0.8 at 0.5) yet is rated within ``margin`` of it, so the photo has two readings
        the model cannot choose between; ``"clear"`` otherwise, including candidates that
        disagree but are rated clearly lower. Unlike :attr:`ambiguous` (the published rule,
        masks only) this follows the scores.
        """
        best = self.best_index
        if not self.scored:  # no IoU head: no verdict to give
            return Assessment("unscored", best, float("nan"), [])
        picked = self.all_masks[best] > 0.5
        rivals = []
        for i, mask in enumerate(self.all_masks):
            if i == best:
                continue
            other = mask > 0.5
            union = np.logical_or(picked, other).sum()
            overlap = np.logical_and(picked, other).sum() / union if union else 1.0
            if overlap < 0.8 and self.all_ious[best] - self.all_ious[i] <= margin:
                rivals.append(i)
        score = float(self.all_ious[best])
        if score < unsure_below:
            return Assessment("unsure", best, score, rivals)
        return Assessment("ambiguous" if rivals else "clear", best, score, rivals)

    @classmethod
    def from_candidates(cls, rgb: np.ndarray, masks: np.ndarray, ious: np.ndarray,
                        threshold: float = 0.5) -> RemovalResult:
        """Pick the candidate with the highest predicted IoU and build the cut-out.

        Args:
            rgb: ``(H, W, 3)`` uint8 decoded input.
            masks: ``(N, H, W)`` float32 probabilities at the original size.
            ious: ``(N,)`` predicted IoU of each candidate (after sigmoid).
        """
        best = int(np.argmax(ious)) if np.isfinite(ious).all() else 0
        mask = masks[best]
        return cls(mask, masks, ious.astype(np.float32), compose.cutout(rgb, mask), rgb, best,
                   threshold)
