"""Peak memory of cutting out 12 MP and 48 MP photos: the published path against the tiled one.

    python benchmarks/highres_memory.py [--sizes 12 48] [--model lite] [--image-size 512]

Each row runs in a fresh interpreter (see benchmarks/common.py) that loads the model, reads a
JPEG of the given size from disk and writes the RGBA PNG, as ``s3od remove`` does:

- ``decode``: only ``s3od.imageio.load_image(path)``, the floor every other row includes.
- ``published``: ``remove_background(path)``: every candidate mask resized to full size in
  float32, then the cut-out (what the published package does).
- ``tiled``: ``remove_background(path, full_size_candidates=False)``: only the best mask
  is upsampled, band by band, into one float32 array; the other candidates stay small.
- ``tiled+guided``: the same with ``refine="guided"``.
- ``tiled+guided+fg``: plus foreground colour estimation (pymatting, soft pixels only).
- ``cli``: ``s3od remove photo.jpg -o out.png`` in-process with default options (above
  16 MP it takes the tiled path; foreground estimation is on when pymatting is installed).

Reported: peak RSS of the process, the RSS before the photo was read (interpreter + torch +
model), and the difference per megapixel, which is what the photo costs. The photo is an
upscaled sample photo; content does not change the memory. PNGs are written with zlib level 1
in the API rows to save time (memory does not depend on it); the CLI row uses its defaults.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    SAMPLES,
    build_checkpoint,
    machine_description,
    markdown_table,
    peak_rss_mb,
    run_worker,
)

SIZES = {12: (4000, 3000), 48: (8000, 6000), 64: (8192, 8192)}
MODES = ("decode", "published", "tiled", "tiled+guided", "tiled+guided+fg", "cli")


def make_photo(megapixels: int, folder: Path) -> Path:
    """A JPEG of the given size: the coffee sample upscaled (quality 90)."""
    from PIL import Image

    path = folder / f"photo_{megapixels}mp.jpg"
    if not path.exists():
        w, h = SIZES[megapixels]
        Image.open(SAMPLES / "coffee.jpg").convert("RGB").resize(
            (w, h), Image.Resampling.BICUBIC).save(path, quality=90)
    return path


def worker(payload: dict) -> dict:
    import torch

    torch.set_num_threads(payload["threads"])
    from s3od import BackgroundRemoval
    from s3od.imageio import save_image_atomic

    remover = BackgroundRemoval(payload["checkpoint"], image_size=payload["image_size"],
                                device="cpu")
    before = peak_rss_mb()
    out = Path(payload["out"])
    mode = payload["mode"]
    start = time.perf_counter()
    if mode == "decode":
        from s3od.imageio import load_image

        load_image(payload["photo"])
    elif mode == "cli":
        from s3od.cli import app

        del remover
        app(["remove", payload["photo"], "-o", str(out), "-m", payload["checkpoint"],
             "--image-size", str(payload["image_size"]), "--device", "cpu"],
            standalone_mode=False)
    else:
        kwargs = {} if mode == "published" else {"full_size_candidates": False}
        if "guided" in mode:
            kwargs["refine"] = "guided"
        if mode.endswith("+fg"):
            kwargs["fg_estimate"] = True
        result = remover.remove_background(payload["photo"], **kwargs)
        save_image_atomic(result.rgba_image, out, compress_level=1)
    seconds = time.perf_counter() - start
    return {"before_mb": before, "peak_mb": peak_rss_mb(), "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[12, 48], choices=sorted(SIZES))
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--model", default="lite", help="model key of benchmarks/common.py")
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return

    machine = machine_description()
    print("machine: " + "; ".join(f"{k}: {v}" for k, v in machine.items()))
    rows = []
    with tempfile.TemporaryDirectory(prefix="s3od-highres-") as tmp:
        folder = Path(tmp)
        checkpoint, weights = build_checkpoint(args.model, folder)
        print(f"model: {args.model} ({weights}), image_size {args.image_size}, "
              f"{args.threads} torch thread(s)")
        for mp in args.sizes:
            photo = make_photo(mp, folder)
            w, h = SIZES[mp]
            for mode in args.modes:
                res = run_worker(Path(__file__), {
                    "mode": mode, "photo": str(photo), "checkpoint": str(checkpoint),
                    "image_size": args.image_size, "threads": args.threads,
                    "out": str(folder / f"out_{mp}_{mode}.png")}, timeout=1800)
                row = {"photo": f"{w}x{h} ({w * h / 1e6:.0f} MP)", "mode": mode}
                if "error" in res:
                    row["peak RSS MiB"] = res["error"]
                else:
                    extra = res["peak_mb"] - res["before_mb"]
                    row.update({"peak RSS MiB": res["peak_mb"], "before photo MiB":
                                res["before_mb"], "photo's share MiB": extra,
                                "bytes / pixel": extra * 2**20 / (w * h),
                                "seconds": res["seconds"]})
                rows.append(row)
                print(json.dumps(row), flush=True)
    print()
    print(markdown_table(rows, ["photo", "mode", "peak RSS MiB", "before photo MiB",
                                "photo's share MiB", "bytes / pixel", "seconds"]))


if __name__ == "__main__":
    main()
