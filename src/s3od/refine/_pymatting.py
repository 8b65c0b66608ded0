"""Lazy access to pymatting (the ``edges`` extra) and a guard for numba's thread pool."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from s3od.errors import MissingDependencyError


def pymatting() -> Any:
    """The ``pymatting`` module, or a typed error that says how to install it."""
    try:
        import pymatting as module
    except ImportError as err:
        raise MissingDependencyError(
            "edge refinement needs pymatting: pip install 's3od[edges]'") from err
    return module


@contextlib.contextmanager
def quiet_solver() -> Iterator[None]:
    """Serial numba (see :func:`serial_numba`), no warnings, and no pymatting ``print``s (it
    prints preconditioner advice to stdout, which would corrupt ``s3od remove -o -``)."""
    import io
    import warnings

    with serial_numba(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


@contextlib.contextmanager
def serial_numba() -> Iterator[None]:
    """Run pymatting's numba kernels on the calling thread only.

    pymatting's resampling kernels are ``parallel=True``; each of the many small calls made
    per tile then waits on a thread-pool barrier, which costs more than the work itself
    (0.6 s versus 1 ms for a 64 px tile on a busy 2-core machine, measured in
    benchmarks/edges.py). The solvers are serial anyway.
    """
    import numba

    previous = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        yield
    finally:
        numba.set_num_threads(previous)
