"""``torch.load`` for checkpoint files of any origin: ``weights_only=True`` plus a short list of
extra classes a Lightning checkpoint legitimately holds.

Pickle can call any importable function while it reads a file, so a ``.pt``/``.ckpt`` from the
internet could run code when read by an unrestricted ``torch.load``. Every loader in the
repository (the library, training resume and warm start, export, the evaluation stage) goes
through :func:`load_torch_checkpoint` instead, which refuses any global outside
:func:`checkpoint_safe_globals` with an :class:`~s3od.errors.UnsafeCheckpointError` before
the object is built.

The allow-list is what a real training run writes, found by saving Lightning checkpoints from
this project's trainer and from configs kept as omegaconf objects: omegaconf containers and
their value nodes (``save_hyperparameters`` of a ``DictConfig``), the ``typing`` markers and
builtin types those nodes record, and ``collections.defaultdict``. None of these runs code of
the file's choosing when rebuilt.
"""

from __future__ import annotations

import collections
import os
import pickle
import typing
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from s3od.errors import CheckpointError, ModelNotFoundError, UnsafeCheckpointError


def checkpoint_safe_globals() -> list[Any]:
    """The extra globals allowed on top of torch's ``weights_only`` defaults."""
    # omegaconf nodes record their key and value types: builtins and unsubscripted typing
    # markers, which pickle by name and do nothing when looked up.
    allowed: list[Any] = [collections.defaultdict, dict, list, int, float, str, bool]
    allowed += [getattr(typing, name) for name in ("Any", "Dict", "List", "Tuple", "Optional",
                                                   "Union")]
    try:
        from omegaconf import DictConfig, ListConfig, nodes
        from omegaconf.base import ContainerMetadata, Metadata
    except ImportError:  # no omegaconf: nothing can have pickled its objects for us to read
        return allowed
    allowed += [DictConfig, ListConfig, ContainerMetadata, Metadata, nodes.AnyNode,
                nodes.IntegerNode, nodes.FloatNode, nodes.StringNode, nodes.BooleanNode]
    return allowed


@contextmanager
def checkpoint_globals() -> Iterator[None]:
    """Allow :func:`checkpoint_safe_globals` for ``weights_only`` loads inside the block (e.g.
    around Lightning's own resume, which calls ``torch.load`` itself)."""
    import torch

    with torch.serialization.safe_globals(checkpoint_safe_globals()):
        yield


def unsafe_reason(err: BaseException) -> str:
    """The line of torch's refusal that names the offending global (its message is long)."""
    text = str(err)
    for line in text.splitlines():
        if "Unsupported global" in line or "Can only" in line:
            return line.strip().split(" was not an allowed global")[0]
    for line in text.splitlines():
        if "WeightsUnpickler error" in line:
            return line.strip()
    return text.splitlines()[0][:200] if text else type(err).__name__


def refused(path: str | os.PathLike, err: BaseException) -> UnsafeCheckpointError:
    """The typed error for a ``weights_only`` refusal of ``path``."""
    return UnsafeCheckpointError(
        f"refusing to load {os.fspath(path)}: its pickle asks for something outside the "
        f"checkpoint allow-list ({unsafe_reason(err)}); nothing in it was run. Only tensors, plain "
        "containers and omegaconf configs are read from .pt/.ckpt files")


def load_torch_checkpoint(path: str | os.PathLike, *, map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)`` with the checkpoint allow-list.

    Raises:
        ModelNotFoundError: ``path`` is not a file.
        UnsafeCheckpointError: the pickle names a global outside the allow-list (never run).
        CheckpointError: the file is not a readable torch checkpoint.
    """
    import torch

    if not os.path.isfile(path):
        raise ModelNotFoundError(f"checkpoint not found: {os.fspath(path)}")
    try:
        with checkpoint_globals():
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if is_refusal(err):
            raise refused(path, err) from None
        raise CheckpointError(f"cannot read checkpoint {os.fspath(path)}: not a torch "
                              f"checkpoint ({_first_line(err)})") from None
    except Exception as err:  # a zip that is not torch's, a truncated file, a bad storage
        raise CheckpointError(f"cannot read checkpoint {os.fspath(path)}: "
                              f"{type(err).__name__}: {_first_line(err)}") from err


def is_refusal(err: BaseException) -> bool:
    """True when ``err`` is torch's ``weights_only`` unpickler refusing something."""
    text = str(err)
    return (isinstance(err, pickle.UnpicklingError) and "WeightsUnpickler error" in text
            and "Unsupported operand" not in text)  # an operand: bytes that are not a pickle


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:200] if text else type(err).__name__
