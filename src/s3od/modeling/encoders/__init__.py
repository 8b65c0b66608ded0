"""Backbones: DINOv3 ViT (transformers) and EfficientNet-Lite0/1/2."""

from s3od.modeling.encoders.dinov3 import build_dinov3, dinov3_features, load_dinov3_config
from s3od.modeling.encoders.efficientnet_lite import (
    EfficientNetLite0Features,
    EfficientNetLiteFeatures,
)

__all__ = [
    "EfficientNetLite0Features",
    "EfficientNetLiteFeatures",
    "build_dinov3",
    "dinov3_features",
    "load_dinov3_config",
]
