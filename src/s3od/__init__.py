"""s3od: salient object detection and background removal."""

from typing import TYPE_CHECKING

from s3od.errors import CheckpointError, InvalidImageError, ModelNotFoundError, S3ODError
from s3od.loading import load_remover
from s3od.registry import ModelSpec, list_models
from s3od.remover import Remover
from s3od.result import RemovalResult

if TYPE_CHECKING:
    from s3od.export.ort_predictor import OnnxBackgroundRemoval
    from s3od.predictor import BackgroundRemoval

from s3od._version import __version__


def load_model(model_id=None):
    """Build the ``torch.nn.Module`` for ``model_id`` with its weights (no predictor)."""
    from s3od.hub import build_from_checkpoint, resolve

    return build_from_checkpoint(resolve(model_id))


def __getattr__(name: str):
    """Import the predictors on first use: ``import s3od`` must not load torch or onnxruntime,
    so the ONNX Runtime path works where PyTorch is not installed."""
    if name == "BackgroundRemoval":
        from s3od.predictor import BackgroundRemoval

        return BackgroundRemoval
    if name == "OnnxBackgroundRemoval":
        from s3od.export.ort_predictor import OnnxBackgroundRemoval

        return OnnxBackgroundRemoval
    raise AttributeError(f"module 's3od' has no attribute {name!r}")


__all__ = [
    "BackgroundRemoval",
    "CheckpointError",
    "InvalidImageError",
    "ModelNotFoundError",
    "ModelSpec",
    "OnnxBackgroundRemoval",
    "RemovalResult",
    "Remover",
    "S3ODError",
    "__version__",
    "list_models",
    "load_model",
    "load_remover",
]
