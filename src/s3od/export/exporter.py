"""Export s3od models to ONNX and check ONNX Runtime against PyTorch.

The graph holds the network only (``images (B, 3, S, S)`` normalised float32 ->
``pred_masks (B, N, S, S)`` logits, ``pred_iou (B, N)`` logits) with a dynamic batch axis; the
letterbox, normalisation, sigmoid and unletterbox stay in :mod:`s3od.transforms`, so there is one
copy of the geometry for both runtimes. Export uses torch's maintained exporter
(``torch.onnx.export(dynamo=True)``, which needs ``onnxscript``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from s3od.errors import S3ODError
from s3od.export.ort_predictor import (
    INPUT_NAME,
    META_PREFIX,
    ONNX_EXTRA_HINT,
    OUTPUT_NAMES,
    OnnxBackgroundRemoval,
    sigmoid,
)
from s3od.imageio import ImageInput, load_image

MIN_OPSET = 17
DEFAULT_OPSET = 18
DEFAULT_TOLERANCE = 1e-3


class OnnxExportError(S3ODError, RuntimeError):
    """The model could not be exported, or ONNX Runtime disagrees with PyTorch beyond tolerance."""


@dataclass
class ExportReport:
    """What :func:`export_onnx` wrote and how closely ONNX Runtime matches PyTorch."""

    path: Path
    model_name: str
    architecture: str
    image_size: int
    opset: int
    seconds: float
    size_bytes: int
    max_abs_diff: dict[str, float] = field(default_factory=dict)


class _GraphOutputs(torch.nn.Module):
    """The model with its dict output flattened to the two tensors the runtime needs."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model(images)
        return out["pred_masks"], out["pred_iou"]


def _require_onnx() -> None:
    missing = []
    for name in ("onnx", "onnxruntime", "onnxscript"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ImportError(f"ONNX export needs {', '.join(missing)}; {ONNX_EXTRA_HINT}")


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Hide the exporter's chatter (missing torchvision ops, tracing notes); errors still raise."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _resolve_module(model: str | os.PathLike | torch.nn.Module | None,
                    image_size: int | None) -> tuple[torch.nn.Module, str, str, int]:
    if isinstance(model, torch.nn.Module):
        from s3od.architectures import architecture_of

        family = architecture_of(model)
        if family is None:  # a custom module: named by its class, exported at 1024 px
            return model, type(model).__name__, type(model).__name__, image_size or 1024
        return model, family.name, family.name, image_size or family.image_size
    from s3od.hub import build_from_checkpoint, resolve

    resolved = resolve(model)
    return (build_from_checkpoint(resolved), resolved.name, resolved.architecture,
            image_size or resolved.image_size)


def _sample_images() -> list[np.ndarray]:
    """Two synthetic photos-like images (landscape and portrait) for a default smoke check."""
    out = []
    for h, w in ((300, 420), (400, 260)):
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        r = ((xx / w) * 200 + 30).astype(np.uint8)
        g = ((yy / h) * 180 + 40).astype(np.uint8)
        disk = (yy - h / 2) ** 2 + (xx - w / 2) ** 2 < (min(h, w) / 3) ** 2
        b = np.where(disk, 230, 60).astype(np.uint8)
        out.append(np.dstack([r, g, b]))
    return out


def verify_onnx(onnx_model: str | os.PathLike | OnnxBackgroundRemoval, model: torch.nn.Module,
                images: Sequence[ImageInput], image_size: int | None = None) -> dict[str, float]:
    """Max absolute differences between ONNX Runtime and PyTorch on ``images`` (one batch).

    Returns:
        ``network_masks`` / ``network_ious``: sigmoid outputs for the *same* input tensor (the
        export alone); ``masks`` / ``ious``: the full numpy pipeline of
        :class:`OnnxBackgroundRemoval` against :class:`~s3od.predictor.BackgroundRemoval`
        (export plus the numpy twins of the transforms), at the images' original sizes.
    """
    from s3od.predictor import BackgroundRemoval
    from s3od.transforms import preprocess_arrays

    runtime = (onnx_model if isinstance(onnx_model, OnnxBackgroundRemoval)
               else OnnxBackgroundRemoval(onnx_model, image_size=image_size))
    reference = BackgroundRemoval.from_model(model.eval(), image_size=runtime.image_size,
                                             device="cpu")
    rgbs = [load_image(image) for image in images]
    batch, _ = preprocess_arrays(rgbs, runtime.image_size)
    with torch.inference_mode():
        out = reference.model(torch.from_numpy(batch))
    ref_masks = torch.sigmoid(out["pred_masks"].float()).numpy()
    ref_ious = torch.sigmoid(out["pred_iou"].float()).numpy()
    ort_masks, ort_ious = runtime.session.run(list(OUTPUT_NAMES), {INPUT_NAME: batch})
    diffs = {
        "network_masks": float(np.abs(sigmoid(ort_masks) - ref_masks).max()),
        "network_ious": float(np.abs(sigmoid(ort_ious) - ref_ious).max()),
        "masks": 0.0,
        "ious": 0.0,
    }
    for (m_ort, i_ort), (m_pt, i_pt) in zip(runtime.predict_arrays(rgbs),
                                            reference.predict_arrays(rgbs), strict=True):
        diffs["masks"] = max(diffs["masks"], float(np.abs(m_ort - m_pt).max()))
        diffs["ious"] = max(diffs["ious"], float(np.abs(i_ort - i_pt).max()))
    return diffs


