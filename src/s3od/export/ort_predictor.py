"""Background removal on ONNX Runtime, without PyTorch.

:class:`OnnxBackgroundRemoval` mirrors :class:`s3od.predictor.BackgroundRemoval` (same methods,
same :class:`~s3od.result.RemovalResult`) on a file written by :func:`s3od.export.export_onnx`.
Pre- and post-processing are the numpy twins in :mod:`s3od.transforms`, so the pixels the
network sees are bit-identical to the torch path. This module never imports torch: it is what
a slim deployment (``pip install s3od[onnx]`` plus onnxruntime, no GPU build of torch) runs.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from s3od.errors import CheckpointError, ModelNotFoundError
from s3od.imageio import ImageInput, load_image
from s3od.result import RemovalResult
from s3od.transforms import (
    crop_padding,
    preprocess_arrays,
    unletterbox_array,
    validate_image_size,
)

if TYPE_CHECKING:
    import onnxruntime

    from s3od.refine import Postprocess, RefineConfig

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


class OnnxBackgroundRemoval:
    """Salient-object cut-outs with ONNX Runtime.

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

    def __init__(self, model: str | os.PathLike | bytes, image_size: int | None = None,
                 device: str | None = None, threads: int | None = None) -> None:
        ort = _onnxruntime()
        if isinstance(model, (bytes, bytearray)):
            source, payload = "in-memory ONNX model", bytes(model)
        else:
            path = Path(model).expanduser()
            if not path.is_file():
                raise ModelNotFoundError(f"ONNX model not found: {path}")
            source, payload = str(path), str(path)
        providers = providers_for(device)
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = int(threads)
        try:
            self.session: onnxruntime.InferenceSession = ort.InferenceSession(
                payload, sess_options=options, providers=providers)
        except Exception as err:  # onnxruntime raises its own unrelated exception types
            raise CheckpointError(f"cannot load ONNX model {source}: "
                                  f"{str(err).splitlines()[0][:300]}") from err
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = {o.name for o in self.session.get_outputs()}
        if INPUT_NAME not in inputs or not set(OUTPUT_NAMES) <= outputs:
            raise CheckpointError(
                f"{source} is not an s3od ONNX model: expected input {INPUT_NAME!r} and outputs "
                f"{', '.join(OUTPUT_NAMES)}; found inputs {sorted(inputs)}, outputs "
                f"{sorted(outputs)}")
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

    def _result(self, rgb: np.ndarray, masks: np.ndarray, ious: np.ndarray,
                threshold: float) -> RemovalResult:
        return RemovalResult.from_candidates(rgb, masks, ious, threshold)

    def remove_background(self, image: ImageInput, threshold: float = 0.5, *,
                          refine: str | RefineConfig = "none", fg_estimate: bool = False,
                          full_size_candidates: bool = True) -> RemovalResult:
        """Cut out the salient object of one image (PIL, numpy, path or bytes).

        The keyword options are those of :meth:`BackgroundRemoval.remove_background`.
        """
        rgb = load_image(image)
        return next(self._flush([rgb], threshold,
                                _postprocess(refine, fg_estimate, full_size_candidates)))

    def iter_remove_backgrounds(self, images: Iterable[ImageInput], batch_size: int = 4,
                                threshold: float = 0.5, *, refine: str | RefineConfig = "none",
                                fg_estimate: bool = False, full_size_candidates: bool = True
                                ) -> Iterator[RemovalResult]:
        """Lazily process a stream of images, one ONNX Runtime call per ``batch_size`` images."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        post = _postprocess(refine, fg_estimate, full_size_candidates)
        pending: list[np.ndarray] = []
        for image in images:
            pending.append(load_image(image))
            if len(pending) == batch_size:
                yield from self._flush(pending, threshold, post)
                pending = []
        if pending:
            yield from self._flush(pending, threshold, post)

    def _flush(self, rgbs: list[np.ndarray], threshold: float,
               post: Postprocess | None = None) -> Iterator[RemovalResult]:
        if post is None:
            for rgb, (masks, ious) in zip(rgbs, self.predict_arrays(rgbs), strict=True):
                yield self._result(rgb, masks, ious, threshold)
            return
        predictions = self.predict_arrays(rgbs, full_resolution=not post.needs_low_res)
        for rgb, (masks, ious) in zip(rgbs, predictions, strict=True):
            yield RemovalResult(**post.finish(rgb, masks, ious), threshold=threshold)

    def remove_backgrounds(self, images: Iterable[ImageInput], batch_size: int = 4,
                           threshold: float = 0.5, *, refine: str | RefineConfig = "none",
                           fg_estimate: bool = False, full_size_candidates: bool = True
                           ) -> list[RemovalResult]:
        """Process many images, one ONNX Runtime call per batch."""
        return list(self.iter_remove_backgrounds(
            images, batch_size, threshold, refine=refine, fg_estimate=fg_estimate,
            full_size_candidates=full_size_candidates))

    def __repr__(self) -> str:
        return (f"OnnxBackgroundRemoval(model={self.model_name!r}, "
                f"image_size={self.image_size}, device='{self.device}')")


def _postprocess(refine: str | RefineConfig, fg_estimate: bool,
                 full_size_candidates: bool) -> Postprocess | None:
    """``None`` (the published path) unless an edge or memory option is set."""
    if isinstance(refine, str) and refine == "none" and not fg_estimate and full_size_candidates:
        return None
    from s3od.refine import postprocess

    return postprocess(refine, fg_estimate, full_size_candidates)


def is_onnx_model(model: object) -> bool:
    """True for a path (or name) ending in ``.onnx``."""
    return isinstance(model, (str, os.PathLike)) and os.fspath(model).lower().endswith(".onnx")


def load_remover(model: str | os.PathLike | None = None, image_size: int | None = None,
                 device: str | None = None, *, precision: str = "fp32",
                 compile: bool = False) -> Any:
    """The right predictor for ``model``: ONNX Runtime for ``*.onnx`` files, PyTorch otherwise.

    Both expose ``predict_arrays``, ``remove_background(s)`` and return ``RemovalResult``; torch
    is imported only for the PyTorch case. ``precision`` and ``compile`` are PyTorch options
    (see :class:`~s3od.predictor.BackgroundRemoval`); an ONNX file runs as it was exported, so
    only ``fp32``/``auto`` are accepted for it.
    """
    if is_onnx_model(model):
        if precision not in ("fp32", "auto") or compile:
            raise ValueError("--precision bf16/fp16 and --compile apply to PyTorch models; "
                             "an ONNX model runs as it was exported")
        return OnnxBackgroundRemoval(model, image_size=image_size, device=device)  # type: ignore[arg-type]
    from s3od.predictor import BackgroundRemoval

    return BackgroundRemoval(model, image_size=image_size, device=device, precision=precision,
                             compile=compile)
