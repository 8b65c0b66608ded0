"""Before/after crops of hair and fur edges for docs/edges-video.md, from the sample photos.

    python docs/make_edge_crops.py --model s3od-lite [--image-size 512]

For each committed sample photo (assets/samples, permissive licences) the model predicts one
mask; the same network mask then goes through each refine mode and is composited over a dark
colour, where any halo of the old (light) background shows; the alpha is shown below each.
Crops are enlarged 3x or 6x with nearest-neighbour sampling so single pixels stay visible.
Writes docs/images/edges_<name>.png.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[1]
# output name: (sample photo, crop box left, top, right, bottom in photo pixels, background
# colour, enlargement)
CROPS = {
    "astronaut": ("astronaut", (150, 5, 330, 125), (20, 40, 90), 3),
    "astronaut_hair": ("astronaut", (152, 30, 212, 100), (20, 40, 90), 6),
    "cat": ("cat", (250, 0, 451, 120), (20, 40, 90), 3),
}


def panels(remover, name: str, box: tuple[int, int, int, int],
           colour: tuple[int, int, int]) -> list[tuple[str, np.ndarray]]:
    from s3od.imageio import load_image
    from s3od.refine import RefineConfig, cutout_array, refine_alpha

    rgb = load_image(REPO / "assets" / "samples" / f"{name}.jpg")
    masks, ious = remover.predict_arrays([rgb], full_resolution=False)[0]
    low = masks[int(np.argmax(ious))]
    out = []
    for label, mode, fg in (("none (bilinear)", "none", False), ("guided", "guided", False),
                            ("matting", "matting", False), ("matting + fg", "matting", True)):
        alpha = refine_alpha(rgb, low, RefineConfig(mode=mode, time_budget_s=None))
        rgba = cutout_array(rgb, alpha, fg).astype(np.float32)
        a = rgba[..., 3:] / 255.0
        comp = rgba[..., :3] * a + np.asarray(colour, np.float32) * (1 - a)
        left, top, right, bottom = box
        crop = np.clip(comp + 0.5, 0, 255).astype(np.uint8)[top:bottom, left:right]
        alpha_crop = np.repeat((alpha[top:bottom, left:right, None] * 255).astype(np.uint8), 3, 2)
        out.append((label, np.vstack([crop, alpha_crop])))
    return out


def grid(items: list[tuple[str, np.ndarray]], zoom: int) -> Image.Image:
    h, w = items[0][1].shape[:2]
    pad, label_h = 6, 18
    sheet = Image.new("RGB", (len(items) * (w * zoom + pad) + pad, h * zoom + label_h + pad),
                      (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for i, (label, arr) in enumerate(items):
        x = pad + i * (w * zoom + pad)
        tile = Image.fromarray(arr).resize((w * zoom, h * zoom), Image.Resampling.NEAREST)
        sheet.paste(tile, (x, label_h))
        draw.text((x + 2, 3), label, fill=(0, 0, 0))
    return sheet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="registry name or checkpoint path")
    parser.add_argument("--image-size", type=int, default=None)
    args = parser.parse_args()
    import torch

    from s3od import BackgroundRemoval

    torch.set_num_threads(1)
    remover = BackgroundRemoval(args.model, image_size=args.image_size, device="cpu")
    for name, (sample, box, colour, zoom) in CROPS.items():
        path = REPO / "docs" / "images" / f"edges_{name}.png"
        grid(panels(remover, sample, box, colour), zoom).save(path, optimize=True)
        print(f"wrote {path.relative_to(REPO)} ({remover.model_name}, {remover.image_size}px)")


if __name__ == "__main__":
    main()
