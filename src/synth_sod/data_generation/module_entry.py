"""``python -m synth_sod.data_generation.<step module>`` without the step importing the CLI.

The CLI (:mod:`synth_sod.data_generation.cli`) sits above the step modules and imports them;
a step module must never import the CLI back, or the two form an import circle (and the module
run with ``-m`` would be loaded twice: once as ``__main__``, once under its own name when the
CLI imports it). So a step module's ``__main__`` block hands over to a fresh interpreter that
runs ``python -m synth_sod.data_generation <step> <same arguments>``, which is exactly
``s3od-data <step>``. This module imports nothing from the pipeline.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import NoReturn

PACKAGE = "synth_sod.data_generation"


def step_argv(step: str, args: list[str] | None = None) -> list[str]:
    """The command line that runs subcommand ``step`` with ``args`` (default: this process's)."""
    return [sys.executable, "-m", PACKAGE, step, *(sys.argv[1:] if args is None else args)]


def run_as_step(step: str) -> NoReturn:
    """Replace this process with ``s3od-data <step>`` and the same arguments, cwd and env.

    POSIX keeps the process id (launchers such as SLURM and torchrun track it); elsewhere a
    child process runs and its exit status is passed on.
    """
    argv = step_argv(step)
    sys.stdout.flush()
    sys.stderr.flush()
    if os.name == "posix":
        os.execv(sys.executable, argv)
    raise SystemExit(subprocess.call(argv))  # pragma: no cover - non-POSIX
