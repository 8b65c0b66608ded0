"""Quality of the bundled s3od-lite against baselines that need no weights (issue 5).

Scores every method with :func:`s3od.evaluation.benchmark_model` on the same images:

- ``s3od-lite``: the bundled weights (or ``--model``), at each ``--sizes`` input side;
- spectral residual and fine-grained static saliency from OpenCV contrib (``cv2.saliency``),
  each thresholded with Otsu (the rows the issue asks for) and as the raw map (so the
  threshold-free metrics, maxF and meanEm, see the baseline at its best);
- GrabCut started from a centred rectangle (10 % margin on every side), and that rectangle
  itself as a mask, which shows what "the object is in the middle" alone is worth.

Three tables: the clean evaluation split (the 70 held-out sod-bsds300 ids of
``splits/lite_eval_bsds300.txt``, read through a temporary folder of symlinks), DAVIS-2016 dev
and the s3od fixture. Both of the last two were in the lite training pool (``dataset=lite_real``)
and DAVIS shares its 13 sequences with ``train/davis2016``: they are reported apart and are not a
measure of generalisation.

Besides the pysodmetrics suite, the clean split gets a plain per-image IoU (prediction >= 0.5,
mask > 128, no min-max normalisation: the definition ``tests/test_default_model.py`` uses) with a
paired bootstrap interval of s3od-lite's lead over each baseline, and the same IoU for the
headline model run through deliberately broken pipelines (RGB read as BGR, no ImageNet
normalisation, aspect ratio not kept, the candidate ranking inverted): the regressions the
test's floor is meant to catch; and how the model's candidates and its IoU head fare.

OpenCV contrib replaces the plain wheel (both provide ``cv2``)::

    pip uninstall -y opencv-python-headless && pip install "s3od[eval,baselines]"

Examples:
    python benchmarks/quality.py                          # writes docs/quality.md
    python benchmarks/quality.py --model runs/lite/checkpoints/lite_stage2/last.ckpt \\
        --out /tmp/q.md --sizes 320
    git show 6a7cda1:src/s3od/weights/s3od-lite.safetensors > /tmp/s3od-lite-stage1.safetensors
    python benchmarks/quality.py --model bundled --model /tmp/s3od-lite-stage1.safetensors
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/common.py
SHARED = REPO.parent / "shared"
SPLIT_FILE = REPO / "src" / "synth_sod" / "model_training" / "splits" / "lite_eval_bsds300.txt"
BUNDLED = REPO / "src" / "s3od" / "weights" / "s3od-lite.safetensors"
#: Margin of the centred rectangle GrabCut starts from, as a fraction of each side.
RECT_MARGIN = 0.1
GRABCUT_ITERATIONS = 5
TABLE_KEYS = ("MAE", "maxF", "Sm", "meanEm", "IoU", "wF", "BIoU")
BOOTSTRAP_ROUNDS = 10_000


# ----------------------------------------------------------------------------- baselines


def _cv2() -> Any:
    import cv2

    if not hasattr(cv2, "saliency"):
        raise SystemExit(
            "cv2.saliency is missing: this is the plain OpenCV wheel. Replace it with contrib:\n"
            "  pip uninstall -y opencv-python-headless && pip install 's3od[baselines]'"
        )
    return cv2


def _otsu(saliency: np.ndarray) -> np.ndarray:
    """Float map in [0, 1] -> binary float map, split at Otsu's threshold."""
    cv2 = _cv2()
    u8 = np.clip(np.rint(saliency * 255.0), 0, 255).astype(np.uint8)
    _, binary = cv2.threshold(u8, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return (binary > 0).astype(np.float32)


def _saliency(kind: str, rgb: np.ndarray) -> np.ndarray:
    cv2 = _cv2()
    algo = (cv2.saliency.StaticSaliencySpectralResidual_create() if kind == "spectral"
            else cv2.saliency.StaticSaliencyFineGrained_create())
    ok, sal = algo.computeSaliency(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        return np.zeros(rgb.shape[:2], np.float32)
    sal = sal.astype(np.float32)
    if sal.max() > 1.0:  # some builds return 0..255
        sal /= 255.0
    return sal


def centre_rect(shape: tuple[int, ...], margin: float = RECT_MARGIN) -> tuple[int, int, int, int]:
    """``(x, y, w, h)`` of the centred rectangle leaving ``margin`` of each side outside."""
    h, w = shape[:2]
    x0, y0 = round(w * margin), round(h * margin)
    return x0, y0, w - 2 * x0, h - 2 * y0


def grabcut_centre(rgb: np.ndarray) -> np.ndarray:
    """GrabCut from the centred rectangle; seeded so reruns give the same masks."""
    cv2 = _cv2()
    cv2.setRNGSeed(0)
    mask = np.zeros(rgb.shape[:2], np.uint8)
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    cv2.grabCut(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), mask, centre_rect(rgb.shape), bgd, fgd,
                GRABCUT_ITERATIONS, cv2.GC_INIT_WITH_RECT)
    return np.isin(mask, (cv2.GC_FGD, cv2.GC_PR_FGD)).astype(np.float32)


def rect_mask(rgb: np.ndarray) -> np.ndarray:
    x, y, w, h = centre_rect(rgb.shape)
    out = np.zeros(rgb.shape[:2], np.float32)
    out[y:y + h, x:x + w] = 1.0
    return out


BASELINES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "spectral residual + Otsu": lambda rgb: _otsu(_saliency("spectral", rgb)),
    "fine-grained + Otsu": lambda rgb: _otsu(_saliency("fine", rgb)),
    "GrabCut (centred rect)": grabcut_centre,
    "spectral residual (raw map)": lambda rgb: _saliency("spectral", rgb),
    "fine-grained (raw map)": lambda rgb: _saliency("fine", rgb),
    "centred rect (GrabCut's start)": rect_mask,
}


