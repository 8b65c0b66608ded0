"""Seconds per 1,000 pairs for the metric suite, against calling pysodmetrics directly.

    python benchmarks/eval_speed.py [--pairs 8] [--sizes 512 1024] [--hce]

Real masks from ../shared/data are resized to SIZE x SIZE; the prediction is the mask blurred
(a soft map, as a model gives). Both sides get the same uint8 arrays already in memory, so this
times the metrics only (no file decoding):

- ``wrapper``: :class:`s3od.evaluation.SODMetrics` (all metrics + boundary IoU);
- ``direct``: the same pysodmetrics classes called the way its README does
  (``step(pred, gt)`` on each, so each one normalises the inputs again).

The ratio wrapper / direct is the wrapper's overhead (below 1 means it is faster, because it
normalises once). Uses one OpenCV thread to stay light on a shared machine.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"


def load_pairs(count: int, size: int) -> list[tuple[np.ndarray, np.ndarray]]:
    masks = sorted((DATA / "sod-bsds300" / "masks").glob("*.png"))[: count // 2]
    masks += sorted((DATA / "davis2016" / "masks").glob("*.png"))[: count - len(masks)]
    pairs = []
    for path in masks:
        gt = Image.open(path).convert("L").resize((size, size), Image.NEAREST)
        pred = gt.filter(ImageFilter.GaussianBlur(size / 100))
        pairs.append((np.asarray(pred, np.uint8), np.asarray(gt, np.uint8)))
    return pairs


def run_wrapper(pairs, hce: bool) -> float:
    from s3od.evaluation import SODMetrics

    start = time.perf_counter()
    metrics = SODMetrics(hce=hce)
    for pred, gt in pairs:
        metrics.step(pred, gt)
    metrics.results()
    return time.perf_counter() - start


def run_direct(pairs, hce: bool) -> float:
    import py_sod_metrics as psm

    start = time.perf_counter()
    suite = [psm.MAE(), psm.Smeasure(), psm.WeightedFmeasure(), psm.Emeasure(),
             psm.FmeasureV2({
                 "fm": psm.FmeasureHandler(with_dynamic=True, with_adaptive=True),
                 "iou": psm.IOUHandler(False, False, with_binary=True),
                 "dice": psm.DICEHandler(False, False, with_binary=True),
             })]
    if hce:
        suite.append(psm.HumanCorrectionEffortMeasure())
    for pred, gt in pairs:
        for metric in suite:
            metric.step(pred=pred, gt=gt)
    for metric in suite:
        metric.get_results()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=8, help="pairs timed per size")
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    parser.add_argument("--hce", action="store_true", help="include HCE on both sides")
    args = parser.parse_args(argv)
    if not DATA.is_dir():
        print(f"needs the shared data at {DATA}", file=sys.stderr)
        return 2
    import cv2

    cv2.setNumThreads(1)
    warnings.simplefilter("ignore")
    print(f"{'size':>6} {'pairs':>5} {'wrapper s/1k':>13} {'direct s/1k':>12} {'ratio':>6}"
          f"{'  (HCE on)' if args.hce else ''}")
    for size in args.sizes:
        pairs = load_pairs(args.pairs, size)
        run_wrapper(pairs[:1], args.hce)  # warm imports and caches
        run_direct(pairs[:1], args.hce)
        wrapper = run_wrapper(pairs, args.hce) / len(pairs) * 1000
        direct = run_direct(pairs, args.hce) / len(pairs) * 1000
        print(f"{size:>6} {len(pairs):>5} {wrapper:>13.1f} {direct:>12.1f} "
              f"{wrapper / direct:>6.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
