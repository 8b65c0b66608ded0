"""Types and helpers shared by ``s3od remove``'s photo, video and Ray paths.

Command modules import from here and never from each other, so no two of them import in a
circle.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from s3od.cli.app import console, fail

if TYPE_CHECKING:
    from PIL import Image

    from s3od.compose import Color
    from s3od.remover import Remover
    from s3od.result import RemovalResult

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".jfif"}
# Kept in sync with s3od.video.io.VIDEO_SUFFIXES (not imported here: PyAV is optional).
VIDEO_SUFFIXES = {".mp4", ".mov", ".webm", ".mkv", ".avi", ".m4v", ".mpg", ".mpeg", ".wmv"}


@dataclass
class Job:
    """One input and where its output goes."""

    source: Path
    target: Path


@dataclass
class Summary:
    """What a run did; ``failed`` lists ``(source, reason)``."""

    done: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    #: the signal number that stopped the run early (SIGINT, SIGTERM), if one did
    interrupted: int | None = None

    def report(self, total: int) -> None:
        """Counts, then one line per failure (stderr)."""
        from rich.markup import escape

        console.print(f"[green]done {self.done}[/], skipped {self.skipped}, "
                      f"[{'red' if self.failed else 'green'}]failed {len(self.failed)}[/] "
                      f"of {total}")
        for source, reason in self.failed:
            console.print(f"  [red]x[/] {escape(source)}: {escape(reason)}")
        if self.interrupted is not None:
            import signal

            left = total - self.done - self.skipped - len(self.failed)
            console.print(f"[red]interrupted ({signal.Signals(self.interrupted).name})[/]: "
                          f"{left} not done; every written output is complete (rerun with "
                          "--skip-existing to do the rest)")


@dataclass(frozen=True)
class Rendering:
    """What each output shows: the cut-out, the mask, or the object over a background."""

    mask_only: bool = False
    background: Color | Image.Image | None = None
    crop: bool = False

    @property
    def transparent(self) -> bool:
        """True when outputs keep an alpha channel (a cut-out)."""
        return not self.mask_only and self.background is None

    def __call__(self, result: RemovalResult) -> Image.Image:
        return result.render(mask_only=self.mask_only, background=self.background,
                             crop=self.crop)


def parse_color_option(value: str | None) -> Color | None:
    """``--bg-color`` as an RGB tuple (``None`` when not given); a clean error otherwise."""
    if value is None:
        return None
    from s3od.compose import parse_color

    try:
        return parse_color(value)
    except ValueError as err:
        raise fail(str(err)) from None


def open_remover(model: str | None, **options: Any) -> Remover:
    """:func:`s3od.load_remover` with clean errors, and a banner saying what runs where."""
    from s3od.errors import S3ODError
    from s3od.loading import load_remover

    try:
        remover = load_remover(model, **options)
    except (S3ODError, ValueError, ImportError) as err:
        raise fail(str(err)) from None
    console.print(f"[dim]{remover.describe()}[/]")
    return remover
