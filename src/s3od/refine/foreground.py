"""Foreground colour estimation, so cut-outs carry no halo of the old background.

A pixel on a hair strand is a mix ``I = a F + (1 - a) B`` of the strand and the background.
Keeping ``I`` as the colour of a semi-transparent pixel shows the old background through the
new one (a light fringe on dark backgrounds, a dark one on light). pymatting's multilevel
method (Germer et al.) estimates ``F``; it only matters where ``0 < a < 1``, so only tiles
holding such pixels are solved and only those pixels are rewritten.
"""

from __future__ import annotations

import numpy as np

from s3od.refine._pymatting import pymatting, quiet_solver


def soft_tiles(alpha: np.ndarray, tile: int) -> list[tuple[slice, slice]]:
    """``(rows, cols)`` cores of ``tile x tile`` cells holding semi-transparent pixels.

    Scanned a band of ``tile`` rows at a time, so no full-size boolean maps are made.
    """
    h, w = alpha.shape
    cells = []
    for y in range(0, h, tile):
        band = alpha[y:y + tile]
        cols = np.asarray(((band > 0) & (band < 255)).any(axis=0))
        for x in range(0, w, tile):
            if cols[x:x + tile].any():
                cells.append((slice(y, min(h, y + tile)), slice(x, min(w, x + tile))))
    return cells


def defringe(rgba: np.ndarray, *, tile: int = 256, margin: int = 16,
             regularization: float = 1e-5) -> int:
    """Replace the colour of semi-transparent pixels of ``rgba`` by the estimated foreground.

    Args:
        rgba: ``(H, W, 4)`` uint8 straight-alpha image, modified in place.
        tile: side of the cells solved one at a time (bounds memory on large photos).
        margin: context around each cell, so tiles agree where they meet.
        regularization: smoothness weight of the multilevel solver.

    Returns:
        The number of pixels whose colour was replaced.
    """
    if rgba.ndim != 3 or rgba.shape[2] != 4 or rgba.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 4) uint8 array, got {rgba.shape} {rgba.dtype}")
    solve = pymatting().estimate_foreground_ml
    h, w = rgba.shape[:2]
    alpha = rgba[..., 3]
    changed = 0
    for rows, cols in soft_tiles(alpha, tile):
        ys = slice(max(0, rows.start - margin), min(h, rows.stop + margin))
        xs = slice(max(0, cols.start - margin), min(w, cols.stop + margin))
        if (ys.stop - ys.start) * (xs.stop - xs.start) < 2:
            continue  # a lone pixel (a 1x1 image): no neighbours to estimate from; pymatting's
            # multilevel solver divides by zero there
        image = rgba[ys, xs, :3].astype(np.float64) / 255.0
        a = alpha[ys, xs].astype(np.float64) / 255.0
        with quiet_solver():
            fg = solve(image, a, regularization=regularization)
        core = (slice(rows.start - ys.start, rows.stop - ys.start),
                slice(cols.start - xs.start, cols.stop - xs.start))
        a_core = alpha[rows, cols]
        soft = (a_core > 0) & (a_core < 255)
        colours = np.clip(fg[core] * 255.0 + 0.5, 0, 255).astype(np.uint8)
        rgba[rows, cols, :3][soft] = colours[soft]
        changed += int(soft.sum())
    return changed