@dataclass
class _Mask:
    predicted_mask: np.ndarray


class MapPredictor:
    """Duck-types the part of ``BackgroundRemoval`` that ``benchmark_model`` calls."""

    def __init__(self, name: str, fn: Callable[[np.ndarray], np.ndarray]) -> None:
        self.model_name = name
        self.fn = fn

    def remove_backgrounds(self, images: list[np.ndarray], batch_size: int = 1) -> list[_Mask]:
        return [_Mask(self.fn(rgb)) for rgb in images]


class TeacherPredictor(MapPredictor):
    """An ONNX saliency model (rembg's U²-Net family) through the pseudo-label step's teacher:
    the same preprocessing rembg applies, optionally averaged with its mirror image."""

    def __init__(self, name: str, path: Path, flip: bool = False) -> None:
        from synth_sod.data_generation.pseudo_label import TTA, OnnxTeacher, label_image

        teacher = OnnxTeacher(path)
        tta = TTA(flip=flip)
        super().__init__(name, lambda rgb: label_image(teacher, rgb, tta)[0])
        self.path = path
        self.flip = flip


def parse_teacher(spec: str) -> tuple[str, Path, bool]:
    """``NAME=path/to/model.onnx`` or ``NAME=path@flip`` -> (name, path, flip)."""
    if "=" not in spec:
        raise SystemExit(f"--onnx-teacher wants NAME=path.onnx[@flip], got {spec!r}")
    name, rest = spec.split("=", 1)
    flip = rest.endswith("@flip")
    path = Path(rest[:-5] if flip else rest)
    if not path.is_file():
        raise SystemExit(f"--onnx-teacher {name}: {path} not found")
    return name, path, flip


# ----------------------------------------------------------------------------- data


