"""The typer application every command module registers on."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer
from rich.console import Console

if TYPE_CHECKING:
    from rich.progress import Progress, ProgressColumn

app = typer.Typer(
    name="s3od",
    help="Salient object detection and background removal.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print a clean error (no traceback) and return the Exit to raise."""
    from rich.markup import escape

    console.print(f"[bold red]error:[/] {escape(message)}")
    return typer.Exit(code)


def progress_bar(*extra: ProgressColumn, disable: bool = False) -> Progress:
    """The CLI's one progress display (stderr): label, bar, done/total, ``extra`` columns,
    elapsed and remaining time. rich.progress is imported here, not at ``s3od --help``."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(TextColumn("[progress.description]{task.description}"), BarColumn(),
                    MofNCompleteColumn(), *extra, TimeElapsedColumn(), TextColumn("eta"),
                    TimeRemainingColumn(), console=console, disable=disable)
