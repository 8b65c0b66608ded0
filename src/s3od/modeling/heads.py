"""Output heads: several candidate masks, and one predicted-IoU score per candidate."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class MultiMaskHead(nn.Module):
    """Upsamples decoder features x2 and predicts ``num_masks`` logit maps.

    Several candidates let the model express ambiguity (which object is "the" salient one);
    the IoU head then ranks them.
    """

    def __init__(
        self,
        features: int,
        num_masks: int,
        inter_features: int = 32,
        upsample_features: int = 64,
        upsample_logits: bool = False,
    ) -> None:
        super().__init__()
        self.upsample_logits = upsample_logits
        mid = features // 2
        self.output_conv1 = nn.Conv2d(features, mid, 3, padding=1)
        self.upsample_2x = nn.Sequential(
            nn.ConvTranspose2d(mid, upsample_features, 4, stride=2, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(upsample_features, upsample_features, 3, padding=1),
            nn.ReLU(inplace=True),
        )
        self.mask_heads = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(upsample_features, inter_features, 3, padding=1),
                nn.ReLU(inplace=True),
                nn.Conv2d(inter_features, 1, 1),
            )
            for _ in range(num_masks)
        )

    def forward(self, x: torch.Tensor, output_size: Sequence[int]) -> torch.Tensor:
        x = self.upsample_2x(self.output_conv1(x))
        size = (int(output_size[0]), int(output_size[1]))
        if self.upsample_logits:
            # Heads at the decoder's resolution, then only the few logit maps are resized.
            logits = torch.cat([head(x) for head in self.mask_heads], dim=1)
            if tuple(logits.shape[-2:]) == size:
                return logits
            return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        if tuple(x.shape[-2:]) != size:
            # The published model always lands exactly on `size` (the resize is an identity);
            # CNN encoders on sizes that are not multiples of 32 need a real resize.
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        return torch.cat([head(x) for head in self.mask_heads], dim=1)


class IoUHead(nn.Sequential):
    """Global-pool -> MLP -> one IoU logit per candidate mask (trained against soft IoU)."""

    def __init__(self, features: int, num_masks: int, hidden: int = 64) -> None:
        super().__init__(
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(1),
            nn.Linear(features, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, num_masks),
        )
