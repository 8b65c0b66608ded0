"""The video half of ``s3od remove``: plan outputs, run each video with a progress bar."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from s3od.cli.app import console, fail


class FpsColumn(ProgressColumn):
    """Frames per second of the running task."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:5.1f} fps" if speed else "  ... fps", style="progress.data.speed")


def video_target(source: Path, output: Path | None, single: bool, suffix: str) -> Path:
    """``-o file`` for one input, else ``<folder>/<stem>_nobg<suffix>``."""
    if single and output is not None and output.suffix:
        return output
    folder = output if output is not None else source.parent
    return folder / f"{source.stem}_nobg{suffix}"


def remove_videos(sources: list[Path], output: Path | None, *, model: str | None,
                  device: str | None, image_size: int | None, batch_size: int, refine: Any,
                  fg_estimate: bool, temporal_smoothing: float, background: Any,
                  mask_only: bool, audio: bool, skip_existing: bool, crop: bool,
                  all_masks: bool) -> Any:
    """Process each video in turn; failures are collected, not raised (except bad options)."""
    from s3od.cli.remove import Summary
    from s3od.errors import MissingDependencyError, S3ODError

    if crop or all_masks:
        raise fail("--crop and --all-masks apply to images only")
    if output == Path("-"):
        raise fail("video cannot be written to stdout; give -o file.webm|.mov|.mp4")
    try:
        from s3od.video import OUTPUT_SUFFIXES, output_format, remove_video_background
    except MissingDependencyError as err:
        raise fail(str(err)) from None
    transparent = background is None and not mask_only
    default_suffix = ".webm" if transparent else ".mp4"
    single = len(sources) == 1
    targets = [video_target(s, output, single, default_suffix) for s in sources]
    for target in targets:
        try:
            fmt = output_format(target)
        except S3ODError:
            raise fail(f"cannot write {target.name}: video outputs are "
                       f"{', '.join(OUTPUT_SUFFIXES)}") from None
        if transparent and fmt.alpha_pix_fmt is None:
            raise fail(f"{target.suffix} has no alpha channel: write .webm or .mov, or add "
                       "--bg-color, --bg-image or --mask-only")
    for source in sources:
        if not source.is_file():
            raise fail(f"input not found: {source}")

    from s3od import BackgroundRemoval

    try:
        remover = BackgroundRemoval(model, image_size=image_size, device=device)
    except (S3ODError, ValueError) as err:
        raise fail(str(err)) from None
    console.print(f"[dim]model {remover.model_name} ({remover.source}), "
                  f"{remover.image_size}px, {remover.device}[/]")

    summary = Summary()
    with Progress(TextColumn("[progress.description]{task.description}"), BarColumn(),
                  MofNCompleteColumn(), FpsColumn(), TimeElapsedColumn(),
                  TextColumn("eta"), TimeRemainingColumn(), console=console) as progress:
        for source, target in zip(sources, targets, strict=True):
            if skip_existing and target.exists():
                summary.skipped += 1
                continue
            task = progress.add_task(source.name, total=None)

            def on_progress(done: int, expected: int | None, task=task) -> None:
                progress.update(task, completed=done, total=expected)

            try:
                report = remove_video_background(
                    remover, source, target, batch_size=batch_size, refine=refine,
                    fg_estimate=fg_estimate, temporal_smoothing=temporal_smoothing,
                    background=background, mask_only=mask_only, audio=audio,
                    on_progress=on_progress)
            except MissingDependencyError as err:
                raise fail(str(err)) from None
            except (S3ODError, OSError) as err:
                summary.failed.append((str(source), escape(str(err))))
                continue
            progress.update(task, total=report.frames, completed=report.frames)
            console.print(f"[dim]{target}: {report.frames} frames, "
                          f"{report.frames / max(report.seconds, 1e-9):.1f} fps, "
                          f"audio {report.audio}[/]")
            summary.done += 1
    return summary
