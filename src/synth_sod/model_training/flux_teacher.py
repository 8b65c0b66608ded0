"""The FLUX-feature mask teacher (training only): ``FluxDPTSegmentation``.

Inputs are the image, four FLUX transformer feature maps (768 channels, one token per 16x16
patch) and two concept-attention maps (``category``, ``background``). At each decoder level the
FLUX features and concept maps are resized to the level, projected, concatenated and mixed
(``fusion_modules.i``); the fused map feeds the usual refinenets and heads.

Parameter names equal the published teacher checkpoint (``seg_head.fusion_modules.i...`` next
to the usual DPT keys), so published teacher weights load strictly.

With ``use_dino_features=False`` (the published configuration) the DINOv3 levels only set the
spatial sizes: the published code still ran the ViT-L encoder and left its parameters without
gradients (which breaks DDP unless ``find_unused_parameters``). Here the encoder is not built
in that case (``encoder`` is None: 303 M parameters, 1.2 GB of float32 weights plus their
optimizer state, never on the GPU), the level sizes are computed from the image size
(identical outputs), and the unused head projections are frozen and kept in the state dict.
Published checkpoints still load: their ``encoder.*`` weights are dropped on loading.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from s3od.architectures import register_architecture
from s3od.modeling.dpt import DPTHead
from s3od.modeling.encoders.dinov3 import (
    build_dinov3,
    dinov3_features,
    load_dinov3_config,
    load_pretrained_dinov3,
    patch_size_of,
)
from s3od.modeling.segmentation import DEFAULT_LAYER_INDICES


def _conv_bn(cin: int, cout: int, k: int, relu: bool = True) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, padding=k // 2), nn.BatchNorm2d(cout)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return layers


def _resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False,
                         antialias=True)


class FluxFeatureFusion(nn.Module):
    """One decoder level: FLUX features (+ concept maps, + optionally the DINO level) -> fused."""

    def __init__(self, features: int = 256, flux_dim: int = 768, use_flux_features: bool = True,
                 use_concept_maps: bool = True, use_dino_features: bool = False,
                 concept_channels: int = 2, concept_features: int = 128) -> None:
        super().__init__()
        self.use_flux_features = use_flux_features
        self.use_concept_maps = use_concept_maps
        self.use_dino_features = use_dino_features
        width = 0
        if use_flux_features:
            self.flux_projection = nn.Sequential(*_conv_bn(flux_dim, features, 1))
            width += features
        if use_concept_maps:
            self.concept_projection = nn.Sequential(
                *_conv_bn(concept_channels, concept_features, 3))
            width += concept_features
        if use_dino_features:
            self.vit_projection = nn.Sequential(*_conv_bn(features, features, 1))
            width += features
        if width == 0:
            raise ValueError("the teacher needs at least one of flux features, concept maps, "
                             "DINO features")
        self.fusion_conv = nn.Sequential(
            *_conv_bn(width, features, 3), *_conv_bn(features, features, 1, relu=False))
        self.final_conv = (nn.Conv2d(2 * features, features, 1) if use_dino_features
                           else nn.Identity())

    def forward(self, level: torch.Tensor | None, size: Sequence[int],
                flux: torch.Tensor | None, concepts: torch.Tensor | None) -> torch.Tensor:
        parts = []
        if self.use_flux_features:
            parts.append(self.flux_projection(_resize(flux, size)))
        if self.use_concept_maps:
            parts.append(self.concept_projection(_resize(concepts, size)))
        if self.use_dino_features:
            parts.append(self.vit_projection(level))
        fused = self.fusion_conv(torch.cat(parts, dim=1))
        if self.use_dino_features:
            return self.final_conv(torch.cat([level, fused], dim=1))
        return fused


class FluxDPTHead(DPTHead):
    """DPT head with a :class:`FluxFeatureFusion` per level between ``layerN_rn`` and fusion."""

    def __init__(self, in_channels: int, features: int = 256,
                 flux_feature_dims: Sequence[int] = (768, 768, 768, 768),
                 use_flux_features: bool = True, use_concept_maps: bool = True,
                 use_dino_features: bool = False, **kwargs) -> None:
        super().__init__(in_channels, features=features, **kwargs)
        self.fusion_modules = nn.ModuleList(
            FluxFeatureFusion(features, dim, use_flux_features, use_concept_maps,
                              use_dino_features)
            for dim in flux_feature_dims
        )
        self.use_dino_features = use_dino_features

    def forward_fused(self, feats: Sequence[torch.Tensor] | None,
                      sizes: Sequence[Sequence[int]], flux: Sequence[torch.Tensor | None],
                      concepts: torch.Tensor | None, output_size: Sequence[int]) -> dict:
        scratch = self.scratch
        levels: list[torch.Tensor | None] = [None] * 4
        if feats is not None:
            feats = [resize(project(f)) for f, project, resize
                     in zip(feats, self.projects, self.resize_layers, strict=True)]
            levels = [getattr(scratch, f"layer{i}_rn")(f) for i, f in enumerate(feats, 1)]
        fused = [fusion(level, size, f, concepts) for fusion, level, size, f
                 in zip(self.fusion_modules, levels, sizes, flux, strict=True)]
        rn1, rn2, rn3, rn4 = fused
        path4 = scratch.refinenet4(rn4, size=rn3.shape[2:])
        path3 = scratch.refinenet3(path4, rn3, size=rn2.shape[2:])
        path2 = scratch.refinenet2(path3, rn2, size=rn1.shape[2:])
        path1 = scratch.refinenet1(path2, rn1)
        return {
            "pred_masks": self.mask_head(path1, output_size),
            "pred_iou": self.classifier_head(path1),
            "features": path1,
        }


def _drop_encoder_weights(module: nn.Module, state_dict: dict, prefix: str, *_: object) -> None:
    """Load-time hook of a teacher built without its encoder: checkpoints written with the
    encoder (published, or trained before it was skipped) carry ``encoder.*`` weights that
    nothing here runs."""
    for key in [k for k in state_dict if k.startswith(prefix + "encoder.")]:
        del state_dict[key]


class FluxDPTSegmentation(nn.Module):
    """DINOv3 (ViT-L by default) + DPT head fused with FLUX features and concept maps."""

    size_multiple = 16

    def __init__(
        self,
        encoder_config: str | dict = "dinov3_vitl16",
        layer_indices: Sequence[int] | None = None,
        features: int = 256,
        out_channels: Sequence[int] = (256, 512, 1024, 1024),
        num_masks: int = 1,
        use_bn: bool = True,
        flux_feature_dims: Sequence[int] = (768, 768, 768, 768),
        use_concept_maps: bool = True,
        use_flux_features: bool = True,
        use_dino_features: bool = False,
    ) -> None:
        super().__init__()
        config = load_dinov3_config(encoder_config)
        self.encoder = build_dinov3(config) if use_dino_features else None
        if layer_indices is None:
            layer_indices = DEFAULT_LAYER_INDICES.get(config.num_hidden_layers, (2, 5, 8, 11))
        self.layer_indices = tuple(int(i) for i in layer_indices)
        self.patch_size = patch_size_of(config)
        self.num_masks = num_masks
        self.use_flux_features = use_flux_features
        self.use_concept_maps = use_concept_maps
        self.use_dino_features = use_dino_features
        self.seg_head = FluxDPTHead(
            config.hidden_size, features=features, flux_feature_dims=flux_feature_dims,
            use_flux_features=use_flux_features, use_concept_maps=use_concept_maps,
            use_dino_features=use_dino_features, out_channels=out_channels,
            num_masks=num_masks, use_bn=use_bn, reassemble=True,
        )
        if not use_dino_features:
            unused = [self.seg_head.projects, self.seg_head.resize_layers]
            unused += [getattr(self.seg_head.scratch, f"layer{i}_rn") for i in range(1, 5)]
            for module in unused:
                module.requires_grad_(False)
            self.register_load_state_dict_pre_hook(_drop_encoder_weights)
        # refinenet4 never receives a skip input, so its first residual unit is never used.
        self.seg_head.scratch.refinenet4.resConfUnit1.requires_grad_(False)

    def forward(
        self,
        images: torch.Tensor,
        transformer_features: Sequence[torch.Tensor] | None = None,
        concept_maps: Mapping[str, torch.Tensor] | torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        b = images.shape[0]
        gh, gw = images.shape[-2] // self.patch_size, images.shape[-1] // self.patch_size
        flux: list[torch.Tensor | None] = [None] * 4
        if self.use_flux_features:
            if transformer_features is None:
                raise ValueError("this teacher needs transformer_features")
            flux = [f.reshape(b, gh, gw, -1).permute(0, 3, 1, 2).float() if f.ndim == 3
                    else f.float() for f in transformer_features]
        concepts = None
        if self.use_concept_maps:
            if concept_maps is None:
                raise ValueError("this teacher needs concept_maps")
            if isinstance(concept_maps, Mapping):
                concept_maps = torch.stack(
                    [concept_maps["category"], concept_maps["background"]], dim=1)
            concepts = concept_maps.float()
        # Level sizes as the DPT reassemble produces them: x4, x2, x1 and a stride-2 conv.
        sizes = [(gh * 4, gw * 4), (gh * 2, gw * 2), (gh, gw), ((gh + 1) // 2, (gw + 1) // 2)]
        feats = None
        if self.use_dino_features:
            feats = dinov3_features(self.encoder, images, self.layer_indices)
        return self.seg_head.forward_fused(feats, sizes, flux, concepts,
                                           (gh * self.patch_size, gw * self.patch_size))


@register_architecture(
    "flux_teacher", image_size=1024, inference=False,
    module_type="synth_sod.model_training.flux_teacher.FluxDPTSegmentation",
    description="FLUX-feature mask teacher; needs FLUX features and concept maps, so no "
                "s3od predictor runs it (1024 px: the scale of FLUX's generated images)")
def _build_flux_teacher(*, pretrained: bool = False, encoder_name: str | None = None,
                        **config: Any) -> nn.Module:
    model = FluxDPTSegmentation(**config)
    if pretrained and encoder_name and model.encoder is not None:  # built with DINO features
        load_pretrained_dinov3(model.encoder, encoder_name)
    return model
