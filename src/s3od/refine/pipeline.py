"""From network-resolution masks to full-resolution results: refinement modes and cut-outs.

Everything here works on bands of rows or on tiles, so the only full-resolution buffers are
the outputs themselves: the float32 alpha (4 bytes per pixel) and the RGBA cut-out (4 bytes
per pixel), next to the decoded photo (3 bytes per pixel).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from s3od.refine.guided import guided_upsample
from s3od.refine.matting import METHODS, band_width, make_trimap, matte_tiles
from s3od.refine.upsample import downsample_area, row_bands, upsample_bilinear

log = logging.getLogger(__name__)

REFINE_MODES = ("none", "guided", "matting")


@dataclass(frozen=True)
class RefineConfig:
    """How the low-resolution mask becomes a full-resolution alpha.

    Attributes:
        mode: ``"none"`` (bilinear upsampling, as the network gives it), ``"guided"`` (fast
            guided filter driven by the photo) or ``"matting"`` (trimap + pymatting in the
            uncertain band, then guided upsampling if the photo is larger than
            ``matting_max_side``).
        eps: guided-filter regulariser; smaller follows the photo's edges more closely.
        radius: guided-filter window radius at the mask's resolution (``None``: scaled).
        method: ``"cf"`` closed-form or ``"lkm"`` large-kernel matting.
        band: half-width of the trimap's unknown band as a fraction of the long side.
        time_budget_s: seconds of matting per image before the remaining tiles keep the
            guided alpha (``None``: no limit).
        matting_max_side: matting runs at most at this long side; larger photos are matted on
            a reduced copy and the matte is guided-upsampled to full resolution.
    """

    mode: str = "guided"
    eps: float = 1e-4
    radius: int | None = None
    method: str = "cf"
    band: float = 0.01
    time_budget_s: float | None = 30.0
    matting_max_side: int = 2048

    def __post_init__(self) -> None:
        if self.mode not in REFINE_MODES:
            raise ValueError(f"refine must be one of {', '.join(REFINE_MODES)}, got {self.mode!r}")
        if self.method not in METHODS:
            raise ValueError(f"matting method must be one of {METHODS}, got {self.method!r}")
        if self.eps <= 0 or not 0 < self.band < 0.5 or self.matting_max_side < 64:
            raise ValueError("eps must be > 0, band in (0, 0.5), matting_max_side >= 64")
        if self.time_budget_s is not None and self.time_budget_s < 0:
            raise ValueError(f"time_budget_s must be >= 0, got {self.time_budget_s}")


def refine_config(refine: str | RefineConfig) -> RefineConfig:
    """Accept a mode name or a ready config (typed errors for anything else)."""
    if isinstance(refine, RefineConfig):
        return refine
    if isinstance(refine, str):
        return RefineConfig(mode=refine.lower())
    raise TypeError(f"refine must be a mode name or a RefineConfig, got {type(refine).__name__}")


def _fit(low: np.ndarray, height: int, width: int, out: np.ndarray | None = None) -> np.ndarray:
    """Resample ``low`` to ``(height, width)``: bilinear up, area down."""
    if low.shape[0] >= height and low.shape[1] >= width:
        fitted = downsample_area(low.astype(np.float32, copy=False), height, width)
        if out is None:
            return fitted
        out[...] = fitted
        return out
    return upsample_bilinear(low, height, width, out)


def _matting(rgb: np.ndarray, low: np.ndarray, config: RefineConfig,
             out: np.ndarray | None) -> np.ndarray:
    height, width = rgb.shape[:2]
    scale = min(1.0, config.matting_max_side / max(height, width))
    work_h, work_w = max(1, round(height * scale)), max(1, round(width * scale))
    if scale < 1.0:
        work_rgb = np.clip(downsample_area(rgb, work_h, work_w) + 0.5, 0, 255).astype(np.uint8)
    else:
        work_rgb = rgb
    alpha = guided_upsample(work_rgb, low, radius=config.radius, eps=config.eps,
                            out=out if scale == 1.0 else None)
    # The trimap comes from the guided alpha, not the network's mask: its uncertain band is
    # already narrowed to the photo's edges, so the solver has fewer unknowns and a better
    # start where the network is vague.
    trimap = make_trimap(alpha, band_width(work_h, work_w, config.band))
    report = matte_tiles(work_rgb, trimap, alpha, method=config.method,
                         time_budget_s=config.time_budget_s)
    log.debug("matting: %s", report)
    if scale == 1.0:
        return alpha
    return guided_upsample(rgb, alpha, radius=config.radius, eps=config.eps, sharpen=1.0,
                           out=out)


def refine_alpha(rgb: np.ndarray, low: np.ndarray, refine: str | RefineConfig = "guided",
                 out: np.ndarray | None = None) -> np.ndarray:
    """One soft mask at any resolution -> ``(H, W)`` float32 alpha for the ``(H, W, 3)`` photo.

    Args:
        rgb: ``(H, W, 3)`` uint8 photo.
        low: ``(h, w)`` float mask in [0, 1] covering the same view (typically the network
            output with its padding cropped off, see ``predict_arrays(full_resolution=False)``).
        refine: a mode name or a :class:`RefineConfig`.
        out: optional ``(H, W)`` float32 array to fill.
    """
    config = refine_config(refine)
    height, width = rgb.shape[:2]
    if config.mode == "none":
        return _fit(low, height, width, out)
    if config.mode == "guided":
        return guided_upsample(rgb, low, radius=config.radius, eps=config.eps, out=out)
    return _matting(rgb, low, config, out)


def cutout_array(rgb: np.ndarray, alpha: np.ndarray, fg_estimate: bool = False) -> np.ndarray:
    """``(H, W, 4)`` uint8 RGBA from the photo and a float alpha, built a band at a time.

    The alpha byte is ``int(alpha * 255)`` (truncated), exactly as :func:`s3od.compose.cutout`.
    With ``fg_estimate`` the colours of semi-transparent pixels are replaced by the estimated
    foreground (:func:`s3od.refine.foreground.defringe`).
    """
    height, width = alpha.shape
    rgba = np.empty((height, width, 4), np.uint8)
    for rows in row_bands(height):
        rgba[rows, :, :3] = rgb[rows]
        rgba[rows, :, 3] = (alpha[rows] * 255).astype(np.uint8)
    if fg_estimate:
        from s3od.refine.foreground import defringe

        defringe(rgba)
    return rgba


@dataclass(frozen=True)
class Postprocess:
    """Options that turn ``predict_arrays`` outputs into result fields (see the predictor).

    ``full_size_candidates=False`` keeps the non-best candidates at the network's resolution,
    which saves ``4 x (N - 1)`` bytes per pixel on large photos.
    """

    config: RefineConfig
    fg_estimate: bool = False
    full_size_candidates: bool = True

    @property
    def needs_low_res(self) -> bool:
        """True when ``predict_arrays`` should return network-resolution masks."""
        return self.config.mode != "none" or not self.full_size_candidates

    def finish(self, rgb: np.ndarray, masks: np.ndarray, ious: np.ndarray) -> dict[str, Any]:
        """Result fields from one image's masks (full-size or network-size per
        :attr:`needs_low_res`) and IoU scores."""
        best = int(np.argmax(ious)) if np.isfinite(ious).all() else 0  # NaN: no IoU head
        height, width = rgb.shape[:2]
        if not self.needs_low_res:            # masks are already full size, as published
            all_masks, mask = masks, masks[best]
        elif self.full_size_candidates:
            all_masks = np.empty((len(masks), height, width), np.float32)
            for i, low in enumerate(masks):
                if i != best:
                    _fit(low, height, width, out=all_masks[i])
            mask = refine_alpha(rgb, masks[best], self.config, out=all_masks[best])
        else:
            all_masks = masks
            mask = refine_alpha(rgb, masks[best], self.config)
        rgba = cutout_array(rgb, mask, self.fg_estimate)
        return {"predicted_mask": mask, "all_masks": all_masks,
                "all_ious": ious.astype(np.float32), "rgba_image": Image.fromarray(rgba, "RGBA"),
                "image": rgb, "best_index": best}


def postprocess(refine: str | RefineConfig = "none", fg_estimate: bool = False,
                full_size_candidates: bool = True) -> Postprocess | None:
    """A :class:`Postprocess`, or ``None`` when the options ask for the published behaviour."""
    config = refine_config(refine)
    if config.mode == "none" and not fg_estimate and full_size_candidates:
        return None
    return Postprocess(config, fg_estimate, full_size_candidates)
