"""Temporal smoothing of per-frame masks, reset at scene cuts.

A per-frame network has no memory, so a mask edge that wavers by a pixel or a candidate that
switches from one frame to the next shows as flicker. An exponential moving average of the
mask hides it; where the picture itself changes (a moving object) the average follows the new
frame instead, and at a scene cut it starts over, so no ghost of the old shot bleeds in.
"""

from __future__ import annotations

import numpy as np

from s3od.refine.upsample import downsample_area


def thumbnail(rgb: np.ndarray, side: int = 64) -> np.ndarray:
    """Small ``(h, w)`` float32 luma in [0, 1] (long side ``side``) for cut and motion tests."""
    h, w = rgb.shape[:2]
    scale = min(1.0, side / max(h, w))
    th, tw = max(1, round(h * scale)), max(1, round(w * scale))
    small = downsample_area(rgb, th, tw) if (th, tw) != (h, w) else rgb.astype(np.float32)
    return (small @ np.array([0.299, 0.587, 0.114], np.float32)) / 255.0


def histogram_distance(a: np.ndarray, b: np.ndarray, bins: int = 32) -> float:
    """Total-variation distance in [0, 1] between the luma histograms of two thumbnails.

    Histograms barely move when the camera pans or an object moves, but jump at a cut.
    """
    ha, _ = np.histogram(a, bins=bins, range=(0.0, 1.0))
    hb, _ = np.histogram(b, bins=bins, range=(0.0, 1.0))
    return 0.5 * float(np.abs(ha / max(1, ha.sum()) - hb / max(1, hb.sum())).sum())


class TemporalSmoother:
    """Exponential moving average of masks, gated by motion and reset at scene cuts.

    Args:
        strength: weight of the past, in ``[0, 1)``; 0 disables smoothing. At 0.6 a pixel's
            value settles within about five frames of a change.
        cut_threshold: histogram distance (see :func:`histogram_distance`) above which a frame
            starts a new scene.
        motion_scale: luma change (0..1) at which a pixel stops averaging with the past.
    """

    def __init__(self, strength: float = 0.6, cut_threshold: float = 0.35,
                 motion_scale: float = 0.15) -> None:
        if not 0.0 <= strength < 1.0:
            raise ValueError(f"temporal smoothing strength must be in [0, 1), got {strength}")
        self.strength = strength
        self.cut_threshold = cut_threshold
        self.motion_scale = motion_scale
        self.cuts: list[int] = []
        self._state: np.ndarray | None = None
        self._thumb: np.ndarray | None = None
        self._index = -1

    def reset(self) -> None:
        """Forget the past (the next frame is taken as it is)."""
        self._state = None
        self._thumb = None

    def update(self, mask: np.ndarray, frame: np.ndarray) -> np.ndarray:
        """Smoothed ``mask`` (``(h, w)`` float in [0, 1]) for the RGB ``frame`` it belongs to."""
        self._index += 1
        thumb = thumbnail(frame)
        if self._thumb is not None and (self._thumb.shape != thumb.shape or histogram_distance(
                self._thumb, thumb) > self.cut_threshold):
            self.cuts.append(self._index)
            self._state = None
        previous_thumb, self._thumb = self._thumb, thumb
        if self._state is None or self._state.shape != mask.shape or self.strength == 0.0:
            self._state = mask.astype(np.float32, copy=True)
            return self._state.copy()
        weight = np.full(mask.shape, self.strength, np.float32)
        if previous_thumb is not None and self.motion_scale > 0:
            motion = np.abs(thumb - previous_thumb) / self.motion_scale
            still = np.clip(1.0 - motion, 0.0, 1.0).astype(np.float32)
            weight *= _resize_nearest(still, mask.shape)
        self._state = weight * self._state + (1.0 - weight) * mask.astype(np.float32)
        return self._state.copy()


def _resize_nearest(small: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    rows = np.minimum((np.arange(shape[0]) + 0.5) * small.shape[0] / shape[0], small.shape[0] - 1)
    cols = np.minimum((np.arange(shape[1]) + 0.5) * small.shape[1] / shape[1], small.shape[1] - 1)
    return small[rows.astype(np.intp)][:, cols.astype(np.intp)]
