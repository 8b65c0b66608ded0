"""Resize / pad / normalise and their exact inverses: the one preprocessing path.

The predictor, evaluation, training and the ONNX runtime all call these functions, so a model
sees the same pixels wherever it runs. The geometry follows the published S3OD predictor
(long side to ``image_size`` with bilinear, no antialias; symmetric zero padding to a square;
ImageNet normalisation) but, unlike it, also handles odd padding and extreme aspect ratios.

Each torch function has a numpy twin (``*_array``) for runtimes without PyTorch (ONNX Runtime).
The twins share the geometry (:func:`letterbox_geometry`, :func:`crop_padding`), the resize taps
and the normalisation constants with the torch path, and tests check that both agree. torch is
imported inside the torch functions only, so ``import s3od.transforms`` does not load it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import numpy as np

if TYPE_CHECKING:
    import torch

#: A torch tensor or a numpy array: the helpers that only slice work on both.
ArrayT = TypeVar("ArrayT", "torch.Tensor", np.ndarray)

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
    import torch

    mean = torch.tensor(IMAGENET_MEAN, device=images.device, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device, dtype=torch.float32).view(1, 3, 1, 1)
    return (images.float() / 255.0 - mean) / std


def normalize_array(images: np.ndarray) -> np.ndarray:
    """numpy twin of :func:`normalize`: uint8-range ``(B, 3, H, W)`` -> normalised float32."""
    mean = np.asarray(IMAGENET_MEAN, np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(IMAGENET_STD, np.float32).reshape(1, 3, 1, 1)
    return (images.astype(np.float32) / np.float32(255.0) - mean) / std


def _linear_taps(src: int, dst: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and 11-bit fixed-point weights of OpenCV's uint8 INTER_LINEAR resize.

    Computed once in numpy for both resize implementations, so they cannot drift apart.
    """
    pos = ((np.arange(dst, dtype=np.float64) + 0.5) * (src / dst) - 0.5).astype(np.float32)
    i0 = np.floor(pos)
    frac = pos - i0
    i0 = i0.astype(np.int64)
    frac[(i0 < 0) | (i0 >= src - 1)] = 0.0
    i0 = np.clip(i0, 0, src - 1)
    i1 = np.minimum(i0 + 1, src - 1)
    w0 = np.rint((np.float32(1.0) - frac) * np.float32(2048)).astype(np.int32)
    w1 = np.rint(frac * np.float32(2048)).astype(np.int32)
    return i0, i1, w0, w1


def _rows_used(y0: np.ndarray, y1: np.ndarray, src: int
               ) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """The source rows the vertical taps read, and the taps re-indexed into them.

    Downscaling a photo reads at most two source rows per output row, so the horizontal pass
    only needs those (a 4000x3000 photo -> 1024: half the rows). ``None``: every row is used.
    """
    used, inverse = np.unique(np.concatenate([y0, y1]), return_inverse=True)
    if len(used) == src:
        return None, y0, y1
    return used, inverse[:len(y0)], inverse[len(y0):]


