"""What the PNG compression level costs when writing cut-outs (why the default is 1).

A cut-out is an RGBA image with a soft alpha; with a fast model, writing it can take longer than
computing it. This times PIL's PNG encoder at several zlib levels on real cut-outs: the photos of
../shared/data (or the committed samples) with each dataset's ground-truth mask, or a centred
ellipse, as alpha. Encoding only (in memory), CPU time of this process, median of the repeats.

Example:
    python benchmarks/png_encode.py --images 12 --levels 0,1,3,6,9
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common


def cutouts(count: int) -> list[object]:
    """RGBA PIL images: photo + soft alpha (the dataset mask blurred, as a model's would be)."""
    import numpy as np
    from PIL import Image, ImageFilter

    from s3od.imageio import load_image

    paths, _ = common.quality_images(count)
    out = []
    for path in paths:
        rgb = load_image(path)
        h, w = rgb.shape[:2]
        mask_path = path.parent.parent / "masks" / f"{path.stem}.png"
        if mask_path.is_file():
            alpha = Image.open(mask_path).convert("L").resize((w, h))
        else:
            yy, xx = np.mgrid[:h, :w]
            inside = ((yy - h / 2) / (h / 3)) ** 2 + ((xx - w / 2) / (w / 3)) ** 2 <= 1
            alpha = Image.fromarray((inside * 255).astype(np.uint8))
        alpha = alpha.filter(ImageFilter.GaussianBlur(2))
        rgba = np.dstack([rgb, np.asarray(alpha)])
        rgba[..., :3][rgba[..., 3] == 0] = 0  # what compose writes under full transparency
        out.append(Image.fromarray(rgba, "RGBA"))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=12)
    parser.add_argument("--levels", default="0,1,3,6,9")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    images = cutouts(args.images)
    megapixels = sum(im.width * im.height for im in images) / 1e6
    print(f"# PNG encoding of {len(images)} cut-outs ({megapixels:.2f} MP), PIL "
          f"{__import__('PIL').__version__}")
    for key, value in common.machine_description().items():
        print(f"- {key}: {value}")
    print(f"- command: python benchmarks/png_encode.py {' '.join(sys.argv[1:] or [])}\n")
    print("| zlib level | ms per image | ms per MP | MB total | bytes vs level 6 "
          "| time vs level 6 |")
    print("|--:|--:|--:|--:|--:|--:|")
    rows = {}
    for level in (int(v) for v in args.levels.split(",")):
        times, size = [], 0
        for _ in range(args.repeats):
            start, size = time.process_time(), 0
            for image in images:
                buf = io.BytesIO()
                image.save(buf, format="PNG", compress_level=level)
                size += buf.tell()
            times.append(time.process_time() - start)
        rows[level] = (statistics.median(times), size)
    ref_t, ref_b = rows.get(6, next(iter(rows.values())))
    for level, (seconds, size) in rows.items():
        print(f"| {level} | {1e3 * seconds / len(images):.1f} | {1e3 * seconds / megapixels:.0f} "
              f"| {size / 1e6:.2f} | {size / ref_b:.2f}x | {seconds / ref_t:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
