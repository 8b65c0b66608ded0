"""Fast guided-filter upsampling: edges of a low-resolution alpha snapped to the photo's edges.

The guided filter (He, Sun and Tang) models the output as a locally linear function of the
guide image, ``q = a . I + b``. The coefficients vary slowly, so they are solved at the mask's
resolution and only *applied* at full resolution (He and Sun's "fast" variant): a hair strand
thinner than a network pixel still shows up in ``q`` because ``I`` carries it.
"""

from __future__ import annotations

import numpy as np

from s3od.refine.upsample import BilinearUpsampler, downsample_area, row_bands


def box_mean(x: np.ndarray, radius: int) -> np.ndarray:
    """Mean over the ``(2r+1)^2`` window around each pixel of ``(h, w[, C])``, shrunk at borders."""
    out = x.astype(np.float64, copy=False)
    for axis in (0, 1):
        n = out.shape[axis]
        csum = np.cumsum(out, axis=axis)
        csum = np.concatenate([np.zeros_like(np.take(csum, [0], axis=axis)), csum], axis=axis)
        hi = np.minimum(np.arange(n) + radius + 1, n)
        lo = np.maximum(np.arange(n) - radius, 0)
        count = (hi - lo).astype(np.float64)
        shape = [1] * out.ndim
        shape[axis] = n
        out = (np.take(csum, hi, axis=axis) - np.take(csum, lo, axis=axis)) / count.reshape(shape)
    return out


def guided_coefficients(guide: np.ndarray, src: np.ndarray, radius: int,
                        eps: float) -> np.ndarray:
    """Smoothed ``(a_r, a_g, a_b, b)`` of the colour guided filter, shape ``(h, w, 4)`` float32.

    Args:
        guide: ``(h, w, 3)`` float image in [0, 1].
        src: ``(h, w)`` float map to filter (the soft mask).
        radius: window radius in pixels of ``guide``.
        eps: regulariser; smaller follows the guide's edges more closely.
    """
    guide = guide.astype(np.float64, copy=False)
    src = src.astype(np.float64, copy=False)
    mean_i = box_mean(guide, radius)
    mean_p = box_mean(src, radius)
    cov_ip = box_mean(guide * src[..., None], radius) - mean_i * mean_p[..., None]
    sigma = np.empty((*guide.shape[:2], 3, 3))
    for r in range(3):
        for c in range(r, 3):
            v = box_mean(guide[..., r] * guide[..., c], radius) - mean_i[..., r] * mean_i[..., c]
            sigma[..., r, c] = sigma[..., c, r] = v
    sigma += eps * np.eye(3)
    a = np.linalg.solve(sigma, cov_ip[..., None])[..., 0]
    b = mean_p - np.einsum("hwc,hwc->hw", a, mean_i)
    coef = np.concatenate([box_mean(a, radius), box_mean(b, radius)[..., None]], axis=2)
    return coef.astype(np.float32)


def banded_coefficients(guide: np.ndarray, src: np.ndarray, radius: int, eps: float,
                        rows: int = 256) -> np.ndarray:
    """:func:`guided_coefficients` computed ``rows`` rows at a time, with the same result.

    Each band is solved with ``2 * radius`` rows of context on both sides (one box filter for
    the coefficients, one to smooth them), so its kept rows are exact, and the float64
    scratch stays at band size even for a 2048 px working resolution.
    """
    h = guide.shape[0]
    if h <= rows:
        return guided_coefficients(guide, src, radius, eps)
    out = np.empty((*src.shape, 4), np.float32)
    pad = 2 * radius
    for start in range(0, h, rows):
        stop = min(h, start + rows)
        lo, hi = max(0, start - pad), min(h, stop + pad)
        band = guided_coefficients(guide[lo:hi], src[lo:hi], radius, eps)
        out[start:stop] = band[start - lo:stop - lo]
    return out


def _erode(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary erosion by a ``(2r+1)^2`` square (outside the image counts as set)."""
    return box_mean(mask.astype(np.float32), radius) > 1.0 - 1e-6


def default_radius(low_shape: tuple[int, int]) -> int:
    """Window radius at the mask's resolution: 1 px per 128 px of its long side (at least 2)."""
    return max(2, round(max(low_shape) / 128))


def guided_upsample(rgb: np.ndarray, low: np.ndarray, *, radius: int | None = None,
                    eps: float = 1e-4, confident: float | None = 0.9, sharpen: float = 4.0,
                    out: np.ndarray | None = None) -> np.ndarray:
    """Low-resolution soft mask -> full-resolution alpha that follows ``rgb``'s edges.

    Args:
        rgb: ``(H, W, 3)`` uint8 photo (the guide).
        low: ``(h, w)`` float mask in [0, 1] covering the same view (any resolution).
        radius: filter window radius at the working resolution; ``None`` scales it with size.
        eps: guided-filter regulariser (colour values in [0, 1]).
        confident: mask values at or beyond this (or ``1 - confident``), at least two window
            radii from the boundary, are kept at exactly 1 (or 0); ``None`` filters everywhere.
        sharpen: contrast applied to the mask around 0.5 before filtering (0 or 1: off).
        out: optional ``(H, W)`` float32 array to write into.

    Returns:
        ``(H, W)`` float32 alpha in [0, 1]. Scratch memory is a few rows at full resolution;
        the solve itself runs at ``min(mask, photo)`` resolution.
    """
    height, width = rgb.shape[:2]
    work_h, work_w = min(low.shape[0], height), min(low.shape[1], width)
    if low.shape != (work_h, work_w):
        low = downsample_area(low.astype(np.float32, copy=False), work_h, work_w)
    if (work_h, work_w) == (height, width):
        guide = rgb.astype(np.float32) / 255.0
    else:
        guide = downsample_area(rgb, work_h, work_w) / 255.0
    r = default_radius((work_h, work_w)) if radius is None else radius
    if sharpen:
        # A blurred network edge would be reproduced faithfully (texture included); a crisp
        # target lets the filter rebuild the soft edge from the photo instead (feathering).
        low = np.clip((low - 0.5) * sharpen + 0.5, 0.0, 1.0)
    coef = banded_coefficients(guide, low, r, eps)
    del guide
    if confident is not None:
        # Far from the boundary the mask is trusted as is: textures inside the object (or in
        # the background) must not leak into alpha through the linear model.
        inside = _erode(low >= confident, 2 * r)
        outside = _erode(low <= 1.0 - confident, 2 * r)
        coef[inside | outside, :3] = 0.0
        coef[inside, 3] = 1.0
        coef[outside, 3] = 0.0
    if out is None:
        out = np.empty((height, width), np.float32)
    sampler = BilinearUpsampler((work_h, work_w), height, width)
    for rows in row_bands(height):
        c = sampler.band(coef, rows) if (work_h, work_w) != (height, width) else coef[rows]
        band = rgb[rows].astype(np.float32) * (1.0 / 255.0)
        q = np.einsum("hwc,hwc->hw", c[..., :3], band) + c[..., 3]
        np.clip(q, 0.0, 1.0, out=out[rows])
    return out
