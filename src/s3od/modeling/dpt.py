"""DPT-style decoder shared by every encoder: reassemble, fuse, then the mask and IoU heads.

Parameter names mirror the published S3OD checkpoint (``seg_head.projects.0`` ...), so the
published weights load with ``strict=True``. Every width is a constructor argument.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from s3od.modeling.heads import IoUHead, MaskStatisticsIoUHead, MultiMaskHead, RefinedMaskHead

#: Values of the decoder's ``iou_head`` argument (see :class:`DPTHead`).
IOU_HEADS = ("global", "mask_statistics")


class ResidualConvUnit(nn.Module):
    """Pre-activation residual unit: ``x + BN(conv(ReLU(BN(conv(ReLU(x))))))``."""

    def __init__(self, features: int, use_bn: bool = True) -> None:
        super().__init__()
        self.use_bn = use_bn
        self.conv1 = nn.Conv2d(features, features, 3, padding=1, bias=True)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1, bias=True)
        if use_bn:
            self.bn1 = nn.BatchNorm2d(features)
            self.bn2 = nn.BatchNorm2d(features)
        self.activation = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.activation(x))
        if self.use_bn:
            out = self.bn1(out)
        out = self.conv2(self.activation(out))
        if self.use_bn:
            out = self.bn2(out)
        return out + x


class FeatureFusionBlock(nn.Module):
    """Adds a skip feature to the coarser path, refines, resizes, then mixes with a 1x1 conv."""

    def __init__(self, features: int, use_bn: bool = True) -> None:
        super().__init__()
        self.resConfUnit1 = ResidualConvUnit(features, use_bn)
        self.resConfUnit2 = ResidualConvUnit(features, use_bn)
        self.out_conv = nn.Conv2d(features, features, 1, bias=True)

    def forward(
        self,
        x: torch.Tensor,
        skip: torch.Tensor | None = None,
        size: Sequence[int] | None = None,
        upsample: bool = True,
    ) -> torch.Tensor:
        if skip is not None:
            x = x + self.resConfUnit1(skip)
        x = self.resConfUnit2(x)
        if not upsample:
            pass
        elif size is None:
            x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        else:
            x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
        return self.out_conv(x)


class Scratch(nn.Module):
    """Channel unification (``layerN_rn``) and the four fusion blocks (``refinenetN``).

    The last block normally upsamples to stride 2; ``final_upsample=False`` keeps stride 4, which
    is what makes ``mask_stride=2`` cheap (every later layer runs on a quarter of the pixels).
    """

    # Registered with setattr below (their names are the published state-dict keys).
    refinenet1: FeatureFusionBlock
    refinenet2: FeatureFusionBlock
    refinenet3: FeatureFusionBlock
    refinenet4: FeatureFusionBlock

    def __init__(self, in_channels: Sequence[int], features: int, use_bn: bool = True,
                 final_upsample: bool = True) -> None:
        super().__init__()
        self.final_upsample = final_upsample
        for i, ch in enumerate(in_channels, start=1):
            setattr(self, f"layer{i}_rn", nn.Conv2d(ch, features, 3, padding=1, bias=False))
        for i in range(1, len(in_channels) + 1):
            setattr(self, f"refinenet{i}", FeatureFusionBlock(features, use_bn))

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        rn1, rn2, rn3, rn4 = (getattr(self, f"layer{i}_rn")(f) for i, f in enumerate(feats, 1))
        path4 = self.refinenet4(rn4, size=rn3.shape[2:])
        path3 = self.refinenet3(path4, rn3, size=rn2.shape[2:])
        path2 = self.refinenet2(path3, rn2, size=rn1.shape[2:])
        return self.refinenet1(path2, rn1, upsample=self.final_upsample)


def _reassemble_resize(channels: int, factor: float) -> nn.Module:
    """Per-level resampling of the patch grid: x4 / x2 up, identity, /2 down."""
    if factor >= 2:
        k = int(factor)
        return nn.ConvTranspose2d(channels, channels, kernel_size=k, stride=k, padding=0)
    if factor == 1:
        return nn.Identity()
    return nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=1)


class DPTHead(nn.Module):
    """Decoder + heads.

    ``reassemble=True`` is the ViT path: four same-resolution token maps are projected to
    ``out_channels`` and resampled to strides 4/8/16/32. ``reassemble=False`` is the CNN path:
    the encoder already gives strides 4/8/16/32 with ``out_channels`` channels.

    ``mask_stride=1`` (the published model) computes the candidate masks at full input
    resolution; ``mask_stride=2`` computes them at half resolution and upsamples the logits,
    about 4x less work after the last fusion block for the same parameters (s3od-lite uses it).

    ``iou_head="global"`` is the published IoU head (pooled image features only);
    ``"mask_statistics"`` scores each candidate from its own map (s3od-lite v4).

    ``refine_features > 0`` (s3od-lite v6) replaces the mask head with :class:`RefinedMaskHead`:
    full-resolution masks guided by the encoder's stride-2 features (``skip_channels`` wide)
    and by the image; ``forward`` then needs ``guides=(stride2_features, image)``.
    """

    def __init__(
        self,
        in_channels: int | Sequence[int],
        features: int = 256,
        out_channels: Sequence[int] = (256, 512, 1024, 1024),
        num_masks: int = 3,
        use_bn: bool = True,
        reassemble: bool = True,
        mask_upsample_features: int = 64,
        mask_inter_features: int = 32,
        iou_hidden: int = 64,
        resize_factors: Sequence[float] = (4, 2, 1, 0.5),
        mask_stride: int = 1,
        iou_head: str = "global",
        refine_features: int = 0,
        skip_channels: int = 0,
    ) -> None:
        super().__init__()
        if mask_stride not in (1, 2):
            raise ValueError(f"mask_stride must be 1 or 2, got {mask_stride}")
        if refine_features and (mask_stride != 2 or skip_channels <= 0):
            raise ValueError("refine_features needs mask_stride=2 and the encoder's stride-2 "
                             "channels (skip_channels)")
        self.reassemble = reassemble
        if reassemble:
            assert isinstance(in_channels, int)
            self.projects = nn.ModuleList(nn.Conv2d(in_channels, c, 1) for c in out_channels)
            self.resize_layers = nn.ModuleList(
                _reassemble_resize(c, f) for c, f in zip(out_channels, resize_factors, strict=True)
            )
        self.scratch = Scratch(out_channels, features, use_bn, final_upsample=mask_stride == 1)
        self.refined = refine_features > 0
        self.mask_head: nn.Module = (
            RefinedMaskHead(features, num_masks, skip_channels,
                            upsample_features=mask_upsample_features,
                            inter_features=mask_inter_features,
                            refine_features=refine_features)
            if self.refined else
            MultiMaskHead(features, num_masks, inter_features=mask_inter_features,
                          upsample_features=mask_upsample_features,
                          upsample_logits=mask_stride != 1))
        if iou_head not in IOU_HEADS:
            raise ValueError(f"iou_head must be one of {sorted(IOU_HEADS)}, got {iou_head!r}")
        self.iou_from_masks = iou_head == "mask_statistics"
        self.classifier_head: nn.Module = (
            MaskStatisticsIoUHead(num_masks, hidden=iou_hidden) if self.iou_from_masks
            else IoUHead(features, num_masks, hidden=iou_hidden))

    def forward(
        self, feats: Sequence[torch.Tensor], output_size: Sequence[int],
        guides: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        if self.reassemble:
            feats = [
                resize(project(f))
                for f, project, resize in zip(feats, self.projects, self.resize_layers, strict=True)
            ]
        path1 = self.scratch(feats)
        if self.refined:
            if guides is None:
                raise ValueError("a refined mask head needs guides=(stride2_features, image)")
            masks = self.mask_head(path1, *guides)
        else:
            masks = self.mask_head(path1, output_size)
        iou = self.classifier_head(masks if self.iou_from_masks else path1)
        return {"pred_masks": masks, "pred_iou": iou, "features": path1}
