"""Copy-paste composites: an object cut out by its mask, pasted on a new background.

The pasted object is scaled, rotated, flipped and placed at random; its alpha is the warped mask
with a slightly softened edge, and the target mask *is* that alpha, so image and label agree to
the pixel. Backgrounds are another photo with its own object removed (a crop that avoids its
mask, or the photo with the object region inpainted), a plain colour, a linear gradient, or a
smooth noise texture.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import cv2
import numpy as np


@dataclass
class CopyPasteConfig:
    p: float = 0.5
    scale: tuple[float, float] = (0.3, 0.9)  # object's long side / canvas long side
    rotation: float = 30.0  # degrees, uniform in [-r, r]
    feather: tuple[float, float] = (0.3, 1.5)  # Gaussian sigma of the alpha edge, pixels
    background_weights: tuple[float, float, float, float] = (0.55, 0.15, 0.15, 0.15)
    # photo, plain colour, gradient, noise
    # Source names (dataset entries' ``name``) whose objects are pasted / whose photos serve as
    # backgrounds; None = every source. Pseudo-labelled photos make good backgrounds but their
    # teacher masks are not clean enough to cut objects out of.
    foreground_sources: tuple[str, ...] | None = None
    background_sources: tuple[str, ...] | None = None


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    ys, xs = np.nonzero(mask > 127)
    if len(ys) == 0:
        return None
    return int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1


def plain_background(h: int, w: int, rng: random.Random) -> np.ndarray:
    colour = np.array([rng.randint(0, 255) for _ in range(3)], dtype=np.uint8)
    return np.broadcast_to(colour, (h, w, 3)).copy()


def gradient_background(h: int, w: int, rng: random.Random) -> np.ndarray:
    c0 = np.array([rng.randint(0, 255) for _ in range(3)], dtype=np.float32)
    c1 = np.array([rng.randint(0, 255) for _ in range(3)], dtype=np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    t = xx * np.cos(angle) + yy * np.sin(angle)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    return (c0 + (c1 - c0) * t[..., None]).clip(0, 255).astype(np.uint8)


def noise_background(h: int, w: int, rng: random.Random) -> np.ndarray:
    """Sum of a few octaves of upsampled random noise, randomly tinted."""
    nrng = np.random.default_rng(rng.getrandbits(32))
    acc = np.zeros((h, w, 3), np.float32)
    amp = 1.0
    for cells in (4, 8, 16, 48):
        small = nrng.random((cells, cells, 3), dtype=np.float32)
        acc += amp * cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
        amp *= 0.5
    acc = (acc - acc.min()) / max(float(acc.max() - acc.min()), 1e-6)
    tint = nrng.uniform(0.3, 1.0, 3).astype(np.float32)
    base = nrng.uniform(0, 120, 3).astype(np.float32)
    return (base + acc * tint * 255).clip(0, 255).astype(np.uint8)


def photo_background(image: np.ndarray, mask: np.ndarray, h: int, w: int,
                     rng: random.Random) -> np.ndarray:
    """A region of ``image`` outside its object: a clean crop if one exists, else inpainted."""
    ih, iw = mask.shape
    fg = (mask > 20).astype(np.uint8)
    for _ in range(12):
        ch = int(ih * rng.uniform(0.35, 1.0))
        cw = int(iw * rng.uniform(0.35, 1.0))
        y0, x0 = rng.randint(0, ih - ch), rng.randint(0, iw - cw)
        if fg[y0:y0 + ch, x0:x0 + cw].mean() < 0.002:
            crop = image[y0:y0 + ch, x0:x0 + cw]
            return cv2.resize(crop, (w, h), interpolation=cv2.INTER_LINEAR)
    # No clean crop: inpaint the (dilated) object at low resolution, then blur the fill a little.
    scale = 128.0 / max(ih, iw)
    sh, sw = max(8, int(ih * scale)), max(8, int(iw * scale))
    small = cv2.resize(image, (sw, sh), interpolation=cv2.INTER_AREA)
    hole = cv2.resize(fg * 255, (sw, sh), interpolation=cv2.INTER_NEAREST)
    hole = cv2.dilate(hole, np.ones((5, 5), np.uint8))
    filled = cv2.inpaint(small, hole, 5, cv2.INPAINT_TELEA)
    filled = cv2.resize(filled, (iw, ih), interpolation=cv2.INTER_LINEAR)
    filled = cv2.GaussianBlur(filled, (0, 0), 2.0)
    big_hole = cv2.resize(hole, (iw, ih), interpolation=cv2.INTER_LINEAR)[..., None] / 255.0
    out = (image * (1 - big_hole) + filled * big_hole).astype(np.uint8)
    return cv2.resize(out, (w, h), interpolation=cv2.INTER_LINEAR)


def composite(
    fg_image: np.ndarray,
    fg_mask: np.ndarray,
    bg_image: np.ndarray | None,
    bg_mask: np.ndarray | None,
    size: int,
    rng: random.Random,
    cfg: CopyPasteConfig | None = None,
) -> tuple[np.ndarray, np.ndarray] | None:
    """Paste the object of ``(fg_image, fg_mask)`` onto a new background.

    Returns ``(image HxWx3 uint8, mask HxW uint8)`` with a long side of ``size``, or ``None``
    when the foreground mask is empty. The mask equals the alpha used for blending.
    """
    cfg = cfg or CopyPasteConfig()
    box = _bbox(fg_mask)
    if box is None:
        return None
    y0, y1, x0, x1 = box
    obj = fg_image[y0:y1, x0:x1]
    alpha = fg_mask[y0:y1, x0:x1]

    aspect = rng.uniform(0.75, 1.33)
    h, w = (size, int(size / aspect)) if aspect < 1 else (int(size / aspect), size)
    h, w = max(h, 32), max(w, 32)

    kinds = ("photo", "plain", "gradient", "noise")
    weights = list(cfg.background_weights)
    if bg_image is None:
        weights[0] = 0.0
    kind = rng.choices(kinds, weights=weights)[0]
    if kind == "photo":
        background = photo_background(bg_image, bg_mask, h, w, rng)
    elif kind == "plain":
        background = plain_background(h, w, rng)
    elif kind == "gradient":
        background = gradient_background(h, w, rng)
    else:
        background = noise_background(h, w, rng)

    # Scale so that the rotated object's long side is a random fraction of the canvas.
    oh, ow = alpha.shape
    target = rng.uniform(*cfg.scale) * min(h, w) * rng.uniform(1.0, max(h, w) / min(h, w))
    s = target / max(oh, ow)
    angle = rng.uniform(-cfg.rotation, cfg.rotation)
    flip = rng.random() < 0.5
    if flip:
        obj, alpha = obj[:, ::-1], alpha[:, ::-1]
    m = cv2.getRotationMatrix2D((ow / 2.0, oh / 2.0), angle, s)
    cos, sin = abs(m[0, 0]), abs(m[0, 1])
    nw, nh = int(oh * sin + ow * cos) + 2, int(oh * cos + ow * sin) + 2
    # Keep the pasted object inside the canvas (shrink if the rotation made it too large).
    fit = min(1.0, (w - 2) / nw, (h - 2) / nh)
    if fit < 1.0:
        m = cv2.getRotationMatrix2D((ow / 2.0, oh / 2.0), angle, s * fit)
        nw, nh = max(1, int(nw * fit)), max(1, int(nh * fit))
    # Position: anywhere the object box fits (objects may touch the border).
    px = rng.randint(0, max(0, w - nw))
    py = rng.randint(0, max(0, h - nh))
    m[0, 2] += nw / 2.0 - ow / 2.0 + px
    m[1, 2] += nh / 2.0 - oh / 2.0 + py
    warped = cv2.warpAffine(np.ascontiguousarray(obj), m, (w, h), flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_REFLECT)
    a = cv2.warpAffine(np.ascontiguousarray(alpha), m, (w, h), flags=cv2.INTER_LINEAR,
                       borderMode=cv2.BORDER_CONSTANT, borderValue=0).astype(np.float32)
    sigma = rng.uniform(*cfg.feather)
    a = cv2.GaussianBlur(a, (0, 0), sigma) / 255.0
    a = a.clip(0.0, 1.0)
    if a.max() < 0.5:
        return None
    mask = np.rint(a * 255.0).astype(np.uint8)
    a = mask.astype(np.float32) / 255.0  # blend with exactly the alpha the label stores
    image = warped.astype(np.float32) * a[..., None] + background.astype(np.float32) * (
        1.0 - a[..., None]
    )
    return image.clip(0, 255).astype(np.uint8), mask