def _write_metadata(path: Path, opset: int, meta: dict[str, Any]) -> None:
    """Name the dynamic axis ``batch`` and store what the runtime needs in ``metadata_props``.

    Also checks the opset really written: the exporter falls back to its native opset, with
    only a log line, when it cannot convert a graph down to the one requested.
    """
    import onnx

    proto = onnx.load(str(path))
    written = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if written != opset:
        raise OnnxExportError(f"the exporter wrote opset {written} instead of the requested "
                              f"{opset} for this model; export with --opset {written}")
    for value in (*proto.graph.input, *proto.graph.output):
        dims = value.type.tensor_type.shape.dim
        if dims and dims[0].dim_param:
            dims[0].dim_param = "batch"
    del proto.metadata_props[:]
    for key, val in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = META_PREFIX + key, str(val)
    onnx.save(proto, str(path))
    onnx.checker.check_model(str(path))


def export_onnx(
    model: str | os.PathLike | torch.nn.Module | None,
    output: str | os.PathLike,
    *,
    image_size: int | None = None,
    opset: int = DEFAULT_OPSET,
    verify: bool = True,
    verify_images: Sequence[ImageInput] | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
) -> ExportReport:
    """Export a model to a single ``.onnx`` file with a dynamic batch axis.

    Args:
        model: registry name, hub id, checkpoint path (as :class:`BackgroundRemoval` takes) or
            an in-memory module. ``None`` is the default model.
        output: target ``.onnx`` path; written only after verification passed, so a failed
            export never leaves a file behind.
        image_size: square input side baked into the graph (``None``: the model's default).
        opset: ONNX opset, at least 17.
        verify: run ONNX Runtime against PyTorch on ``verify_images`` (default: two synthetic
            images) in one batch of several images, which also exercises the dynamic batch.
        tolerance: largest accepted difference of the mask probabilities.

    Example:
        >>> export_onnx("s3od-lite", "s3od-lite.onnx")  # doctest: +SKIP
    """
    _require_onnx()
    if opset < MIN_OPSET:
        raise ValueError(f"opset must be >= {MIN_OPSET}, got {opset}")
    output = Path(output)
    if output.suffix.lower() != ".onnx":
        raise ValueError(f"output must end in .onnx, got {output}")
    module, name, architecture, size = _resolve_module(model, image_size)
    from s3od.transforms import validate_image_size

    multiple = int(getattr(module, "size_multiple", 16))
    size = validate_image_size(size, multiple)
    module = module.eval().cpu()
    images = list(verify_images) if verify_images else _sample_images()

    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.part")
    start = time.perf_counter()
    try:
        example = torch.zeros(2, 3, size, size)
        with _quiet_exporter():
            program = torch.onnx.export(
                _GraphOutputs(module).eval(), (example,), None, dynamo=True,
                opset_version=opset, input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
                dynamic_shapes={INPUT_NAME: {0: torch.export.Dim.DYNAMIC}},
                external_data=False, verbose=False)
            if program is None:  # the legacy (non-dynamo) exporter returns None; not used here
                raise OnnxExportError("torch.onnx.export returned no program")
            program.save(str(tmp), external_data=False)
        _write_metadata(tmp, opset, {
            "name": name, "architecture": architecture, "image_size": size,
            "size_multiple": multiple, "num_masks": getattr(module, "num_masks", ""),
            "opset": opset, "version": _version(),
        })
        seconds = time.perf_counter() - start
        diffs: dict[str, float] = {}
        if verify:
            diffs = verify_onnx(tmp, module, images, size)
            worst = max(diffs["network_masks"], diffs["masks"])
            if not np.isfinite(worst) or worst > tolerance:
                raise OnnxExportError(
                    f"ONNX Runtime differs from PyTorch by {worst:.2e} (> tolerance "
                    f"{tolerance:.0e}) on the mask probabilities; nothing written")
        os.replace(tmp, output)
    except (ImportError, S3ODError):
        raise
    except Exception as err:  # exporter internals raise many unrelated types
        raise OnnxExportError(f"export of {name} failed: {type(err).__name__}: "
                              f"{str(err).splitlines()[0][:300] if str(err) else ''}") from err
    finally:
        tmp.unlink(missing_ok=True)
    return ExportReport(output, name, architecture, size, opset, seconds,
                        output.stat().st_size, diffs)


def _version() -> str:
    from s3od._version import __version__

    return __version__
