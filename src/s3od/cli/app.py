"""The typer application every command module registers on."""

from __future__ import annotations

import typer
from rich.console import Console

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
