"""Command-line interface: thin commands over the Python API.

Each module below registers its commands on :data:`s3od.cli.app.app` and imports heavy
dependencies only inside the command bodies, so ``s3od --help`` stays fast.
"""

from __future__ import annotations

from s3od.cli import evaluate as _evaluate  # noqa: F401
from s3od.cli import export as _export  # noqa: F401
from s3od.cli import remove as _remove  # noqa: F401  (registers commands)
from s3od.cli import serve as _serve  # noqa: F401
from s3od.cli.app import app


def main() -> None:
    """Console-script entry point."""
    app()


__all__ = ["app", "main"]
