"""Decode anything into HxWx3 uint8 RGB, and write files atomically.

Accepts paths, bytes, file objects, PIL images and numpy arrays; applies EXIF orientation and
converts 16-bit, CMYK, palette, LA and greyscale images the way a user expects to see them.
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from s3od.errors import InvalidImageError

ImageInput = str | os.PathLike | bytes | bytearray | IO[bytes] | Image.Image | np.ndarray

_UMASK = os.umask(0)
os.umask(_UMASK)

# Refuse decompression bombs early; callers that need more can raise this.
Image.MAX_IMAGE_PIXELS = 24_000 * 24_000


def _open(source: Any) -> Image.Image:
    try:
        if isinstance(source, (bytes, bytearray, memoryview)):
            if len(source) == 0:
                raise InvalidImageError("empty input (0 bytes)")
            img = Image.open(io.BytesIO(bytes(source)))
        elif isinstance(source, (str, os.PathLike)):
            path = Path(source)
            if not path.is_file():
                raise InvalidImageError(f"no such file: {path}")
            if path.stat().st_size == 0:
                raise InvalidImageError(f"empty file (0 bytes): {path}")
            img = Image.open(path)
        else:
            img = Image.open(source)
        img.load()
        return img
    except InvalidImageError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise InvalidImageError(f"cannot decode image: {err}") from err
    except Image.DecompressionBombError as err:  # pragma: no cover - subclass of Exception
        raise InvalidImageError(str(err)) from err


def pil_to_rgb(img: Image.Image) -> Image.Image:
    """Orientation-corrected RGB, mapping high-bit-depth greys to 8 bits instead of clipping."""
    img = ImageOps.exif_transpose(img) or img
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "I;16N"):
        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if arr.max() > 255 else 255.0
        arr = np.clip(arr / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float32)
        scale = 255.0 if arr.max() <= 1.0 else 1.0
        return Image.fromarray(np.clip(arr * scale + 0.5, 0, 255).astype(np.uint8)).convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        # Transparent pixels keep their stored colour; alpha is not the network's business.
        return img.convert("RGBA").convert("RGB")
    return img.convert("RGB")


def array_to_rgb(arr: np.ndarray) -> np.ndarray:
    """numpy HxW / HxWx1 / HxWx3 / HxWx4 of uint8, uint16, bool or float in [0, 1] -> RGB uint8."""
    if not isinstance(arr, np.ndarray):
        raise InvalidImageError(f"expected a numpy array, got {type(arr).__name__}")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise InvalidImageError(f"expected HxW, HxWx3 or HxWx4 array, got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise InvalidImageError(f"image has no pixels (shape {arr.shape})")
    if arr.dtype == np.uint8:
        out = arr
    elif arr.dtype == np.uint16:
        out = (arr.astype(np.uint32) * 255 + 32767) // 65535
    elif arr.dtype == bool:
        out = arr.astype(np.uint8) * 255
    elif np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise InvalidImageError("float image contains NaN or inf")
        out = np.clip(arr * 255.0 + 0.5, 0, 255)
    else:
        raise InvalidImageError(f"unsupported array dtype {arr.dtype}")
    out = out.astype(np.uint8, copy=False)
    if out.ndim == 2:
        out = np.repeat(out[..., None], 3, axis=2)
    elif out.shape[2] == 4:
        out = out[..., :3]
    return np.ascontiguousarray(out)


def load_image(source: ImageInput) -> np.ndarray:
    """Any supported input -> HxWx3 uint8 RGB (EXIF orientation applied)."""
    if isinstance(source, np.ndarray):
        return array_to_rgb(source)
    img = source if isinstance(source, Image.Image) else _open(source)
    try:
        return np.asarray(pil_to_rgb(img), dtype=np.uint8).copy()
    except (OSError, ValueError) as err:
        raise InvalidImageError(f"cannot convert image: {err}") from err


def save_image_atomic(image: Image.Image, path: str | os.PathLike, **save_kwargs: Any) -> Path:
    """Write ``image`` to a temporary file in the target folder, then rename it into place.

    An interrupted run therefore never leaves a half-written file under the final name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = save_kwargs.pop("format", None) or Image.registered_extensions().get(
        path.suffix.lower(), "PNG")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            image.save(fh, format=fmt, **save_kwargs)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; outputs get normal permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def encode_image(image: Image.Image, fmt: str = "PNG", **save_kwargs: Any) -> bytes:
    """Encode to bytes (for stdout and HTTP responses)."""
    buf = io.BytesIO()
    image.save(buf, format=fmt, **save_kwargs)
    return buf.getvalue()
