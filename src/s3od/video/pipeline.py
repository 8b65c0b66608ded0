"""Background removal for a whole video: decode -> batches -> masks -> smoothing -> encode."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from s3od.errors import InvalidVideoError
from s3od.imageio import DEFAULT_MAX_PIXELS
from s3od.refine.pipeline import RefineConfig, cutout_array, refine_alpha, refine_config
from s3od.video.io import VideoWriter, check_frame_size, iter_frames, output_format, probe
from s3od.video.temporal import TemporalSmoother

#: ``(frames done, frames expected or None)`` after each written frame.
ProgressFn = Callable[[int, "int | None"], None]


@dataclass
class VideoReport:
    """What :func:`remove_video_background` wrote."""

    path: Path
    frames: int
    seconds: float
    width: int
    height: int
    fps: float
    audio: str
    scene_cuts: list[int]


def _batches(frames: Iterable[np.ndarray], size: int) -> Iterator[list[np.ndarray]]:
    it = iter(frames)
    while batch := list(islice(it, size)):
        yield batch


def _background_array(background: Any, width: int, height: int) -> np.ndarray | None:
    """``(H, W, 3)`` float32 background from a colour tuple or an image (resized to fit)."""
    if background is None:
        return None
    if isinstance(background, tuple):
        bg = np.empty((height, width, 3), np.float32)
        bg[:] = background
        return bg
    from PIL import Image

    img = background if isinstance(background, Image.Image) else Image.fromarray(background)
    return np.asarray(img.convert("RGB").resize((width, height), Image.Resampling.LANCZOS),
                      np.float32)


def render_frame(rgb: np.ndarray, alpha: np.ndarray, *, background: np.ndarray | None,
                 mask_only: bool, fg_estimate: bool) -> np.ndarray:
    """One output frame: grey mask, RGB composite over ``background``, or RGBA cut-out."""
    if mask_only:
        return (alpha * 255).astype(np.uint8)
    rgba = cutout_array(rgb, alpha, fg_estimate)
    if background is None:
        return rgba
    a = alpha[..., None]
    out = rgba[..., :3].astype(np.float32) * a + background * (1.0 - a)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def remove_video_background(
    remover: Any,
    source: str | os.PathLike,
    target: str | os.PathLike,
    *,
    batch_size: int = 4,
    refine: str | RefineConfig = "none",
    fg_estimate: bool = False,
    temporal_smoothing: float = 0.0,
    background: tuple[int, int, int] | np.ndarray | Any | None = None,
    mask_only: bool = False,
    audio: bool = True,
    max_frames: int | None = None,
    on_progress: ProgressFn | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> VideoReport:
    """Cut the main object out of every frame of ``source`` and encode ``target``.

    Args:
        remover: a :class:`s3od.BackgroundRemoval` (anything with ``predict_arrays``).
        source: input video (anything FFmpeg decodes).
        target: ``.webm`` (VP9 with alpha), ``.mov`` (ProRes 4444 with alpha) or ``.mp4``
            (H.264; needs ``background`` or ``mask_only``).
        batch_size: frames per forward pass.
        refine: edge refinement per frame (see :func:`s3od.refine.refine_alpha`).
        fg_estimate: estimate foreground colours at soft edges (cut-outs and composites).
        temporal_smoothing: strength in ``[0, 1)`` of the mask's moving average (0: off);
            it restarts at scene cuts.
        background: RGB tuple or image to composite over; ``None`` keeps alpha.
        mask_only: write the soft mask as a grey video instead.
        audio: copy (or re-encode) the first audio stream when there is one.
        max_frames: stop after this many frames (previews, tests).
        on_progress: called after each frame with ``(done, expected)``.
        max_pixels: frames over this many pixels are refused from the stream header, before
            any frame is decoded (the photos' limit; CLI ``--max-pixels``).

    Returns:
        A :class:`VideoReport`. The output appears under ``target`` only once complete.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    config = refine_config(refine)
    fmt = output_format(target)
    alpha_out = background is None and not mask_only
    if alpha_out and fmt.alpha_pix_fmt is None:
        raise InvalidVideoError(
            f"{Path(target).suffix} video has no alpha channel: write .webm or .mov, or give a "
            "background colour or image, or ask for the mask")
    info = probe(source)
    check_frame_size(info, max_pixels, source)
    smoother = TemporalSmoother(temporal_smoothing) if temporal_smoothing > 0 else None
    bg = _background_array(background, info.width, info.height) if not mask_only else None
    expected = info.frames if max_frames is None else min(max_frames, info.frames or max_frames)
    start = time.perf_counter()
    frames = iter_frames(source)
    if max_frames is not None:
        frames = islice(frames, max_frames)
    done = 0
    with VideoWriter(target, info.fps, info.width, info.height, alpha=alpha_out,
                     audio_from=source if audio else None) as writer:
        for batch in _batches(frames, batch_size):
            predictions = remover.predict_arrays(batch, full_resolution=False)
            for rgb, (masks, ious) in zip(batch, predictions, strict=True):
                low = masks[int(np.argmax(ious))]
                if smoother is not None:
                    low = smoother.update(low, rgb)
                alpha = refine_alpha(rgb, low, config)
                writer.write(render_frame(rgb, alpha, background=bg, mask_only=mask_only,
                                          fg_estimate=fg_estimate and not mask_only))
                done += 1
                if on_progress is not None:
                    on_progress(done, expected)
    return VideoReport(Path(target), writer.frames, time.perf_counter() - start, info.width,
                       info.height, float(info.fps), writer.audio_status,
                       smoother.cuts if smoother is not None else [])
