"""s3od: salient object detection and background removal."""

from s3od.errors import CheckpointError, InvalidImageError, ModelNotFoundError, S3ODError
from s3od.predictor import BackgroundRemoval, RemovalResult
from s3od.registry import ModelSpec, list_models

__version__ = "0.2.0"


def load_model(model_id=None):
    """Build the ``torch.nn.Module`` for ``model_id`` with its weights (no predictor)."""
    from s3od.hub import build_from_checkpoint, resolve

    return build_from_checkpoint(resolve(model_id))


__all__ = [
    "BackgroundRemoval",
    "CheckpointError",
    "InvalidImageError",
    "ModelNotFoundError",
    "ModelSpec",
    "RemovalResult",
    "S3ODError",
    "__version__",
    "list_models",
    "load_model",
]
