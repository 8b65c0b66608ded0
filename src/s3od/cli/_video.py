"""The video half of ``s3od remove``: plan the outputs, then run each video with the
loaded remover and a progress bar."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.markup import escape
from rich.progress import ProgressColumn, Task
from rich.text import Text

from s3od.cli._shared import Job, Rendering, Summary
from s3od.cli.app import console, fail, progress_bar

if TYPE_CHECKING:
    from s3od.remover import Remover


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


def plan_videos(sources: list[Path], output: Path | None, rendering: Rendering, *,
                crop: bool, all_masks: bool) -> list[Job]:
    """One job per video, after checking what a video output can be (before any loading)."""
    from s3od.errors import MissingDependencyError, S3ODError

    if crop or all_masks:
        raise fail("--crop and --all-masks apply to images only")
    if output == Path("-"):
        raise fail("video cannot be written to stdout; give -o file.webm|.mov|.mp4")
    try:
        from s3od.video import OUTPUT_SUFFIXES, output_format
    except MissingDependencyError as err:
        raise fail(str(err)) from None
    default_suffix = ".webm" if rendering.transparent else ".mp4"
    single = len(sources) == 1
    jobs = [Job(s, video_target(s, output, single, default_suffix)) for s in sources]
    for job in jobs:
        try:
            fmt = output_format(job.target)
        except S3ODError:
            raise fail(f"cannot write {job.target.name}: video outputs are "
                       f"{', '.join(OUTPUT_SUFFIXES)}") from None
        if rendering.transparent and fmt.alpha_pix_fmt is None:
            raise fail(f"{job.target.suffix} has no alpha channel: write .webm or .mov, or add "
                       "--bg-color, --bg-image or --mask-only")
    for source in sources:
        if not source.is_file():
            raise fail(f"input not found: {source}")
    return jobs


def run_videos(jobs: list[Job], remover: Remover, rendering: Rendering, *, batch_size: int,
               refine: Any, fg_estimate: bool, temporal_smoothing: float, audio: bool,
               skip_existing: bool, max_pixels: int | None = None) -> Summary:
    """Process each video in turn with the loaded ``remover``; failures are collected.

    ``max_pixels`` is the photos' ``--max-pixels``: larger frames are refused from the
    stream header. With ``skip_existing`` only complete outputs count as done.
    """
    from s3od.errors import MissingDependencyError, S3ODError
    from s3od.imageio import DEFAULT_MAX_PIXELS
    from s3od.video import remove_video_background
    from s3od.video.io import video_output_problem

    summary = Summary()
    with progress_bar(FpsColumn()) as progress:
        for job in jobs:
            if skip_existing and (job.target.exists() or job.target.is_symlink()):
                problem = video_output_problem(job.target)
                if problem is None:
                    summary.skipped += 1
                    continue
                if job.target.is_dir():
                    summary.failed.append((str(job.source), f"output {job.target} {problem}; "
                                                            "not overwritten"))
                    continue
                console.print(f"[yellow]note:[/] redoing {escape(str(job.target))}: the "
                              f"existing output {escape(problem)}")
            task = progress.add_task(job.source.name, total=None)

            def on_progress(done: int, expected: int | None, task: Any = task) -> None:
                progress.update(task, completed=done, total=expected)

            try:
                report = remove_video_background(
                    remover, job.source, job.target, batch_size=batch_size, refine=refine,
                    fg_estimate=fg_estimate, temporal_smoothing=temporal_smoothing,
                    background=rendering.background, mask_only=rendering.mask_only,
                    audio=audio, on_progress=on_progress,
                    max_pixels=DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels)
            except MissingDependencyError as err:
                raise fail(str(err)) from None
            except (S3ODError, OSError) as err:
                summary.failed.append((str(job.source), escape(str(err))))
                continue
            progress.update(task, total=report.frames, completed=report.frames)
            console.print(f"[dim]{job.target}: {report.frames} frames, "
                          f"{report.frames / max(report.seconds, 1e-9):.1f} fps, "
                          f"audio {report.audio}[/]")
            summary.done += 1
    return summary
