"""Tiled resampling of network-resolution masks to photo resolution.

A 64 MP photo has 64 M pixels: one float32 copy is 256 MB. These helpers write straight into a
caller-owned output, a band of rows at a time, so the only full-resolution buffer is the result.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

#: Output rows produced per step; bounds the scratch memory to ``TILE_ROWS x width`` floats.
TILE_ROWS = 256


def row_bands(height: int, rows: int = TILE_ROWS) -> Iterator[slice]:
    """Consecutive ``slice``s of at most ``rows`` rows covering ``range(height)``."""
    for start in range(0, height, rows):
        yield slice(start, min(height, start + rows))


def bilinear_taps(src: int, dst: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Half-pixel-centre bilinear taps ``(i0, i1, w1)`` mapping ``dst`` samples onto ``src``.

    Matches ``F.interpolate(..., mode="bilinear", align_corners=False)``: positions below 0 or
    beyond the last sample are clamped to the edge.
    """
    pos = (np.arange(dst, dtype=np.float64) + 0.5) * (src / dst) - 0.5
    pos = np.clip(pos, 0.0, src - 1)
    i0 = np.floor(pos).astype(np.intp)
    i1 = np.minimum(i0 + 1, src - 1)
    return i0, i1, (pos - i0).astype(np.float32)


class BilinearUpsampler:
    """Resample ``(h, w[, C])`` maps to ``(height, width[, C])``, one band of rows at a time.

    The taps are computed once, so several maps (alpha, guided-filter coefficients) of the same
    low-resolution shape can be expanded band by band without full-resolution temporaries.
    """

    def __init__(self, low_shape: tuple[int, int], height: int, width: int) -> None:
        self.low_shape = low_shape
        self.height, self.width = height, width
        self.y0, self.y1, self.wy = bilinear_taps(low_shape[0], height)
        self.x0, self.x1, self.wx = bilinear_taps(low_shape[1], width)

    def band(self, low: np.ndarray, rows: slice) -> np.ndarray:
        """Rows ``rows`` of the upsampled ``low`` as float32 ``(len(rows), width[, C])``."""
        if low.shape[:2] != self.low_shape:
            raise ValueError(f"expected a map of shape {self.low_shape}, got {low.shape[:2]}")
        low = low.astype(np.float32, copy=False)
        extra = (None,) * (low.ndim - 2)
        column = (slice(None), None, *extra)  # a named tuple index: x[*a] needs Python 3.11
        wy = self.wy[rows][column]
        top, bottom = low[self.y0[rows]], low[self.y1[rows]]
        vert = top + (bottom - top) * wy
        row = (None, slice(None), *extra)
        wx = self.wx[row]
        left, right = vert[:, self.x0], vert[:, self.x1]
        return left + (right - left) * wx


def upsample_bilinear(low: np.ndarray, height: int, width: int,
                      out: np.ndarray | None = None) -> np.ndarray:
    """``(h, w)`` float map -> ``(height, width)`` float32, filled band by band into ``out``."""
    if out is None:
        out = np.empty((height, width), np.float32)
    sampler = BilinearUpsampler(low.shape[:2], height, width)
    for rows in row_bands(height):
        out[rows] = sampler.band(low, rows)
    return out


def downsample_area(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Box-average an ``(H, W[, C])`` array to ``(height, width[, C])`` float32.

    Whole ``k x k`` blocks are averaged a band of rows at a time (``k`` = the integer part of
    the scale), then a small adaptive average pool reaches the exact size, so a 64 MP uint8
    photo is reduced without a full-resolution float copy.
    """
    import torch
    import torch.nn.functional as F

    src_h, src_w = image.shape[:2]
    if height > src_h or width > src_w:
        raise ValueError(f"cannot downsample {src_w}x{src_h} to {width}x{height}")
    k = max(1, min(src_h // height, src_w // width))
    mid_h, mid_w = src_h // k, src_w // k
    extra = image.shape[2:]
    mid = np.empty((mid_h, mid_w, *extra), np.float32)
    band = max(1, (1 << 20) // max(1, src_w * k))   # block-rows per step: ~1 M input pixels
    for start in range(0, mid_h, band):
        stop = min(mid_h, start + band)
        block = torch.from_numpy(np.array(image[start * k:stop * k, :mid_w * k]))
        block = block.reshape(block.shape[0], block.shape[1], -1).permute(2, 0, 1)[None].float()
        pooled = F.avg_pool2d(block, k)[0].permute(1, 2, 0).numpy()
        mid[start:stop] = pooled.reshape(stop - start, mid_w, *extra)
    t = torch.from_numpy(mid.reshape(mid_h, mid_w, -1)).permute(2, 0, 1)[None]
    pooled = F.adaptive_avg_pool2d(t, (height, width))[0].permute(1, 2, 0).numpy()
    return np.ascontiguousarray(pooled.reshape(height, width, *extra))
