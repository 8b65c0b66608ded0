"""Trimap matting of the uncertain band around an object, in tiles, within a time budget.

A segmentation network gives a soft but blurry mask; closed-form (Levin et al.) and
large-kernel (He et al.) matting solve for alpha from the colours themselves. Both are sparse
linear systems whose cost grows with the number of unknown pixels, so only a band around the
object boundary is left unknown, the band is cut into overlapping tiles, and tiles are solved
until the time budget runs out; the remaining tiles keep the caller's alpha.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from s3od.refine._pymatting import pymatting, quiet_solver
from s3od.refine.guided import _erode

log = logging.getLogger(__name__)

#: Trimap values (as in pymatting's convention scaled to uint8).
BACKGROUND, UNKNOWN, FOREGROUND = 0, 128, 255
METHODS = ("cf", "lkm")


@dataclass
class MattingReport:
    """What a matting pass did, for logs and benchmarks."""

    tiles: int = 0
    solved: int = 0
    unknown_pixels: int = 0
    seconds: float = 0.0

    @property
    def complete(self) -> bool:
        """True when every tile with unknown pixels was solved within the budget."""
        return self.solved == self.tiles


def band_width(height: int, width: int, fraction: float = 0.01, minimum: int = 3) -> int:
    """Half-width of the unknown band in pixels: ``fraction`` of the long side, at least 3."""
    return max(minimum, round(fraction * max(height, width)))


def make_trimap(mask: np.ndarray, radius: int, low: float = 0.1, high: float = 0.9) -> np.ndarray:
    """Soft mask ``(h, w)`` in [0, 1] -> uint8 trimap (0 background, 128 unknown, 255 foreground).

    Pixels at least ``radius`` px inside the confident regions (``>= high`` or ``<= low``) are
    known; everything else (the boundary band and any soft area such as hair) is unknown.
    """
    trimap = np.full(mask.shape, UNKNOWN, np.uint8)
    trimap[_erode(mask >= high, radius)] = FOREGROUND
    trimap[_erode(mask <= low, radius)] = BACKGROUND
    return trimap


def _solver(method: str):
    if method not in METHODS:
        raise ValueError(f"matting method must be one of {METHODS}, got {method!r}")
    module = pymatting()
    return module.estimate_alpha_cf if method == "cf" else module.estimate_alpha_lkm


def tiles_with_unknown(trimap: np.ndarray, tile: int) -> list[tuple[slice, slice]]:
    """Core ``(rows, cols)`` of every ``tile x tile`` cell that holds unknown pixels."""
    h, w = trimap.shape
    cells = []
    for y in range(0, h, tile):
        for x in range(0, w, tile):
            core = (slice(y, min(h, y + tile)), slice(x, min(w, x + tile)))
            if (trimap[core] == UNKNOWN).any():
                cells.append(core)
    return cells


def matte_tiles(rgb: np.ndarray, trimap: np.ndarray, alpha: np.ndarray, *,
                method: str = "cf", time_budget_s: float | None = 30.0, tile: int = 320,
                margin: int = 24) -> MattingReport:
    """Solve alpha in the unknown pixels of ``trimap``, writing into ``alpha`` in place.

    Args:
        rgb: ``(H, W, 3)`` uint8 image.
        trimap: ``(H, W)`` uint8 trimap from :func:`make_trimap`.
        alpha: ``(H, W)`` float32 alpha in [0, 1]; known pixels are set to 0/1, solved unknown
            pixels get the matting result, unsolved tiles keep their values.
        method: ``"cf"`` closed-form or ``"lkm"`` large-kernel matting.
        time_budget_s: stop starting new tiles after this many seconds (``None``: no limit).
        tile: tile side in pixels; each tile is solved with ``margin`` pixels of context.
    """
    solve = _solver(method)
    start = time.perf_counter()
    cells = tiles_with_unknown(trimap, tile)
    report = MattingReport(tiles=len(cells), unknown_pixels=int((trimap == UNKNOWN).sum()))
    h, w = trimap.shape
    for rows, cols in cells:
        if time_budget_s is not None and time.perf_counter() - start > time_budget_s:
            break
        ys = slice(max(0, rows.start - margin), min(h, rows.stop + margin))
        xs = slice(max(0, cols.start - margin), min(w, cols.stop + margin))
        tri = trimap[ys, xs]
        if (tri == FOREGROUND).any() and (tri == BACKGROUND).any():
            with quiet_solver():
                solved = solve(rgb[ys, xs].astype(np.float64) / 255.0,
                               tri.astype(np.float64) / 255.0)
            core = (slice(rows.start - ys.start, rows.stop - ys.start),
                    slice(cols.start - xs.start, cols.stop - xs.start))
            unknown = trimap[rows, cols] == UNKNOWN
            alpha[rows, cols][unknown] = solved[core][unknown]
        report.solved += 1
    report.seconds = time.perf_counter() - start
    known = trimap != UNKNOWN
    alpha[known] = (trimap[known] == FOREGROUND)
    if not report.complete:
        log.warning("matting solved %d of %d tiles within the %.0f s budget; the rest keep the "
                    "guided-filter alpha", report.solved, report.tiles, time_budget_s or 0)
    return report