def read_split(path: Path = SPLIT_FILE) -> list[str]:
    """Ids of the evaluation split, one per line; ``#`` lines are comments."""
    lines = (line.strip() for line in path.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def link_subset(source: Path, ids: list[str], dest: Path) -> Path:
    """A set folder of symlinks (``images/``, ``masks/``) to ``ids`` of ``source``."""
    for sub in ("images", "masks"):
        (dest / sub).mkdir(parents=True, exist_ok=True)
        files = {p.stem: p for p in (source / sub).iterdir()}
        missing = [i for i in ids if i not in files]
        if missing:
            raise SystemExit(f"{source / sub} lacks {len(missing)} split ids, e.g. {missing[:3]}")
        for i in ids:
            (dest / sub / files[i].name).symlink_to(files[i].resolve())
    return dest


def plain_ious(pred_dir: Path, mask_dir: Path, ids: list[str]) -> list[float]:
    """Per-image IoU of a saved prediction (>= 128) with the mask (> 128), in ``ids`` order."""
    from s3od.evaluation import read_mask

    masks = {p.stem: p for p in mask_dir.iterdir()}
    out = []
    for i in ids:
        pred = read_mask(pred_dir / f"{i}.png") >= 128
        gt = read_mask(masks[i]) > 128
        union = np.logical_or(pred, gt).sum()
        out.append(float(np.logical_and(pred, gt).sum() / union) if union else 1.0)
    return out


def paired_bootstrap(a: list[float], b: list[float], rounds: int = BOOTSTRAP_ROUNDS,
                     seed: int = 0) -> tuple[float, float, float]:
    """Mean of ``a - b`` and its 95 % percentile interval over images resampled with return."""
    diff = np.asarray(a) - np.asarray(b)
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), (rounds, len(diff)))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(diff.mean()), float(lo), float(hi)


# ----------------------------------------------------------------------------- report


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True,
                                   timeout=10).stdout.splitlines():
            if line.startswith("Model name:"):
                cpu = line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    import cv2
    import torch

    return (f"{cpu}, {os.cpu_count()} cores, {platform.system()}, Python "
            f"{platform.python_version()}, torch {torch.__version__} (threads "
            f"{torch.get_num_threads()}), OpenCV {cv2.__version__}")


