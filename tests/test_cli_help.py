"""`s3od --help` and every subcommand's help read well in an 80-column terminal (issue 23)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from typer.testing import CliRunner

WIDTH = 80
# typer's own value names (<list[str]>, <int range>, <bool> ...) and rich escapes (s3od\[edges]).
ODD = re.compile(r"<(?:list\[|int\b|str>|path>|bool>|float\b|tuple\[)|\\\[")


def _commands() -> list[str]:
    import typer.main

    from s3od.cli import app

    return sorted(typer.main.get_command(app).commands)


def _check(text: str, where: str) -> None:
    long = [line for line in text.splitlines() if len(line) > WIDTH]
    assert not long, f"{where}: lines over {WIDTH} columns:\n" + "\n".join(long)
    odd = ODD.findall(text)
    assert not odd, f"{where}: typer-style value names or escapes {odd}:\n{text}"


def test_top_level_help_from_the_installed_entry_point() -> None:
    env = {**os.environ, "COLUMNS": str(WIDTH)}
    proc = subprocess.run([sys.executable, "-m", "s3od.cli", "--help"], capture_output=True,
                          env=env, timeout=120)
    text = proc.stdout.decode()
    assert proc.returncode == 0, proc.stderr.decode()
    _check(text, "s3od --help")
    for name in _commands():  # every command, with its whole first sentence (none cut by ...)
        assert re.search(rf"^  {re.escape(name)}\s+\S", text, re.M), name
    assert "..." not in text.split("Commands:")[1]


@pytest.mark.parametrize("command", _commands())
def test_each_subcommand_help_fits_80_columns(command: str) -> None:
    from s3od.cli import app

    result = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": str(WIDTH)},
                                terminal_width=WIDTH)
    assert result.exit_code == 0, result.output
    _check(result.output, f"s3od {command} --help")
    assert "Usage: s3od " + command in result.output


def test_options_show_plain_value_names() -> None:
    from s3od.cli import app

    remove = CliRunner().invoke(app, ["remove", "--help"], env={"COLUMNS": str(WIDTH)},
                                terminal_width=WIDTH).output
    assert "Usage: s3od remove [OPTIONS] INPUTS..." in remove
    for shown in ("-o, --output PATH", "--image-size INT", "--threshold FLOAT",
                  "--preprocess FAMILY", "s3od[edges]"):
        assert shown in remove, shown
    export = CliRunner().invoke(app, ["export-onnx", "--help"], env={"COLUMNS": str(WIDTH)},
                                terminal_width=WIDTH).output
    assert "--verify-image PATH" in export and "[MODEL]" in export
