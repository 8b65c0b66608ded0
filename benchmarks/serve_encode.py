"""How long encoding the server's answer takes next to the forward pass, per output setting.

On CPU a 480p RGBA PNG at Pillow's default compression (level 6) costs about as much as a
small model's forward pass; this prints time and size side by side so the server's default is
a measured choice, not a guess.

    python benchmarks/serve_encode.py [--images 12] [--image-size 256] [--threads 1]
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

SETTINGS = {
    "png level 6 (Pillow default)": ("PNG", {"compress_level": 6}),
    "png level 3": ("PNG", {"compress_level": 3}),
    "png level 1": ("PNG", {"compress_level": 1}),
    "webp lossless (default effort)": ("WEBP", {"lossless": True}),
    "webp lossless method 0": ("WEBP", {"lossless": True, "method": 0, "quality": 0}),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=12)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from s3od import BackgroundRemoval
    from s3od.imageio import load_image
    from s3od.modeling import LiteSegmentation

    paths = sorted(SHARED_DATA.glob("*/images/*.jpg"))[:: 7][: args.images] or sorted(
        (REPO / "assets" / "samples").glob("*.jpg"))
    torch.manual_seed(0)
    remover = BackgroundRemoval.from_model(LiteSegmentation(features=32).eval(),
                                           image_size=args.image_size, device="cpu")
    rgbs = [load_image(p) for p in paths]
    forward, results = [], []
    for rgb in rgbs:
        forward.append(common.best_seconds(lambda rgb=rgb: remover.predict_arrays([rgb])))
        results.append(remover.remove_background(rgb))

    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    print(f"machine: {cpu}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{args.threads} thread(s); load average {os.getloadavg()[0]:.1f}")
    pixels = np.mean([r.image.shape[0] * r.image.shape[1] for r in results]) / 1e6
    print(f"{len(results)} real images ({pixels:.2f} MP mean), random-weight lite at "
          f"{args.image_size}px: forward pass {np.mean(forward) * 1000:.0f} ms mean\n")
    print(f"{'RGBA cut-out as':<32}{'ms / image':>12}{'KB / image':>12}{'vs forward':>12}")
    for name, (fmt, kwargs) in SETTINGS.items():
        seconds, sizes = [], []
        for r in results:
            image = r.rgba_image

            def encode(image=image, fmt=fmt, kwargs=kwargs) -> bytes:
                buf = io.BytesIO()
                image.save(buf, format=fmt, **kwargs)
                return buf.getvalue()

            seconds.append(common.best_seconds(encode))
            sizes.append(len(encode()))
            assert np.array_equal(np.asarray(Image.open(io.BytesIO(encode()))),
                                  np.asarray(image)), f"{name} is not lossless"
        print(f"{name:<32}{np.mean(seconds) * 1000:>12.0f}{np.mean(sizes) / 1024:>12.0f}"
              f"{np.mean(seconds) / np.mean(forward):>11.2f}x")


if __name__ == "__main__":
    main()
