"""Side-by-side cut-outs of the committed sample photos: s3od-lite against the offline peers.

    python benchmarks/peers.py fetch          # once: the peers' ONNX files, outside the repo
    python docs/make_sample_strip.py --peer u2netp --peer u2net --peer isnet-medium \\
        --peer isnet-small [--model s3od-lite]

One row per photo in assets/samples (permissive licences): the photo, then each method's
cut-out over a checkerboard, so kept background and holes both show. Peers run exactly as in
``benchmarks/quality.py`` (``benchmarks/peers.py``: rembg's preprocessing for U²-Net, IMG.LY's
for ISNet); their files are fetched by the benchmark's fetch step, sha256 checked, and never
committed (ISNet is AGPL: shown as a peer only). ``--teacher NAME=path.onnx`` adds any other
rembg-style ONNX model. Writes docs/images/samples_vs_rembg.png.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[1]
ROW_HEIGHT = 220
HEADER = 26


def checkerboard(height: int, width: int, cell: int = 12) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width]
    light = ((yy // cell + xx // cell) % 2).astype(np.float32)
    return (200 + 40 * light)[..., None].repeat(3, axis=2)


def over_checkerboard(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    alpha = np.clip(mask, 0, 1)[..., None]
    board = checkerboard(*mask.shape)
    return (rgb.astype(np.float32) * alpha + board * (1 - alpha)).astype(np.uint8)


def fit(image: np.ndarray) -> Image.Image:
    pil = Image.fromarray(image)
    width = round(pil.width * ROW_HEIGHT / pil.height)
    return pil.resize((width, ROW_HEIGHT), Image.Resampling.LANCZOS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="s3od-lite", help="s3od model (default: bundled)")
    parser.add_argument("--peer", action="append", default=[],
                        help="a peer row of benchmarks/peers.py (u2net, u2netp, isnet-medium, "
                             "isnet-small, ...); repeatable, shown in this order")
    parser.add_argument("--peer-cache", type=Path, default=None,
                        help="folder of the peer files (default: peers.py's cache)")
    parser.add_argument("--teacher", action="append", default=[],
                        help="NAME=path.onnx of a rembg model; repeatable")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "images" /
                        "samples_vs_rembg.png")
    args = parser.parse_args()

    from s3od import load_remover
    from s3od.imageio import load_image
    from synth_sod.data_generation.pseudo_label import OnnxTeacher

    remover = load_remover(args.model, device="cpu")
    methods = [(f"{args.model} ({remover.image_size} px)",
                lambda rgb: remover.remove_background(rgb).predicted_mask)]
    sys.path.insert(0, str(REPO / "benchmarks"))
    from peers import PeerError, load_peer

    for name in args.peer:
        try:
            fn = load_peer(name, args.peer_cache)
        except PeerError as err:
            raise SystemExit(f"--peer {name}: {err}") from None
        vendor = "IMG.LY" if name.startswith("isnet") else "rembg"
        methods.append((f"{vendor} {name}", fn))
    for spec in args.teacher:
        name, path = spec.split("=", 1)
        teacher = OnnxTeacher(path)
        methods.append((f"rembg {name}", teacher.predict))
    rows = []
    for photo in sorted((REPO / "assets" / "samples").glob("*.jpg")):
        rgb = load_image(photo)
        tiles = [("photo", fit(rgb))]
        tiles += [(label, fit(over_checkerboard(rgb, fn(rgb)))) for label, fn in methods]
        rows.append(tiles)
    width = max(sum(t.width for _, t in row) + 8 * (len(row) - 1) for row in rows)
    canvas = Image.new("RGB", (width, len(rows) * (ROW_HEIGHT + HEADER)), "white")
    draw = ImageDraw.Draw(canvas)
    for r, row in enumerate(rows):
        x, y = 0, r * (ROW_HEIGHT + HEADER)
        for label, tile in row:
            draw.text((x + 4, y + 6), label, fill="black")
            canvas.paste(tile, (x, y + HEADER))
            x += tile.width + 8
    args.out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(args.out, optimize=True)
    print(f"wrote {args.out} ({canvas.width}x{canvas.height})")


if __name__ == "__main__":
    main()
