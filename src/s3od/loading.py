"""One door to a remover: :func:`load_remover` picks the backend and builds it.

The CLI (photos and videos), the HTTP server, the Gradio demo and the Ray pipeline all load
their model here, so a model file, a precision or ``compile`` means the same everywhere.
Torch is imported only when the PyTorch backend is chosen.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from s3od.hub import ResolvedCheckpoint
    from s3od.remover import Remover
    from s3od.threads import ThreadChoice

BACKENDS = ("auto", "torch", "onnx")
#: Precisions an ONNX file accepts: it runs as it was exported (``auto`` means "as is").
ONNX_PRECISIONS = ("fp32", "auto")

def is_onnx_model(model: object) -> bool:
    """True for a path (or name) ending in ``.onnx``."""
    return isinstance(model, (str, os.PathLike)) and os.fspath(model).lower().endswith(".onnx")


def _backend_for(model: object, backend: str, precision: str, compile: bool) -> str:
    """The backend that will run ``model``, after checking it can honour the options."""
    choice = backend.lower()
    if choice not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if choice == "auto":
        onnx = is_onnx_model(model) or isinstance(model, (bytes, bytearray))
        choice = "onnx" if onnx else "torch"
    if choice == "onnx":
        if precision not in ONNX_PRECISIONS or compile:
            raise ValueError("--precision bf16/fp16 and --compile apply to PyTorch models; "
                             "an ONNX model runs as it was exported")
        if not isinstance(model, (str, os.PathLike, bytes, bytearray)):
            raise ValueError("the onnx backend needs an .onnx file (or its bytes)")
    elif isinstance(model, (bytes, bytearray)):
        raise ValueError("model bytes are an ONNX file; the torch backend needs a checkpoint")
    return choice


def load_remover(
    model: str | os.PathLike | bytes | ResolvedCheckpoint | None = None,
    *,
    backend: str = "auto",
    precision: str = "fp32",
    compile: bool = False,
    device: str | None = None,
    image_size: int | None = None,
    threads: int | None = None,
    workers: int = 1,
    preprocess: str | None = None,
) -> Remover:
    """The remover for ``model``, on the backend that can run it.

    Args:
        model: registry name, hub id, checkpoint file or folder (PyTorch); an ``.onnx`` file
            or its bytes (ONNX Runtime); a :class:`~s3od.hub.ResolvedCheckpoint` already in
            memory (see :func:`portable_model`). ``None`` is the default model.
        backend: ``"auto"`` (ONNX Runtime for ONNX files and bytes, PyTorch otherwise),
            ``"torch"`` or ``"onnx"``.
        precision: ``fp32``, ``bf16``, ``fp16`` or ``auto`` (PyTorch, see
            :class:`~s3od.predictor.BackgroundRemoval`); an ONNX file runs as it was exported,
            so it takes only ``fp32`` and ``auto``.
        compile: ``torch.compile`` the model (PyTorch only).
        device: ``cpu``, ``cuda``, ``cuda:N`` (both backends) or ``mps`` (PyTorch); ``None``
            picks the best available for PyTorch and the CPU for ONNX Runtime.
        image_size: network input side; ``None`` uses the model's own.
        threads: CPU threads per forward pass: the ONNX Runtime session's, or PyTorch's
            (process-wide). ``None`` applies :func:`s3od.threads.choose_threads`: the CPUs
            this process may use (affinity mask, cgroup quota) shared by ``workers``; on
            PyTorch it only ever lowers the pool (a count set earlier, or by
            ``OMP_NUM_THREADS``, stays when it is smaller). The count in effect is recorded
            as ``remover.threads``.
        workers: model copies running forward passes at once on these CPUs (server
            processes, Ray actors on one node), for ``threads=None``.
        preprocess: for a foreign single-mask ONNX model (rembg's ``u2net.onnx``,
            ``isnet-general-use.onnx``, BiRefNet ...), the family whose preprocessing it needs
            (:data:`s3od.foreign.FAMILIES`); ``None`` identifies it from the graph. s3od's own
            exports need none.

    Raises:
        ValueError: options the chosen backend cannot honour.
        s3od.ModelNotFoundError, s3od.CheckpointError: as the backend raises them.
    """
    from s3od.threads import choose_threads

    choice = choose_threads(threads, workers=workers)
    explicit, threads = threads is not None, choice.threads
    remover: Remover
    if _backend_for(model, backend, precision, compile) == "onnx":
        from s3od.foreign import open_onnx

        remover = open_onnx(cast("str | os.PathLike | bytes", model), preprocess=preprocess,
                            image_size=image_size, device=device, threads=threads)
        remover.threads = choice
        return remover
    if preprocess is not None:
        raise ValueError("preprocess= applies to foreign ONNX models (.onnx files) only")
    from s3od.predictor import BackgroundRemoval

    choice = _set_torch_threads(choice, explicit=explicit)
    # _backend_for refused bytes for this backend.
    remover = BackgroundRemoval(cast("str | os.PathLike | ResolvedCheckpoint | None", model),
                                image_size=image_size, device=device, precision=precision,
                                compile=compile)
    remover.threads = choice
    return remover


def _set_torch_threads(choice: ThreadChoice, *, explicit: bool) -> ThreadChoice:
    """Apply ``choice`` to PyTorch's process-wide pool; returns the count in effect.

    An explicit count is set as given. The policy's count only lowers the pool: torch sizes it
    from the cores it sees, which is too many in a container with a CPU quota, but a smaller
    count chosen by the program (``torch.set_num_threads``, ``OMP_NUM_THREADS``) stays.
    """
    import torch

    from s3od.threads import ThreadChoice

    if explicit:
        torch.set_num_threads(choice.threads)
        return choice
    current = torch.get_num_threads()
    if current < choice.threads:
        return ThreadChoice(current, f"set before loading, below the budget of "
                                     f"{choice.reason}")
    torch.set_num_threads(choice.threads)
    return choice


def portable_model(model: str | os.PathLike | None, *, backend: str = "auto",
                   precision: str = "fp32", compile: bool = False) -> bytes | ResolvedCheckpoint:
    """``model`` resolved once into something picklable that :func:`load_remover` takes.

    For workers that have neither the file nor access to the model hub (Ray actors): an ONNX
    file becomes its bytes, anything else the resolved PyTorch weights. The options are
    checked here as :func:`load_remover` would, so a bad one fails before any worker starts.
    """
    if _backend_for(model, backend, precision, compile) == "onnx":
        path = os.path.expanduser(os.fspath(cast("str | os.PathLike", model)))
        if not os.path.isfile(path):
            from s3od.errors import ModelNotFoundError

            raise ModelNotFoundError(f"ONNX model not found: {path}")
        with open(path, "rb") as fh:
            return fh.read()
    from s3od.hub import resolve

    return resolve(model)
