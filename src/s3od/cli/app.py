"""The typer application every command module registers on."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import typer
import typer.core
from rich.console import Console

if TYPE_CHECKING:
    from rich.progress import Progress, ProgressColumn

#: Value names shown in help, by typer's type label (it prints ``<int range>``,
#: ``<list[str]>``; these are the names people know from other command-line tools).
_METAVARS = {"int": "INT", "int range": "INT", "float": "FLOAT", "float range": "FLOAT",
             "path": "PATH", "file": "FILE", "directory": "DIR", "str": "TEXT"}


class _PlainArgument(typer.core.TyperArgument):
    """An argument shown as ``INPUTS...`` / ``[MODEL]`` (typer writes ``{inputs}...``)."""

    def _usage_display_name(self) -> str:
        name = self.metavar or self.name.upper()
        if self.nargs != 1:
            name += "..."
        return name if self.required else f"[{name}]"

    def _rich_display_name(self) -> str:
        return self._usage_display_name()

    def display_type_rich(self, ctx: Any) -> str | None:
        return None


class _PlainOption(typer.core.TyperOption):
    """An option shown as ``--image-size INT`` rather than ``--image-size <int range>``."""

    def display_type_rich(self, ctx: Any) -> str | None:
        if self.metavar is not None or self.is_flag:
            return self.metavar
        label = self.display_type(ctx).strip("<>").lower()
        if label.startswith("list[") and label.endswith("]"):  # a repeatable option
            label = label[5:-1]
        return _METAVARS.get(label, "VALUE")


class _PlainGroup(typer.core.TyperGroup):
    """The s3od command group: every command's parameters read as above in ``--help``."""

    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        for command in self.commands.values():
            for param in command.params:
                if type(param) is typer.core.TyperArgument:
                    param.__class__ = _PlainArgument
                elif type(param) is typer.core.TyperOption:
                    param.__class__ = _PlainOption

    def format_commands(self, ctx: Any, formatter: Any) -> None:
        """Each command with its whole first paragraph, wrapped (click cuts it to fit)."""
        rows = []
        for name in self.list_commands(ctx):
            command = self.get_command(ctx, name)
            if command is None or command.hidden:
                continue
            text = command.short_help or (command.help or "").split("\n\n")[0]
            rows.append((name, " ".join(text.split())))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


# Plain help (no rich panels): at 80 columns rich squeezed option help into a narrow column.
app = typer.Typer(
    name="s3od",
    help="Salient object detection and background removal.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    cls=_PlainGroup,
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
