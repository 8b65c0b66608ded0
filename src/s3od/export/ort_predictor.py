"""Background removal on ONNX Runtime, without PyTorch.

:class:`OnnxBackgroundRemoval` is the ONNX Runtime backend of :class:`s3od.remover.Remover` (the
same methods and :class:`~s3od.result.RemovalResult` as :class:`s3od.predictor.BackgroundRemoval`)
on a file written by :func:`s3od.export.export_onnx`.
Pre- and post-processing are the numpy twins in :mod:`s3od.transforms`, so the pixels the
network sees are bit-identical to the torch path. This module never imports torch: it is what
a slim deployment (``pip install s3od[onnx]`` plus onnxruntime, no GPU build of torch) runs.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from s3od.errors import CheckpointError, ModelNotFoundError
from s3od.remover import Remover
from s3od.threads import ort_session_options
from s3od.transforms import (
    crop_padding,
    preprocess_arrays,
    unletterbox_array,
    validate_image_size,
)

if TYPE_CHECKING:
    import onnxruntime

INPUT_NAME = "images"
OUTPUT_NAMES = ("pred_masks", "pred_iou")
# Keys of the ONNX file's metadata_props written at export and read here.
META_PREFIX = "s3od."
ONNX_EXTRA_HINT = "install the ONNX extra: pip install 's3od[onnx]'"


def _onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as err:
        raise ImportError(f"ONNX Runtime is not installed; {ONNX_EXTRA_HINT}") from err
    return onnxruntime


def providers_for(device: str | None) -> list[Any]:
    """ONNX Runtime providers for a device string: ``None``/``"cpu"``, ``"cuda"``, ``"cuda:1"``.

    Asking for CUDA when the installed onnxruntime has no CUDA provider is an error, not a
    silent fallback to the CPU.
    """
    if device is None or device == "cpu":
        return ["CPUExecutionProvider"]
    if device == "cuda" or device.startswith("cuda:"):
        available = _onnxruntime().get_available_providers()
        if "CUDAExecutionProvider" not in available:
            raise ValueError(f"device {device!r} needs onnxruntime-gpu (CUDAExecutionProvider); "
                             f"available providers: {', '.join(available)}")
        index = int(device.split(":", 1)[1]) if ":" in device else 0
        return [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
    raise ValueError(f"unsupported device {device!r} for ONNX Runtime (cpu, cuda, cuda:N)")


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Overflow-free logistic function in float32."""
    x = x.astype(np.float32, copy=False)
    return (np.float32(0.5) * (np.tanh(np.float32(0.5) * x) + np.float32(1.0))).astype(np.float32)


def _source_name(model: str | os.PathLike | bytes | bytearray) -> str:
    if isinstance(model, (bytes, bytearray)):
        return "in-memory ONNX model"
    return str(Path(model).expanduser())


def open_session(model: str | os.PathLike | bytes | bytearray, device: str | None = None,
                 threads: int | None = None) -> tuple[onnxruntime.InferenceSession, str]:
    """An ONNX Runtime session (thread policy's options, ``device``'s providers) for a path or
    bytes -> ``(session, source)``; a missing file or an unloadable model is a typed error."""
    ort = _onnxruntime()
    source = _source_name(model)
    payload: str | bytes  # what the session reads: a path or the model's bytes
    if isinstance(model, (bytes, bytearray)):
        payload = bytes(model)
    else:
        if not Path(source).is_file():
            raise ModelNotFoundError(f"ONNX model not found: {source}")
        payload = source
    try:
        session = ort.InferenceSession(payload, sess_options=ort_session_options(ort, threads),
                                       providers=providers_for(device))
    except Exception as err:  # onnxruntime raises its own unrelated exception types
        raise CheckpointError(f"cannot load ONNX model {source}: "
                              f"{str(err).splitlines()[0][:300]}") from err
    return session, source


class OnnxBackgroundRemoval(Remover):
    """Salient-object cut-outs with ONNX Runtime (the removal methods come from
    :class:`s3od.remover.Remover`).

    Args:
        model: path of an ``.onnx`` file from ``s3od export-onnx``, or its bytes (e.g. from an
            object store).
        image_size: must equal the size the file was exported at when its spatial size is fixed
            (the default export); ``None`` reads it from the file.
        device: ``"cpu"`` (default), ``"cuda"`` or ``"cuda:N"`` (needs onnxruntime-gpu).
        threads: intra-op threads; ``None`` lets ONNX Runtime use every core.

    Example:
        >>> remover = OnnxBackgroundRemoval("s3od-lite.onnx")  # doctest: +SKIP
        >>> remover.remove_background("cat.jpg").rgba_image.save("cat.png")  # doctest: +SKIP
    """

    backend = "onnx"

    def __init__(self, model: str | os.PathLike | bytes, image_size: int | None = None,
                 device: str | None = None, threads: int | None = None, *,
                 session: onnxruntime.InferenceSession | None = None) -> None:
        # ``session``: already opened by s3od.foreign.open_onnx to look at the graph
        if session is None:
            session, source = open_session(model, device, threads)
        else:
            source = _source_name(model)
        self.session: onnxruntime.InferenceSession = session
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = {o.name for o in self.session.get_outputs()}
        if INPUT_NAME not in inputs or not set(OUTPUT_NAMES) <= outputs:
            raise CheckpointError(
                f"{source} is not an s3od ONNX model: expected input {INPUT_NAME!r} and outputs "
                f"{', '.join(OUTPUT_NAMES)}; found inputs {sorted(inputs)}, outputs "
                f"{sorted(outputs)} (s3od.load_remover runs foreign single-mask models)")
        meta = {k[len(META_PREFIX):]: v for k, v in
                self.session.get_modelmeta().custom_metadata_map.items()
                if k.startswith(META_PREFIX)}
        self.metadata = meta
        self.model_name = meta.get("name", Path(source).stem)
        self.source = source
        self.device = self.session.get_providers()[0]
        multiple = int(meta.get("size_multiple", 16))
        side = inputs[INPUT_NAME].shape[-1]
        fixed = side if isinstance(side, int) else None
        size = image_size or fixed or int(meta.get("image_size", 0)) or 1024
        if fixed is not None and size != fixed:
            raise ValueError(f"{source} was exported for {fixed}px inputs; re-export with "
                             f"`s3od export-onnx --image-size {size}` to run at {size}px")
        self.image_size = validate_image_size(size, multiple)

    # ------------------------------------------------------------------ core

    def predict_arrays(self, images: Sequence[np.ndarray], *, full_resolution: bool = True
                       ) -> list[tuple[np.ndarray, np.ndarray]]:
        """One ONNX Runtime call over RGB uint8 arrays -> ``[(all_masks (N,H,W), ious (N,))]``.

        ``full_resolution=False`` returns the masks at the network's resolution with the padding
        cut off, as :meth:`BackgroundRemoval.predict_arrays` does (for edge refinement).
        """
        batch, boxes = preprocess_arrays(images, self.image_size)
        masks, ious = self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: batch})
        probs, scores = sigmoid(masks), sigmoid(ious)
        if not full_resolution:
            return [(np.ascontiguousarray(crop_padding(probs[i], box)), scores[i])
                    for i, box in enumerate(boxes)]
        return [(unletterbox_array(probs[i], box), scores[i]) for i, box in enumerate(boxes)]

    def __repr__(self) -> str:
        return (f"OnnxBackgroundRemoval(model={self.model_name!r}, "
                f"image_size={self.image_size}, device='{self.device}')")
