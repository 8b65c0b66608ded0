"""A content-dependent stand-in for a trained network, for tests of everything around it.

Random-weight models give an almost constant mask, which cannot show whether an alpha plane
or a smoothing step carries the right values. This module follows the model contract
(normalised images in, mask logits and IoU logits out) with a fixed rule instead: bright
pixels are foreground. The predictor's whole pre/post-processing path still runs.
"""

from __future__ import annotations

import torch
from torch import nn


class LumaModel(nn.Module):
    """Three candidates from the input's brightness; candidate 0 always scores best."""

    size_multiple = 32

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        luma = images.mean(dim=1, keepdim=True)
        logits = torch.cat([4.0 * luma, -4.0 * luma, 2.0 * luma + 1.0], dim=1)
        iou = torch.tensor([2.0, 0.0, -1.0], device=images.device).expand(images.shape[0], 3)
        return {"pred_masks": logits, "pred_iou": iou}


def luma_remover(image_size: int = 64):
    from s3od import BackgroundRemoval

    return BackgroundRemoval.from_model(LumaModel(), image_size=image_size, device="cpu")