def resize_uint8_linear(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bilinear resize of an HxWxC uint8 tensor, bit-compatible with OpenCV's ``cv2.resize``.

    The published S3OD predictor resizes with OpenCV; matching its fixed-point arithmetic (11-bit
    weights, rows then columns) keeps our masks identical to the published ones without making
    OpenCV a dependency. Integer maths only, so it is exact on every device. The horizontal pass
    runs only on the rows the output uses, and the integer steps work in place.
    """
    import torch

    def tensor(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a).to(image.device)

    x0, x1, a0, a1 = (tensor(t) for t in _linear_taps(image.shape[1], width))
    y0, y1, b0, b1 = _linear_taps(image.shape[0], height)
    used, y0, y1 = _rows_used(y0, y1, image.shape[0])
    if used is not None:
        image = image.index_select(0, tensor(used))
    # Gather columns before widening to int32: no full-resolution int32 copy of a large photo.
    rows = image.index_select(1, x0).to(torch.int32).mul_(a0[None, :, None])
    rows.add_(image.index_select(1, x1).to(torch.int32).mul_(a1[None, :, None]))
    rows.bitwise_right_shift_(4)
    wb0, wb1 = tensor(b0)[:, None, None], tensor(b1)[:, None, None]
    out = rows.index_select(0, tensor(y0)).mul_(wb0).bitwise_right_shift_(16)
    out.add_(rows.index_select(0, tensor(y1)).mul_(wb1).bitwise_right_shift_(16))
    return out.add_(2).bitwise_right_shift_(2).clamp_(0, 255).to(torch.uint8)


def resize_uint8_linear_array(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """numpy twin of :func:`resize_uint8_linear` (same taps, same integer maths)."""
    x0, x1, a0, a1 = _linear_taps(image.shape[1], width)
    y0, y1, b0, b1 = _linear_taps(image.shape[0], height)
    used, y0, y1 = _rows_used(y0, y1, image.shape[0])
    if used is not None:
        image = image[used]
    rows = image[:, x0].astype(np.int32) * a0[None, :, None]
    rows += image[:, x1].astype(np.int32) * a1[None, :, None]
    rows >>= 4
    out = (rows[y0] * b0[:, None, None]) >> 16
    out += (rows[y1] * b1[:, None, None]) >> 16
    out += 2
    out >>= 2
    return np.clip(out, 0, 255).astype(np.uint8)


def letterbox_image(image: np.ndarray | torch.Tensor, size: int) -> tuple[torch.Tensor, Letterbox]:
    """HxWx3 uint8 RGB -> ``(3, size, size)`` float tensor in the 0..255 range, and its geometry."""
    import torch
    import torch.nn.functional as F

    t = torch.as_tensor(image)
    if t.ndim != 3 or t.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 RGB image, got shape {tuple(t.shape)}")
    box = letterbox_geometry(int(t.shape[0]), int(t.shape[1]), size)
    if (box.resized_height, box.resized_width) != (box.height, box.width):
        t = resize_uint8_linear(t, box.resized_height, box.resized_width)
    chw = t.permute(2, 0, 1).float()
    return F.pad(chw, (box.left, box.right, box.top, box.bottom), value=0.0), box


def letterbox_array(image: np.ndarray, size: int) -> tuple[np.ndarray, Letterbox]:
    """numpy twin of :func:`letterbox_image`: ``(3, size, size)`` float32 in 0..255, geometry."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 RGB image, got shape {tuple(image.shape)}")
    image = np.require(image, np.uint8, ["C"])
    box = letterbox_geometry(int(image.shape[0]), int(image.shape[1]), size)
    if (box.resized_height, box.resized_width) != (box.height, box.width):
        image = resize_uint8_linear_array(image, box.resized_height, box.resized_width)
    out = np.zeros((3, size, size), np.float32)
    out[:, box.top:size - box.bottom, box.left:size - box.right] = image.transpose(2, 0, 1)
    return out, box


def preprocess(
    images: Sequence[np.ndarray], size: int, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, list[Letterbox]]:
    """A batch of HxWx3 uint8 images -> normalised ``(B, 3, size, size)`` and their geometry."""
    import torch

    tensors, boxes = [], []
    for image in images:
        t, box = letterbox_image(
            torch.from_numpy(np.require(image, np.uint8, ["C", "W"])).to(device), size)
        tensors.append(t)
        boxes.append(box)
    return normalize(torch.stack(tensors)), boxes


def preprocess_arrays(
    images: Sequence[np.ndarray], size: int
) -> tuple[np.ndarray, list[Letterbox]]:
    """numpy twin of :func:`preprocess`: normalised ``(B, 3, size, size)`` float32 + geometry."""
    padded, boxes = zip(*(letterbox_array(image, size) for image in images), strict=True)
    return normalize_array(np.stack(padded)), list(boxes)


def crop_padding(probs: ArrayT, box: Letterbox) -> ArrayT:
    """``(..., S', S')`` network output -> the image's part of it, still at network resolution.

    Works on numpy arrays as well (shape and slicing only). Callers that upsample the mask
    themselves (edge refinement, very large images) start here.
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
    import torch.nn.functional as F

    cropped = crop_padding(probs, box)
    if tuple(cropped.shape[-2:]) == (box.height, box.width):
        return cropped
    return F.interpolate(cropped.unsqueeze(0).float(), size=(box.height, box.width),
                         mode="bilinear", align_corners=False, antialias=True)[0]


def unletterbox_array(probs: np.ndarray, box: Letterbox) -> np.ndarray:
    """numpy twin of :func:`unletterbox`: ``(N, S', S')`` -> ``(N, H, W)`` float32.

    The resize is Pillow's antialiased bilinear on float images, the filter torch's
    ``antialias=True`` reproduces; the two agree to float32 rounding.
    """
    from PIL import Image

    cropped = crop_padding(probs, box)
    if tuple(cropped.shape[-2:]) == (box.height, box.width):
        return np.ascontiguousarray(cropped, np.float32)
    return np.stack([
        np.asarray(Image.fromarray(np.ascontiguousarray(m, np.float32)).resize(
            (box.width, box.height), Image.Resampling.BILINEAR), np.float32)
        for m in cropped
    ])