def load_text() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown: one line per method, best value of each column in bold."""
    from s3od.evaluation.metrics import SPECS

    keys = [k for k in TABLE_KEYS if any(r["metrics"].get(k) is not None for r in rows)]
    best = {}
    for k in keys:
        values = [r["metrics"][k] for r in rows if r["metrics"].get(k) is not None]
        best[k] = (max if SPECS[k].higher_is_better else min)(values)
    head = ["Method", "N", *(f"{k} {'↑' if SPECS[k].higher_is_better else '↓'}" for k in keys),
            "s/img"]
    lines = ["| " + " | ".join(head) + " |", "|:--|--:|" + "--:|" * (len(keys) + 1)]
    for r in rows:
        cells = []
        for k in keys:
            v = r["metrics"].get(k)
            text = "-" if v is None else f"{v:.3f}"
            cells.append(f"**{text}**" if v is not None and v == best[k] else text)
        per_img = r["seconds"] / r["count"] if r["count"] else float("nan")
        lines.append(f"| {r['model']} | {r['count']} | " + " | ".join(cells)
                     + f" | {per_img:.3f} |")
    return "\n".join(lines)


def margins(rows: list[dict[str, Any]], ours: str, baselines: list[str]) -> str:
    """Lead of ``ours`` over the best baseline, metric by metric."""
    from s3od.evaluation.metrics import SPECS

    by_model = {r["model"]: r["metrics"] for r in rows}
    parts = []
    for k in TABLE_KEYS:
        values = {b: by_model[b][k] for b in baselines if by_model.get(b, {}).get(k) is not None}
        if not values or by_model[ours].get(k) is None:
            continue
        higher = SPECS[k].higher_is_better
        name, best = (max if higher else min)(values.items(), key=lambda kv: kv[1])
        lead = by_model[ours][k] - best if higher else best - by_model[ours][k]
        parts.append(f"| {k} | {by_model[ours][k]:.3f} | {best:.3f} ({name}) | {lead:+.3f} |")
    return "\n".join(["| Metric | " + ours + " | best baseline | lead |", "|:--|--:|--:|--:|",
                      *parts])


# ----------------------------------------------------------------------------- regressions


def _iou(pred: np.ndarray, gt: np.ndarray) -> float:
    union = np.logical_or(pred, gt).sum()
    return float(np.logical_and(pred, gt).sum() / union) if union else 1.0


def pipeline_checks(remover: Any, images: list[np.ndarray], masks: list[np.ndarray],
                    batch_size: int) -> tuple[dict[str, float], dict[str, Any]]:
    """Plain mean IoU as shipped and through deliberately broken pipelines; candidate stats.

    Returns:
        ``{pipeline: mean IoU}`` and, for the shipped pipeline, each candidate's mean IoU, how
        often the IoU head picks it, and the mean IoU of the best candidate per image (oracle).
    """
    from unittest import mock

    from PIL import Image

    from s3od import transforms

    def mean_iou(preds: list[np.ndarray]) -> float:
        return float(np.mean([_iou(p >= 0.5, g) for p, g in zip(preds, masks, strict=True)]))

    def run(rgbs: list[np.ndarray]) -> list[Any]:
        return remover.remove_backgrounds(rgbs, batch_size=batch_size)

    shipped = run(images)
    out = {"as shipped": mean_iou([r.predicted_mask for r in shipped]),
           "lowest-scored candidate (ranking inverted)": mean_iou(
               [r.all_masks[int(np.argmin(r.all_ious))] for r in shipped]),
           "RGB fed as BGR": mean_iou([r.predicted_mask for r in
                                       run([np.ascontiguousarray(x[..., ::-1]) for x in images])])}
    with mock.patch.object(transforms, "normalize", lambda t: t.float() / 255.0):
        out["no ImageNet mean/std (0..1 input)"] = mean_iou(
            [r.predicted_mask for r in run(images)])
    size = remover.image_size
    squares = [np.asarray(Image.fromarray(x).resize((size, size), Image.BILINEAR))
               for x in images]
    stretched = []
    for rgb, result in zip(images, run(squares), strict=True):
        back = Image.fromarray(result.predicted_mask.astype(np.float32), "F")
        stretched.append(np.asarray(back.resize((rgb.shape[1], rgb.shape[0]), Image.BILINEAR)))
    out["stretched to a square (aspect not kept)"] = mean_iou(stretched)

    per = np.array([[_iou(m >= 0.5, g) for m in r.all_masks] for r, g in
                    zip(shipped, masks, strict=True)])
    picked = np.array([r.best_index for r in shipped])
    scores = np.array([r.all_ious for r in shipped])
    candidates = {
        "mean_iou": per.mean(axis=0).tolist(),
        "mean_score": scores.mean(axis=0).tolist(),
        "picked": np.bincount(picked, minlength=per.shape[1]).tolist(),
        "oracle": float(per.max(axis=1).mean()),
        "score_iou_corr": float(np.corrcoef(scores.ravel(), per.ravel())[0, 1]),
        # The pick counts as right when its IoU equals the best one (ties included).
        "picks_best": float(np.mean(per[np.arange(len(per)), picked] >= per.max(axis=1))),
        # How much the pick loses: within 0.02 of the best candidate, and the mean shortfall.
        "picks_within_002": float(np.mean(per[np.arange(len(per)), picked]
                                          >= per.max(axis=1) - 0.02)),
        "regret": float(np.mean(per.max(axis=1) - per[np.arange(len(per)), picked])),
        "best_gap_median": float(np.median(np.sort(per, axis=1)[:, -1]
                                           - np.sort(per, axis=1)[:, -2])),
        "picked_iou": float(per[np.arange(len(per)), picked].mean()),
    }
    # What the demo tells the user (RemovalResult.assessment) against the measured IoU.
    verdicts: dict[str, list[float]] = {}
    for r, row, k in zip(shipped, per, picked, strict=True):
        verdicts.setdefault(r.assessment().verdict, []).append(float(row[k]))
    candidates["verdicts"] = {v: {"images": len(x), "mean_iou": float(np.mean(x)),
                                  "below_0.5": int(np.sum(np.array(x) < 0.5))}
                              for v, x in sorted(verdicts.items())}
    return out, candidates


# ----------------------------------------------------------------------------- speed


def speed_worker(job: dict[str, Any]) -> dict[str, Any]:
    """One method in a fresh process: load it, warm up, time photo file -> mask at photo size.

    End to end per photo, batch 1, as a user running one photo at a time sees it: decoding
    the file, preprocessing, the network, resizing the mask back. Peak RSS is the process's.
    """
    from common import peak_rss_mb

    from s3od.imageio import load_image

    start = time.perf_counter()
    if job["kind"] == "teacher":
        predictor = TeacherPredictor(job["name"], Path(job["model"]), job.get("flip", False))

        def run(path: str) -> np.ndarray:
            return predictor.fn(load_image(path))
    else:
        from s3od import load_remover

        remover = load_remover(job["model"], precision=job.get("precision", "fp32"),
                               device="cpu", image_size=job.get("size"))

        def run(path: str) -> np.ndarray:
            return remover.remove_background(load_image(path)).predicted_mask
    load_s = time.perf_counter() - start
    paths = job["images"]
    for path in paths[:2]:  # warm-up: lazy initialisation, allocator, oneDNN primitives
        run(path)
    times = []
    for path in paths:
        t0 = time.perf_counter()
        mask = run(path)
        times.append(time.perf_counter() - t0)
        assert mask.ndim == 2
    return {"median_s": float(np.median(times)), "mean_s": float(np.mean(times)),
            "load_s": load_s, "peak_rss_mb": peak_rss_mb(), "n": len(times)}


def speed_table(jobs: list[tuple[str, dict[str, Any], Path]], baseline: str | None,
                ) -> tuple[str, dict[str, Any]]:
    """Run every job in its own process, one after the other; markdown table and raw rows."""
    from common import run_worker

    rows = {}
    for label, job, _ in jobs:
        print(f"speed: {label} ...", file=sys.stderr, flush=True)
        rows[label] = run_worker(Path(__file__), job, timeout=1800)
    base = rows.get(baseline or "", {}).get("median_s")
    out = ["| Method | weights MB | ms / photo (median) | photos / s | "
           f"x faster than {baseline or '-'} | load s | peak RSS MB |",
           "|:--|--:|--:|--:|--:|--:|--:|"]
    for label, _, weights in jobs:
        r = rows[label]
        size_mb = weights.stat().st_size / 1e6 if weights.is_file() else float("nan")
        if "error" in r:
            out.append(f"| {label} | {size_mb:.1f} | failed: {r['error']} | | | | |")
            continue
        ratio = f"{base / r['median_s']:.2f}" if base else ""
        out.append(f"| {label} | {size_mb:.1f} | {1000 * r['median_s']:.1f} | "
                   f"{1 / r['median_s']:.1f} | {ratio} | {r['load_s']:.2f} | "
                   f"{r['peak_rss_mb']:.0f} |")
    return "\n".join(out), rows


def speed_jobs(spec: str, teachers: list[tuple[str, Path, bool]], images: list[str],
               size: int, folder: Path) -> list[tuple[str, dict[str, Any], Path]]:
    """Our headline model on PyTorch (``s3od remove``'s default precision, auto) and exported
    to ONNX Runtime, and every ONNX teacher, on the same photos."""
    from s3od.export import export_onnx

    model_id = "s3od-lite" if spec == "bundled" else spec.split("=", 1)[-1]
    weights = BUNDLED if spec == "bundled" else Path(model_id)
    onnx_path = folder / "ours.onnx"
    export_onnx(model_id, onnx_path, image_size=size)
    label = spec.split("=", 1)[0] if "=" in spec else "s3od-lite"
    jobs = [
        (f"{label} @{size}, PyTorch (precision auto)",
         {"kind": "s3od", "model": model_id, "size": size, "precision": "auto",
          "images": images}, weights),
        (f"{label} @{size}, ONNX Runtime",
         {"kind": "s3od", "model": str(onnx_path), "size": size, "images": images}, onnx_path),
    ]
    for name, path, flip in teachers:
        jobs.append((name, {"kind": "teacher", "name": name, "model": str(path), "flip": flip,
                            "images": images}, path))
    return jobs


# ----------------------------------------------------------------------------- main


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", default=None,
                        help="checkpoint path, NAME=path or registry name; repeat to compare "
                             "several, the first is the headline ('bundled': the shipped "
                             "s3od-lite, default)")
    parser.add_argument("--sizes", default="320,512",
                        help="input sides for the models; the first is the headline")
    parser.add_argument("--shared", type=Path, default=SHARED, help="the ../shared folder")
    parser.add_argument("--baselines", default=",".join(BASELINES),
                        help="comma list of baseline names (empty for none)")
    parser.add_argument("--no-davis", action="store_true", help="skip the DAVIS/fixture tables")
    parser.add_argument("--no-regressions", action="store_true",
                        help="skip the broken-pipeline rows")
    parser.add_argument("--onnx-teacher", action="append", default=[],
                        help="NAME=path.onnx[@flip]: an ONNX saliency model run as rembg runs "
                             "it (e.g. u2net, u2netp from rembg's wheels); @flip averages its "
                             "mirror image; repeatable")
    parser.add_argument("--speed-images", type=int, default=20,
                        help="photos of the split for the end-to-end speed table (0: skip)")
    parser.add_argument("--speed-baseline", default="u2netp",
                        help="ONNX teacher the speed ratios are relative to")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "quality.md")
    parser.add_argument("--json", type=Path, default=None,
                        help="also write every row and per-image IoUs here")
    return parser.parse_args(argv)


def _load_models(specs: list[str], sizes: list[int]) -> tuple[list[tuple[str, Any]], list[str]]:
    """``[(label, remover)]`` for every model x size, and one provenance line per model."""
    from s3od import BackgroundRemoval

    methods, notes = [], []
    for spec in specs:
        name = None
        if "=" in spec and Path(spec.split("=", 1)[1]).is_file():  # NAME=path/to/weights
            name, spec = spec.split("=", 1)
        path = BUNDLED if spec == "bundled" else Path(spec)
        # Hash before loading: the file may be replaced while a long run goes on.
        digest = f", sha256 `{sha256(path)[:16]}`" if path.is_file() else ""
        model_id = "s3od-lite" if spec == "bundled" else spec
        for size in sizes:
            remover = BackgroundRemoval(model_id, image_size=size, device="cpu")
            methods.append((f"{name or remover.model_name} @{size}", remover))
        notes.append(f"- model `{name or remover.model_name}`: {remover.source}{digest}; "
                     f"runtime {remover.runtime.describe()}")
    return methods, notes


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.worker:
        print(json.dumps(speed_worker(json.loads(args.worker))))
        return 0
    import torch

    from s3od.evaluation import benchmark_model, read_mask
    from s3od.imageio import load_image

    if args.threads:
        torch.set_num_threads(args.threads)
    data = args.shared / "data"
    if not (data / "sod-bsds300").is_dir():
        raise SystemExit(f"{data / 'sod-bsds300'} not found: pass --shared /path/to/shared")
    baseline_names = [b for b in args.baselines.split(",") if b]
    unknown = [b for b in baseline_names if b not in BASELINES]
    if unknown:
        raise SystemExit(f"unknown baselines {unknown}; choose from {', '.join(BASELINES)}")
    if baseline_names:
        _cv2()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    ids = read_split()
    command = " ".join(["python benchmarks/quality.py", *(sys.argv[1:] if argv is None else argv)])
    load_start, started = load_text(), time.perf_counter()

    models, model_notes = _load_models(args.model or ["bundled"], sizes)
    ours = models[0][0]
    teachers = [parse_teacher(t) for t in args.onnx_teacher]
    methods = (models + [(name, TeacherPredictor(name, path, flip))
                         for name, path, flip in teachers]
               + [(b, MapPredictor(b, BASELINES[b])) for b in baseline_names])
    comparison = [name for name, _, _ in teachers] + baseline_names

    results: dict[str, list[dict[str, Any]]] = {"clean": [], "davis2016": [], "s3od-fixture": []}
    per_image: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="s3od-quality-") as tmp:
        clean = link_subset(data / "sod-bsds300", ids, Path(tmp) / "sod-bsds300-eval")
        sets = {"clean": clean}
        if not args.no_davis:
            sets.update({k: data / k for k in ("davis2016", "s3od-fixture")
                         if (data / k).is_dir()})
        for label, method in methods:
            for key, folder in sets.items():
                pred_dir = Path(tmp) / "pred" / label.replace(" ", "_").replace("/", "_")
                print(f"{label} / {key} ...", file=sys.stderr, flush=True)
                row, = benchmark_model(method, folder, name=label, batch_size=args.batch_size,
                                       save_pred=pred_dir if key == "clean" else None)
                results[key].append(row)
                if key == "clean":
                    per_image[label] = plain_ious(pred_dir / row["set"], clean / "masks", ids)
        regressions: dict[str, float] = {}
        candidates: dict[str, Any] = {}
        if not args.no_regressions:
            print(f"{ours} / broken pipelines ...", file=sys.stderr, flush=True)
            images = [load_image(next((clean / "images").glob(f"{i}.*"))) for i in ids]
            masks = [read_mask(next((clean / "masks").glob(f"{i}.*"))) > 128 for i in ids]
            regressions, candidates = pipeline_checks(models[0][1], images, masks,
                                                      args.batch_size)
        speed_md, speed_rows = "", {}
        if args.speed_images:
            photos = [str(next((clean / "images").glob(f"{i}.*")).resolve())
                      for i in ids[:args.speed_images]]
            jobs = speed_jobs((args.model or ["bundled"])[0], teachers, photos, sizes[0],
                              Path(tmp))
            speed_md, speed_rows = speed_table(
                jobs, args.speed_baseline if args.speed_baseline in
                [t[0] for t in teachers] else None)
    elapsed = time.perf_counter() - started

    lines = [
        "# s3od-lite quality vs. rembg's models and baselines",
        "",
        "Written by `benchmarks/quality.py`; every number below was measured by it in one run.",
        "",
        f"- command: `{command}`",
        f"- date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC, "
        f"{elapsed / 60:.1f} min; load average at start {load_start}, at end {load_text()}",
        f"- machine: {machine()}",
        *model_notes,
        "- metrics: `s3od.evaluation` (pysodmetrics conventions: predictions min-max normalised "
        "per image; IoU at 0.5 after that); best value per column in bold; s/img is the whole "
        "predict + score loop per image on this (shared) machine.",
        "",
        f"## Clean evaluation split: sod-bsds300, {len(ids)} held-out images",
        "",
        "Ids in `src/synth_sod/model_training/splits/lite_eval_bsds300.txt`; never trained on.",
        "",
        table(results["clean"]),
        "",
    ]
    if comparison:
        lines += [
            f"### Lead of {ours} over the best other method per metric",
            "",
            margins(results["clean"], ours, comparison),
            "",
            "### Plain per-image IoU (threshold 0.5, no normalisation) and paired bootstrap",
            "",
            "The definition `tests/test_default_model.py` checks. Interval: 95 % percentile "
            f"over {BOOTSTRAP_ROUNDS} resamplings of the {len(ids)} images (paired).",
            "",
            "| Method | mean IoU | median | images with IoU < 0.3 | "
            f"{ours} lead (95 % CI) |",
            "|:--|--:|--:|--:|--:|",
        ]
        for label, values in per_image.items():
            lead = ""
            if label != ours:
                mean, lo, hi = paired_bootstrap(per_image[ours], values)
                lead = f"{mean:+.3f} ({lo:+.3f} .. {hi:+.3f})"
            lines.append(f"| {label} | {np.mean(values):.3f} | {np.median(values):.3f} | "
                         f"{sum(v < 0.3 for v in values)} | {lead} |")
        lines.append("")
    if regressions:
        lines += [
            f"### {ours} through broken pipelines (plain mean IoU, same {len(ids)} images)",
            "",
            "What the quality floor of `tests/test_default_model.py` has to catch.",
            "",
            "| Pipeline | mean IoU | change |",
            "|:--|--:|--:|",
            *(f"| {k} | {v:.3f} | {v - regressions['as shipped']:+.3f} |"
              for k, v in regressions.items()),
            "",
            f"### {ours}: the candidates and the IoU head",
            "",
            "| Candidate | mean IoU | mean predicted IoU | picked by the IoU head |",
            "|:--|--:|--:|--:|",
            *(f"| {i} | {m:.3f} | {sc:.3f} | {n} / {len(ids)} |" for i, (m, sc, n) in
              enumerate(zip(candidates["mean_iou"], candidates["mean_score"],
                            candidates["picked"], strict=True))),
            f"| best per image (oracle) | {candidates['oracle']:.3f} | | |",
            "",
            "Correlation of predicted and measured IoU over all candidates: "
            f"{candidates['score_iou_corr']:.2f}. The IoU head picks the truly best candidate "
            f"(or one as good) on {candidates['picks_best']:.0%} of the images, one within 0.02 "
            f"IoU of the best on {candidates['picks_within_002']:.0%}; the pick averages "
            f"{candidates['picked_iou']:.3f}, {candidates['regret']:.3f} below the oracle. "
            "Median IoU gap between the best and the second-best candidate of an image: "
            f"{candidates['best_gap_median']:.3f}.",
            "",
            "What the demo says (`RemovalResult.assessment()`, from the IoU head's scores) "
            "against the measured IoU of the pick:",
            "",
            "| Verdict | images | mean IoU | images with IoU < 0.5 |",
            "|:--|--:|--:|--:|",
            *(f"| {v} | {d['images']} | {d['mean_iou']:.3f} | {d['below_0.5']} |"
              for v, d in candidates["verdicts"].items()),
            "",
        ]
    if speed_md:
        lines += [
            f"## End-to-end speed per photo (first {args.speed_images} photos of the split)",
            "",
            "Each method in a fresh process, one photo at a time (batch 1), after two warm-up "
            "photos: decode the file, preprocess, run the network, mask back at the photo's "
            "size. ONNX models run on ONNX Runtime's CPU provider with its default threads; "
            "PyTorch with its default threads. Peak RSS is the whole process's.",
            "",
            speed_md,
            "",
        ]
    if results["davis2016"]:
        lines += [
            "## DAVIS-2016 dev (not clean)",
            "",
            "`../shared/data/davis2016` (39 frames of 13 sequences). These frames are in the "
            "lite training pool, and `train/davis2016` holds other frames of the same "
            "sequences: this is a training-fit number, not generalisation.",
            "",
            table(results["davis2016"]),
            "",
        ]
    if results["s3od-fixture"]:
        lines += [
            "## s3od fixture (not clean)",
            "",
            "One 1024 px image from the reference repository, probably generated, soft "
            "pseudo-label mask; also in the lite training pool. Kept for parity only.",
            "",
            table(results["s3od-fixture"]),
            "",
        ]
    text = "\n".join(lines)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"ids": ids, "rows": results, "plain_iou": per_image,
                                         "regressions": regressions,
                                         "candidates": candidates, "speed": speed_rows},
                                        indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
