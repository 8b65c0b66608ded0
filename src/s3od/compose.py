"""Output helpers: cut-outs, composites over colours or images, masks, crops."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageColor

Color = tuple[int, int, int]


def parse_color(value: str | Color) -> Color:
    """``"white"``, ``"#00ff00"``, ``"0,255,0"`` or an RGB tuple -> RGB tuple."""
    if isinstance(value, tuple):
        if len(value) != 3 or not all(0 <= int(c) <= 255 for c in value):
            raise ValueError(f"colour must be three values in 0..255, got {value!r}")
        return (int(value[0]), int(value[1]), int(value[2]))
    text = value.strip()
    if "," in text:
        parts = text.split(",")
        try:
            return parse_color(tuple(int(p) for p in parts))  # type: ignore[arg-type]
        except ValueError:
            raise ValueError(f"invalid colour {value!r}") from None
    try:
        rgb = ImageColor.getrgb(text)
    except ValueError:
        raise ValueError(f"invalid colour {value!r} (use a name, #rrggbb or r,g,b)") from None
    if len(rgb) == 4 and rgb[3] != 255:
        # backgrounds are opaque: dropping the alpha silently would composite another colour
        raise ValueError(f"colour {value!r} has an alpha of {rgb[3]}; backgrounds are opaque "
                         "(use #rrggbb or r,g,b)")
    return (rgb[0], rgb[1], rgb[2])


def alpha_from_mask(mask: np.ndarray) -> np.ndarray:
    """Soft [0, 1] mask -> uint8 alpha (truncating, as the published predictor does)."""
    return (mask * 255).astype(np.uint8)


def cutout(rgb: np.ndarray, mask: np.ndarray) -> Image.Image:
    """RGBA image: the original colours with the soft mask as alpha."""
    return Image.fromarray(np.dstack([rgb, alpha_from_mask(mask)]), "RGBA")


def composite(rgb: np.ndarray, mask: np.ndarray,
              background: Color | np.ndarray | Image.Image) -> Image.Image:
    """Blend the object over a solid colour or a background image (resized to fit)."""
    h, w = mask.shape
    if isinstance(background, tuple):
        bg = np.empty((h, w, 3), np.float32)
        bg[:] = background
    else:
        img = background if isinstance(background, Image.Image) else Image.fromarray(background)
        bg = np.asarray(img.convert("RGB").resize((w, h), Image.Resampling.LANCZOS), np.float32)
    a = mask[..., None].astype(np.float32)
    out = rgb.astype(np.float32) * a + bg * (1.0 - a)
    return Image.fromarray(np.clip(out + 0.5, 0, 255).astype(np.uint8), "RGB")


def mask_image(mask: np.ndarray) -> Image.Image:
    """Soft mask as an 8-bit greyscale image."""
    return Image.fromarray(alpha_from_mask(mask), "L")


def bbox(mask: np.ndarray, threshold: float = 0.5) -> tuple[int, int, int, int] | None:
    """``(left, top, right, bottom)`` of pixels above ``threshold``; None if there are none."""
    ys = np.flatnonzero((mask > threshold).any(axis=1))
    if ys.size == 0:
        return None
    xs = np.flatnonzero((mask > threshold).any(axis=0))
    return int(xs[0]), int(ys[0]), int(xs[-1]) + 1, int(ys[-1]) + 1


def crop_to_object(image: Image.Image, mask: np.ndarray, threshold: float = 0.5,
                   margin: int = 0) -> Image.Image:
    """Crop ``image`` to the object's bounding box (plus ``margin`` px); unchanged if empty."""
    box = bbox(mask, threshold)
    if box is None:
        return image
    left, top, right, bottom = box
    h, w = mask.shape
    return image.crop((max(0, left - margin), max(0, top - margin), min(w, right + margin),
                       min(h, bottom + margin)))
