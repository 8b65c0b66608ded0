"""Command-line interface: thin commands over the Python API.

Each module below registers its commands on :data:`s3od.cli.app.app` and imports heavy
dependencies only inside the command bodies, so ``s3od --help`` stays fast.
"""

from __future__ import annotations

from s3od.cli import evaluate as _evaluate  # noqa: F401
from s3od.cli import export as _export  # noqa: F401
from s3od.cli import publish as _publish  # noqa: F401
from s3od.cli import remove as _remove  # noqa: F401  (registers commands)
from s3od.cli import serve as _serve  # noqa: F401
from s3od.cli.app import app


def main() -> None:
    """Console-script entry point.

    The ``s3od`` process is ours, so before any command imports torch its idle OpenMP threads
    are told to sleep rather than spin (:func:`s3od.threads.quiet_openmp`): spinning threads
    made s3od-lite several times slower whenever another process held a core (issue 24).
    """
    from s3od.threads import quiet_openmp

    quiet_openmp()
    app()


__all__ = ["app", "main"]
