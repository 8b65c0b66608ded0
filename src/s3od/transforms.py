"""Resize / pad / normalise and their exact inverses: the one preprocessing path.

The predictor, evaluation, training and the ONNX runtime all call these functions, so a model
sees the same pixels wherever it runs. The geometry follows the published S3OD predictor
(long side to ``image_size`` with bilinear, no antialias; symmetric zero padding to a square;
ImageNet normalisation) but, unlike it, also handles odd padding and extreme aspect ratios.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Letterbox:
    """Where an image went inside the square network input, to undo it exactly."""

    height: int
    width: int
    resized_height: int
    resized_width: int
    top: int
    bottom: int
    left: int
    right: int
    size: int


def validate_image_size(image_size: int, multiple: int = 16) -> int:
    """Network input side: a positive multiple of the encoder's stride."""
    if not isinstance(image_size, int) or image_size <= 0 or image_size % multiple:
        raise ValueError(
            f"image_size must be a positive multiple of {multiple}, got {image_size!r}")
    return image_size


def letterbox_geometry(height: int, width: int, size: int) -> Letterbox:
    """Long side -> ``size`` (short side truncated as published, at least 1 px), centred."""
    if height <= 0 or width <= 0:
        raise ValueError(f"image has no pixels ({width}x{height})")
    aspect = width / height
    if aspect > 1:
        new_w, new_h = size, max(1, int(size / aspect))
    else:
        new_h, new_w = size, max(1, int(size * aspect))
    pad_h, pad_w = size - new_h, size - new_w
    top, left = pad_h // 2, pad_w // 2
    return Letterbox(height, width, new_h, new_w, top, pad_h - top, left, pad_w - left, size)


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8-range ``(B, 3, H, W)`` -> ImageNet-normalised float32."""
    mean = torch.tensor(IMAGENET_MEAN, device=images.device, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device, dtype=torch.float32).view(1, 3, 1, 1)
    return (images.float() / 255.0 - mean) / std


def _linear_taps(src: int, dst: int, device: torch.device):
    """Source indices and 11-bit fixed-point weights of OpenCV's uint8 INTER_LINEAR resize."""
    pos = ((torch.arange(dst, dtype=torch.float64, device=device) + 0.5) * (src / dst) - 0.5)
    pos = pos.to(torch.float32)
    i0 = torch.floor(pos)
    frac = pos - i0
    i0 = i0.long()
    clamp = (i0 < 0) | (i0 >= src - 1)
    frac[clamp] = 0.0
    i0 = i0.clamp(0, src - 1)
    i1 = (i0 + 1).clamp(max=src - 1)
    w0 = torch.round((1.0 - frac) * 2048).int()
    w1 = torch.round(frac * 2048).int()
    return i0, i1, w0, w1


def resize_uint8_linear(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bilinear resize of an HxWxC uint8 tensor, bit-compatible with OpenCV's ``cv2.resize``.

    The published S3OD predictor resizes with OpenCV; matching its fixed-point arithmetic (11-bit
    weights, rows then columns) keeps our masks identical to the published ones without making
    OpenCV a dependency. Integer maths only, so it is exact on every device.
    """
    x0, x1, a0, a1 = _linear_taps(image.shape[1], width, image.device)
    y0, y1, b0, b1 = _linear_taps(image.shape[0], height, image.device)
    # Gather columns before widening to int32: no full-resolution int32 copy of a large photo.
    rows = (image[:, x0].to(torch.int32) * a0[None, :, None]
            + image[:, x1].to(torch.int32) * a1[None, :, None])
    top, bottom = rows[y0] >> 4, rows[y1] >> 4
    out = ((top * b0[:, None, None]) >> 16) + ((bottom * b1[:, None, None]) >> 16)
    return ((out + 2) >> 2).clamp_(0, 255).to(torch.uint8)


def letterbox_image(image: np.ndarray | torch.Tensor, size: int) -> tuple[torch.Tensor, Letterbox]:
    """HxWx3 uint8 RGB -> ``(3, size, size)`` float tensor in the 0..255 range, and its geometry."""
    t = torch.as_tensor(image)
    if t.ndim != 3 or t.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 RGB image, got shape {tuple(t.shape)}")
    box = letterbox_geometry(int(t.shape[0]), int(t.shape[1]), size)
    if (box.resized_height, box.resized_width) != (box.height, box.width):
        t = resize_uint8_linear(t, box.resized_height, box.resized_width)
    chw = t.permute(2, 0, 1).float()
    return F.pad(chw, (box.left, box.right, box.top, box.bottom), value=0.0), box


def preprocess(
    images: Sequence[np.ndarray], size: int, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, list[Letterbox]]:
    """A batch of HxWx3 uint8 images -> normalised ``(B, 3, size, size)`` and their geometry."""
    tensors, boxes = [], []
    for image in images:
        t, box = letterbox_image(
            torch.from_numpy(np.require(image, np.uint8, ["C", "W"])).to(device), size)
        tensors.append(t)
        boxes.append(box)
    return normalize(torch.stack(tensors)), boxes


def crop_padding(probs: torch.Tensor, box: Letterbox) -> torch.Tensor:
    """``(..., S', S')`` network output -> the image's part of it, still at network resolution.

    Callers that upsample the mask themselves (edge refinement, very large images) start here.
    """
    s_h, s_w = probs.shape[-2:]
    sy, sx = s_h / box.size, s_w / box.size
    top, bottom = round(box.top * sy), s_h - round(box.bottom * sy)
    left, right = round(box.left * sx), s_w - round(box.right * sx)
    return probs[..., top:bottom, left:right]


def unletterbox(probs: torch.Tensor, box: Letterbox) -> torch.Tensor:
    """``(N, S', S')`` probabilities of one image -> ``(N, H, W)`` at the original size.

    ``S'`` may differ from ``box.size`` (a ViT rounds down to its patch size); the crop is scaled.
    """
    cropped = crop_padding(probs, box)
    if tuple(cropped.shape[-2:]) == (box.height, box.width):
        return cropped
    return F.interpolate(cropped.unsqueeze(0).float(), size=(box.height, box.width),
                         mode="bilinear", align_corners=False, antialias=True)[0]
