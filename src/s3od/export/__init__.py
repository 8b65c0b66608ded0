"""ONNX export (:func:`export_onnx`) and the ONNX Runtime predictor (``OnnxBackgroundRemoval``).

Names resolve lazily: the runtime side must import without torch, the export side without
onnxruntime being loaded until it is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from s3od.export.exporter import ExportReport, OnnxExportError, export_onnx, verify_onnx
    from s3od.export.ort_predictor import OnnxBackgroundRemoval

_LAZY = {
    "ExportReport": "s3od.export.exporter",
    "OnnxExportError": "s3od.export.exporter",
    "export_onnx": "s3od.export.exporter",
    "verify_onnx": "s3od.export.exporter",
    "OnnxBackgroundRemoval": "s3od.export.ort_predictor",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 's3od.export' has no attribute {name!r}")


__all__ = [
    "ExportReport",
    "OnnxBackgroundRemoval",
    "OnnxExportError",
    "export_onnx",
    "verify_onnx",
]
