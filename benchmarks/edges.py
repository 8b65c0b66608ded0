"""Edge refinement modes on real image/mask pairs: quality, seconds per megapixel, fg cost.

    python benchmarks/edges.py --model PATH_OR_NAME [--image-size 256] [--limit 10]
    python benchmarks/edges.py --stand-in [--factor 4]          # no model needed

1. Network masks (``--model``): the model predicts each photo once; every refine mode
   (``none`` = bilinear upsampling, ``guided``, ``matting``) then turns the same
   network-resolution mask into a full-size alpha, scored against the ground truth with
   :class:`s3od.evaluation.SODMetrics` (the metric suite ``s3od eval``/``s3od benchmark`` use):
   MAE, boundary IoU, S-measure, max F, weighted F, and CPU seconds per megapixel of
   refinement (network time excluded; CPU time of this process, so a busy machine does not
   inflate it, though cache contention still may). A control row, ``none + contrast``,
   applies only the contrast stretch the guided mode starts with, so the table shows what the
   filter itself adds.
2. Stand-in masks (``--stand-in``): the ground truth reduced ``--factor`` times by area
   averaging, optionally blurred, instead of a network (a "perfect but low-resolution"
   network). With binary ground truth this favours plain upsampling; it is kept as a check.
3. Known alpha (``--known-alpha``): a sample photo (the cat) composited over another (the
   coffee) with a synthetic alpha that has a soft rim and thin strands past it, so
   ``I = aF + (1-a)B`` holds and alpha and foreground colour errors can be measured exactly,
   which binary annotations cannot do. The network stand-in is the true alpha reduced 4x.
4. Foreground colour estimation: CPU seconds per megapixel of building the RGBA cut-out with and
   without ``fg_estimate``, on the pairs at their own size and on one photo upscaled to 9 MP
   with a guided alpha (a realistic soft band).

The data is ../shared/data (research-only; read in place, never copied). One torch thread.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import SHARED_DATA, machine_description, markdown_table

SOURCES = ("davis2016", "sod-bsds300", "s3od-fixture")
MODES = ("none", "guided", "matting")


def pairs(source: str, limit: int) -> list[tuple[Path, Path]]:
    images = sorted((SHARED_DATA / source / "images").glob("*.jpg"))
    step = max(1, len(images) // max(1, limit))
    picked = images[::step][:limit]
    return [(p, SHARED_DATA / source / "masks" / f"{p.stem}.png") for p in picked]


def _score(rows: list[dict], source: str, count: int, metrics: dict, seconds: dict,
           megapixels: float) -> None:
    for mode, metric in metrics.items():
        res = metric.results()
        rows.append({"set": f"{source} ({count})", "mode": mode, "MAE": res["MAE"],
                     "BIoU": res["BIoU"], "Sm": res["Sm"], "maxF": res["maxF"], "wF": res["wF"],
                     "CPU s / MP": seconds[mode] / megapixels})
        print(rows[-1], flush=True)


def _refiners(modes: tuple[str, ...], contrast: bool) -> dict:
    from s3od.refine import RefineConfig, refine_alpha

    out = {m: (lambda rgb, low, m=m: refine_alpha(rgb, low, RefineConfig(mode=m,
                                                                         time_budget_s=None)))
           for m in modes}
    if contrast:
        out["none + contrast"] = lambda rgb, low: np.clip(
            (refine_alpha(rgb, low, "none") - 0.5) * 4.0 + 0.5, 0.0, 1.0)
    return out


def network_masks(model: str, image_size: int | None, limit: int,
                  modes: tuple[str, ...]) -> list[dict]:
    from s3od import BackgroundRemoval
    from s3od.evaluation import SODMetrics
    from s3od.imageio import load_image

    remover = BackgroundRemoval(model, image_size=image_size, device="cpu")
    print(f"model: {remover.model_name} ({remover.source}), {remover.image_size}px", flush=True)
    refiners = _refiners(modes, contrast=True)
    rows: list[dict] = []
    for source in SOURCES[:2]:
        todo = pairs(source, limit)
        metrics = {m: SODMetrics() for m in refiners}
        seconds = dict.fromkeys(refiners, 0.0)
        megapixels = 0.0
        for image_path, mask_path in todo:
            rgb = load_image(image_path)
            gt = np.asarray(Image.open(mask_path).convert("L"))
            megapixels += gt.size / 1e6
            masks, ious = remover.predict_arrays([rgb], full_resolution=False)[0]
            low = masks[int(np.argmax(ious))]
            for name, refine in refiners.items():
                start = time.process_time()
                alpha = refine(rgb, low)
                seconds[name] += time.process_time() - start
                metrics[name].step((alpha * 255 + 0.5).astype(np.uint8), gt)
        _score(rows, source, len(todo), metrics, seconds, megapixels)
    return rows


def stand_in_masks(limit: int, factor: int, blur: float, modes: tuple[str, ...]) -> list[dict]:
    from scipy.ndimage import gaussian_filter

    from s3od.evaluation import SODMetrics
    from s3od.imageio import load_image
    from s3od.refine import downsample_area

    refiners = _refiners(modes, contrast=blur > 0)
    rows: list[dict] = []
    for source in SOURCES:
        todo = pairs(source, limit)
        if not todo:
            continue
        metrics = {m: SODMetrics() for m in refiners}
        seconds = dict.fromkeys(refiners, 0.0)
        megapixels = 0.0
        for image_path, mask_path in todo:
            rgb = load_image(image_path)
            gt = np.asarray(Image.open(mask_path).convert("L"))
            h, w = gt.shape
            megapixels += h * w / 1e6
            low = downsample_area(gt.astype(np.float32) / 255.0, max(1, h // factor),
                                  max(1, w // factor))
            if blur > 0:
                low = gaussian_filter(low, blur)
            for name, refine in refiners.items():
                start = time.process_time()
                alpha = refine(rgb, low)
                seconds[name] += time.process_time() - start
                metrics[name].step((alpha * 255 + 0.5).astype(np.uint8), gt)
        _score(rows, f"{source} blur {blur:g}", len(todo), metrics, seconds, megapixels)
    return rows


def known_alpha(modes: tuple[str, ...]) -> list[dict]:
    from s3od.refine import RefineConfig, cutout_array, downsample_area, refine_alpha

    samples = Path(__file__).resolve().parents[1] / "assets" / "samples"
    size = 384
    fg = np.asarray(Image.open(samples / "cat.jpg").convert("RGB").resize(
        (size, size), Image.Resampling.LANCZOS), np.float32)
    bg = np.asarray(Image.open(samples / "coffee.jpg").convert("RGB").resize(
        (size, size), Image.Resampling.LANCZOS), np.float32)
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    r = np.hypot(yy - size / 2, xx - size / 2)
    theta = np.arctan2(yy - size / 2, xx - size / 2)
    alpha = np.clip((size * 0.31 - r) / 3, 0, 1)
    strands = (np.abs(np.sin(theta * 40)) > 0.85) & (r < size * 0.44)
    alpha = np.maximum(alpha, strands * 0.8 * np.clip((size * 0.44 - r) / (size * 0.13), 0, 1))
    image = np.clip(alpha[..., None] * fg + (1 - alpha[..., None]) * bg + 0.5, 0, 255)
    image = image.astype(np.uint8)
    low = downsample_area(alpha.astype(np.float32), size // 4, size // 4)
    soft = (alpha > 0.2) & (alpha < 1)
    rows = []
    for mode in modes:
        for fg_estimate in (False, True):
            est = refine_alpha(image, low, RefineConfig(mode=mode, time_budget_s=None))
            rgba = cutout_array(image, est, fg_estimate).astype(np.float32)
            rows.append({"mode": mode + (" + fg" if fg_estimate else ""),
                         "alpha MAE": float(np.abs(est - alpha).mean()),
                         "alpha MAE, soft region": float(np.abs(est - alpha)[soft].mean()),
                         "colour error, soft region (0-255)":
                             float(np.abs(rgba[..., :3] - fg)[soft].mean())})
            print(rows[-1], flush=True)
    return rows


def foreground_cost(limit: int) -> list[dict]:
    from s3od.imageio import load_image
    from s3od.refine import cutout_array, downsample_area, refine_alpha

    rows = []
    todo = [p for s in SOURCES[:2] for p in pairs(s, limit)]
    spent = {False: 0.0, True: 0.0}
    megapixels = soft = 0.0
    for image_path, mask_path in todo:
        rgb = load_image(image_path)
        gt = np.asarray(Image.open(mask_path).convert("L")).astype(np.float32) / 255.0
        alpha = refine_alpha(rgb, downsample_area(gt, gt.shape[0] // 4, gt.shape[1] // 4),
                             "guided")
        megapixels += alpha.size / 1e6
        for fg in (False, True):
            start = time.process_time()
            rgba = cutout_array(rgb, alpha, fg)
            spent[fg] += time.process_time() - start
        soft += float(((rgba[..., 3] > 0) & (rgba[..., 3] < 255)).mean())
    rows.append({"input": f"{len(todo)} pairs at their own size (davis2016, sod-bsds300)",
                 "soft pixels": f"{100 * soft / len(todo):.1f} %",
                 "cut-out CPU s / MP": spent[False] / megapixels,
                 "with fg_estimate CPU s / MP": spent[True] / megapixels})
    print(rows[-1], flush=True)

    image_path, mask_path = pairs("davis2016", 1)[0]
    rgb = np.asarray(Image.open(image_path).convert("RGB").resize((4000, 2248),
                                                                  Image.Resampling.BICUBIC))
    gt = np.asarray(Image.open(mask_path).convert("L")).astype(np.float32) / 255.0
    alpha = refine_alpha(rgb, gt, "guided")          # 854 px mask -> 4000 px alpha
    timing = {}
    for fg in (False, True):
        start = time.process_time()
        rgba = cutout_array(rgb, alpha, fg)
        timing[fg] = time.process_time() - start
    soft_frac = float(((rgba[..., 3] > 0) & (rgba[..., 3] < 255)).mean())
    rows.append({"input": f"{image_path.stem} upscaled to 4000x2248 (9 MP), guided alpha",
                 "soft pixels": f"{100 * soft_frac:.1f} %",
                 "cut-out CPU s / MP": timing[False] / 9.0,
                 "with fg_estimate CPU s / MP": timing[True] / 9.0})
    print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="run this model (registry name or checkpoint path)")
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--limit", type=int, default=10, help="pairs per source")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--stand-in", action="store_true", help="also score stand-in masks")
    parser.add_argument("--factor", type=int, default=4, help="stand-in downscale factor")
    parser.add_argument("--known-alpha", action="store_true",
                        help="also score the composite with a known alpha")
    parser.add_argument("--skip-fg", action="store_true")
    args = parser.parse_args()
    if not SHARED_DATA.is_dir():
        raise SystemExit(f"needs the shared data at {SHARED_DATA}")
    import torch

    torch.set_num_threads(1)
    print("machine: " + "; ".join(f"{k}: {v}" for k, v in machine_description().items()))
    modes = tuple(args.modes)
    columns = ["set", "mode", "MAE", "BIoU", "Sm", "maxF", "wF", "CPU s / MP"]
    tables = []
    if args.model:
        tables.append((f"Network masks: {args.model}", network_masks(
            args.model, args.image_size, args.limit, modes)))
    if args.stand_in:
        for blur in (0.0, 1.5):
            tables.append((f"Stand-in: ground truth reduced {args.factor}x, blur {blur:g} px",
                           stand_in_masks(args.limit, args.factor, blur, modes)))
    for title, rows in tables:
        print(f"\n### {title}\n")
        print(markdown_table(rows, columns))
    if args.known_alpha:
        rows = known_alpha(modes)
        print("\n### Known alpha: cat over coffee, true alpha reduced 4x as the network mask\n")
        print(markdown_table(rows, ["mode", "alpha MAE", "alpha MAE, soft region",
                                    "colour error, soft region (0-255)"]))
    if not args.skip_fg:
        fg = foreground_cost(args.limit)
        print("\n### Foreground colour estimation\n")
        print(markdown_table(fg, ["input", "soft pixels", "cut-out CPU s / MP",
                                  "with fg_estimate CPU s / MP"]))


if __name__ == "__main__":
    main()
