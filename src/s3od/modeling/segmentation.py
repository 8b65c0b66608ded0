"""Full segmentation models: an encoder plus the shared DPT decoder (``seg_head``).

Forward contract (both models): ``images (B, 3, H, W)`` normalised floats ->
``{"pred_masks": (B, N, H', W') logits, "pred_iou": (B, N) logits,
"features": (B, F, H'/2, W'/2)}``.
For the ViT model ``H' = 16 * floor(H / 16)``; for the CNN model ``H' = H``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from s3od.modeling.dpt import DPTHead
from s3od.modeling.encoders.dinov3 import (
    build_dinov3,
    dinov3_features,
    load_dinov3_config,
    patch_size_of,
)
from s3od.modeling.encoders.efficientnet_lite import (
    EfficientNetLiteFeatures,
    load_imagenet_weights,
)

# Hidden-state indices taken from the encoder, by depth (index 0 = embedding output).
DEFAULT_LAYER_INDICES = {12: (2, 5, 8, 11), 24: (4, 11, 17, 23)}


class DPTSegmentation(nn.Module):
    """DINOv3 ViT + DPT decoder + multi-mask and IoU heads (the published S3OD model)."""

    size_multiple = 16

    def __init__(
        self,
        encoder_config: str | dict[str, Any] = "dinov3_vitb16",
        layer_indices: Sequence[int] | None = None,
        features: int = 256,
        out_channels: Sequence[int] = (256, 512, 1024, 1024),
        num_masks: int = 3,
        use_bn: bool = True,
        mask_upsample_features: int = 64,
        mask_inter_features: int = 32,
        iou_hidden: int = 64,
    ) -> None:
        super().__init__()
        config = load_dinov3_config(encoder_config)
        self.encoder = build_dinov3(config)
        if layer_indices is None:
            layer_indices = DEFAULT_LAYER_INDICES.get(config.num_hidden_layers, (2, 5, 8, 11))
        self.layer_indices = tuple(int(i) for i in layer_indices)
        self.patch_size = patch_size_of(config)
        self.num_masks = num_masks
        self.seg_head = DPTHead(
            config.hidden_size, features=features, out_channels=out_channels,
            num_masks=num_masks, use_bn=use_bn, reassemble=True,
            mask_upsample_features=mask_upsample_features,
            mask_inter_features=mask_inter_features, iou_hidden=iou_hidden,
        )

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = dinov3_features(self.encoder, images, self.layer_indices)
        gh, gw = feats[0].shape[-2:]
        return self.seg_head(feats, (gh * self.patch_size, gw * self.patch_size))


class LiteSegmentation(nn.Module):
    """EfficientNet-Lite (``encoder``: lite0, lite1, lite2) + the same decoder and heads, for fast
    CPU inference. ``refine_features > 0`` gives full-resolution masks refined on the photo
    (s3od-lite v6, see :class:`s3od.modeling.heads.RefinedMaskHead`)."""

    size_multiple = 32

    def __init__(
        self,
        features: int = 64,
        num_masks: int = 3,
        use_bn: bool = True,
        mask_upsample_features: int = 32,
        mask_inter_features: int = 16,
        iou_hidden: int = 64,
        pretrained_encoder: bool = False,
        mask_stride: int = 1,
        iou_head: str = "global",
        encoder: str = "lite0",
        refine_features: int = 0,
    ) -> None:
        super().__init__()
        self.encoder = EfficientNetLiteFeatures(encoder)
        if pretrained_encoder:
            load_imagenet_weights(self.encoder)
        self.num_masks = num_masks
        self.seg_head = DPTHead(
            self.encoder.feature_channels, features=features,
            out_channels=self.encoder.feature_channels, num_masks=num_masks, use_bn=use_bn,
            reassemble=False, mask_upsample_features=mask_upsample_features,
            mask_inter_features=mask_inter_features, iou_hidden=iou_hidden,
            mask_stride=mask_stride, iou_head=iou_head, refine_features=refine_features,
            skip_channels=self.encoder.stride2_channels if refine_features else 0,
        )

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.seg_head.refined:
            stride2, feats = self.encoder.forward_with_stride2(images)
            return self.seg_head(feats, images.shape[-2:], guides=(stride2, images))
        return self.seg_head(self.encoder(images), images.shape[-2:])
