"""Quality of s3od-lite against the peers a user would pick offline, on the dev split (issue 21).

One run gives every number issue 21's targets are judged by:

- **the dev split**, two annotation conventions reported apart and pooled: the 70 held-out
  sod-bsds300 ids of ``splits/lite_eval_bsds300.txt`` and the DAVIS-2016 frames of the 4
  sequences held out by sequence (``splits/dev_davis2016_data.txt``: frames of
  ``../shared/data/davis2016``; ``splits/dev_davis2016_train.txt``: frames of
  ``../shared/train/davis2016``). The pooled table scores every image of both once;
- **peers** (``--peers``): rembg's U²-Net, U²-Net with its mirror image averaged, U²-Net-p, and
  IMG.LY's ISNet medium and small. Their files come from ``python benchmarks/peers.py fetch``
  (cached outside the repository, sha256 checked); ISNet is AGPL: a row here, nothing more;
- **metrics**: the ``s3od.evaluation`` suite (pysodmetrics conventions) with boundary IoU, plus
  a plain per-image IoU (prediction >= 0.5, mask > 128, no min-max normalisation: the
  definition ``tests/test_default_model.py`` uses) with paired bootstrap intervals;
- **ranking** of the s3od models' candidates (:func:`ranking_stats`): mean regret, the share
  of images whose candidates really differ, how often the pick is near-best there, oracle and
  best-fixed-candidate IoU;
- **speed**: every method end to end per photo in a fresh process, s3od-lite at its defaults
  and u2netp among them (:func:`speed_worker`);
- optionally the OpenCV baselines (``--baselines``; spectral residual and fine-grained
  saliency, GrabCut from a centred rectangle) and the headline model through deliberately
  broken pipelines (what the test's floor must catch).

``--model`` takes a checkpoint or ``.safetensors`` file (or ``NAME=path``, a registry name,
``bundled``), so interim weights can be scored; ``--limit N`` / ``--quick`` make smoke runs
(and then write under ``runs/quality/`` unless ``--out`` says otherwise). Every run writes a
JSON next to its markdown with all rows, per-image IoUs and candidate IoUs.

OpenCV contrib replaces the plain wheel (both provide ``cv2``) for the baselines::

    pip uninstall -y opencv-python-headless && pip install "s3od[eval,baselines]"

Examples:
    python benchmarks/peers.py fetch                       # once: the peers' ONNX files
    python benchmarks/quality.py --baselines ""            # writes docs/quality.md + .json
    python benchmarks/quality.py --quick --model runs/v6/interim.safetensors
    python benchmarks/quality.py --model v6=runs/lite/last.ckpt --model bundled --limit 20 \\
        --out /tmp/q.md
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/common.py, peers.py
SHARED = REPO.parent / "shared"
SPLITS = REPO / "src" / "synth_sod" / "model_training" / "splits"
SPLIT_FILE = SPLITS / "lite_eval_bsds300.txt"
#: DAVIS part of the dev split: (split file, folder of ``shared`` holding its frames).
DAVIS_DEV = ((SPLITS / "dev_davis2016_data.txt", Path("data") / "davis2016"),
             (SPLITS / "dev_davis2016_train.txt", Path("train") / "davis2016"))
BUNDLED = REPO / "src" / "s3od" / "weights" / "s3od-lite.safetensors"
#: sha256 prefixes of weights trained on the DAVIS-dev sequences: s3od-lite v3 and v5 (their
#: ``dataset=lite_distill`` pool holds every DAVIS-2016 frame; ``lite_v6`` leaves the 4 dev
#: sequences out). Their DAVIS and total rows get a mark.
DAVIS_SEEN = {"d3894cf9730dd73d": "s3od-lite v5", "9b62afecb1e88dff": "s3od-lite v5 (first file)",
              "10b4fd85be06eb3f": "s3od-lite v3"}
PARTS = {"bsds": "sod-bsds300 (held-out ids)", "davis": "DAVIS-2016 dev (held-out sequences)"}
TOTAL = "total"
#: Margin of the centred rectangle GrabCut starts from, as a fraction of each side.
RECT_MARGIN = 0.1
GRABCUT_ITERATIONS = 5
TABLE_KEYS = ("MAE", "maxF", "Sm", "meanEm", "IoU", "wF", "BIoU")
BOOTSTRAP_ROUNDS = 10_000
#: Ranking: candidates "differ" on an image when best minus worst candidate IoU is at least
#: this; a pick is "near-best" when within NEAR_BEST of the best candidate's IoU.
DIFFER = 0.1
NEAR_BEST = 0.02
#: Issue 21's targets, checked in the summary table.
TARGET_REGRET = 0.015
TARGET_NEAR_BEST = 0.75
TARGET_MAXF_LEAD = 0.01
TARGET_BIOU_LEAD = 0.02
TARGET_SPEEDUP = 3.0
EPS = 1e-9

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


@dataclass(frozen=True)
class DevImage:
    """One photo of the dev split and its mask; ``key`` is unique over the whole split."""

    part: str
    id: str
    image: Path
    mask: Path

    @property
    def key(self) -> str:
        return f"{self.part}/{self.id}"


def spread(items: list[Any], limit: int | None) -> list[Any]:
    """``limit`` items evenly spaced over ``items`` (first and last included), order kept;
    so a short run still sees every DAVIS sequence and the whole BSDS list."""
    if limit is None or limit >= len(items):
        return list(items)
    if limit <= 0:
        return []
    picks = np.unique(np.linspace(0, len(items) - 1, limit).round().astype(int))
    return [items[i] for i in picks]


def _pairs(folder: Path, ids: list[str], split: Path) -> list[tuple[str, Path, Path]]:
    """``(id, image, mask)`` of every id; a clear error naming the split when one is missing."""
    images = {p.stem: p for p in (folder / "images").iterdir()} if folder.is_dir() else {}
    masks = {p.stem: p for p in (folder / "masks").iterdir()} if folder.is_dir() else {}
    missing = [i for i in ids if i not in images or i not in masks]
    if missing:
        raise SystemExit(f"{folder} lacks {len(missing)} ids of {split.name} (image or mask), "
                         f"e.g. {missing[:3]}: pass --shared /path/to/shared")
    return [(i, images[i], masks[i]) for i in ids]


def dev_split(shared: Path, limit: int | None = None, davis: bool = True) -> list[DevImage]:
    """The dev split: BSDS part then DAVIS part; ``limit`` images of each part at most."""
    out = [DevImage("bsds", i, img, mask) for i, img, mask in
           spread(_pairs(shared / "data" / "sod-bsds300", read_split(SPLIT_FILE), SPLIT_FILE),
                  limit)]
    if davis:
        frames: list[tuple[str, Path, Path]] = []
        for split, folder in DAVIS_DEV:
            frames += _pairs(shared / folder, read_split(split), split)
        ids = [f[0] for f in frames]
        if len(set(ids)) != len(ids):
            raise SystemExit("the DAVIS dev split files name a frame twice")
        frames.sort(key=lambda f: f[0])  # by sequence, then frame
        out += [DevImage("davis", i, img, mask) for i, img, mask in spread(frames, limit)]
    return out


def parts_of(images: list[DevImage]) -> list[str]:
    """Parts present, in split order, then the pooled total."""
    parts = list(dict.fromkeys(im.part for im in images))
    return [*parts, TOTAL]


def paired_bootstrap(a: list[float], b: list[float], rounds: int = BOOTSTRAP_ROUNDS,
                     seed: int = 0) -> tuple[float, float, float]:
    """Mean of ``a - b`` and its 95 % percentile interval over images resampled with return."""
    diff = np.asarray(a) - np.asarray(b)
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), (rounds, len(diff)))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(diff.mean()), float(lo), float(hi)


# ----------------------------------------------------------------------------- scoring


def _iou(pred: np.ndarray, gt: np.ndarray) -> float:
    union = np.logical_or(pred, gt).sum()
    return float(np.logical_and(pred, gt).sum() / union) if union else 1.0


@dataclass
class MethodRun:
    """Everything one method gave on the dev split.

    ``rows``: one ``s3od.evaluation`` row per part and the total. ``plain_iou``: per image
    (``DevImage.key``). ``candidates``: per image, for models with several candidates: each
    candidate's plain IoU, its predicted IoU (score) and the index the model picked.
    """

    label: str
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)
    plain_iou: dict[str, float] = field(default_factory=dict)
    candidates: dict[str, dict[str, Any]] = field(default_factory=dict)


def _batches(items: list[DevImage], size: int) -> Iterator[list[DevImage]]:
    for first in range(0, len(items), size):
        yield items[first:first + size]


def run_method(label: str, predictor: Any, images: list[DevImage],
               batch_size: int = 8) -> MethodRun:
    """Predict every dev image once and score it into its part's metrics and the total's.

    ``predictor`` has ``remove_backgrounds(list of RGB, batch_size)`` (an s3od remover or a
    :class:`MapPredictor`). Predictions are scored as ``s3od.evaluation.benchmark_model``
    scores them (8-bit, resized to the mask when needed). ``seconds`` of a part covers reading,
    predicting and scoring its images.
    """
    from s3od.evaluation import SODMetrics, read_mask
    from s3od.evaluation.metrics import fit_to_gt, to_uint8
    from s3od.imageio import load_image

    parts = parts_of(images)
    metrics = {p: SODMetrics() for p in parts}
    seconds = dict.fromkeys(parts, 0.0)
    run = MethodRun(label)
    for part in parts[:-1]:
        items = [im for im in images if im.part == part]
        print(f"{label} / {part} ({len(items)} images) ...", file=sys.stderr, flush=True)
        for batch in _batches(items, batch_size):
            start = time.perf_counter()
            results = predictor.remove_backgrounds([load_image(im.image) for im in batch],
                                                   batch_size=len(batch))
            for im, result in zip(batch, results, strict=True):
                gt = read_mask(im.mask)
                pred = fit_to_gt(to_uint8(result.predicted_mask), gt.shape)
                metrics[part].step(pred, gt)
                metrics[TOTAL].step(pred, gt)
                truth = gt > 128
                run.plain_iou[im.key] = _iou(pred >= 128, truth)
                masks = getattr(result, "all_masks", None)
                if masks is not None and len(masks) > 1:
                    run.candidates[im.key] = {
                        "iou": [_iou(m >= 0.5, truth) for m in masks],
                        "score": [float(s) for s in result.all_ious],
                        "picked": int(result.best_index)}
            seconds[part] += time.perf_counter() - start
    seconds[TOTAL] = sum(seconds[p] for p in parts[:-1])
    for part in parts:
        count = len(metrics[part])
        run.rows[part] = {"model": label, "set": part, "count": count,
                          "metrics": metrics[part].results(), "seconds": round(seconds[part], 3)}
    return run


# ----------------------------------------------------------------------------- ranking


def ranking_stats(iou: np.ndarray, picked: np.ndarray, differ: float = DIFFER,
                  near: float = NEAR_BEST) -> dict[str, Any]:
    """How much a model's candidate ranking costs, from true per-candidate IoUs.

    Args:
        iou: ``(images, candidates)`` true IoU of every candidate.
        picked: ``(images,)`` index of the candidate the model chose.
        differ: an image's candidates "differ" when best minus worst IoU >= ``differ`` (the
            largest pairwise gap of their IoUs, which is the same number).
        near: a pick is near-best when its IoU is within ``near`` of the best candidate's.

    Returns:
        ``picked_iou`` (mean IoU of the picks), ``oracle_iou`` (best candidate every time),
        ``fixed_iou`` (mean IoU of each candidate index), ``best_fixed`` / ``best_fixed_iou``
        (always candidate k, best k), ``regret`` (mean best minus picked), ``n_differ`` /
        ``share_differ`` (images whose candidates differ), ``near_on_differ`` (share of those
        with a near-best pick; NaN when none), ``near_all`` (same over all images),
        ``picks_best`` (share of picks as good as the best).
    """
    iou = np.asarray(iou, dtype=np.float64)
    picked = np.asarray(picked, dtype=np.int64)
    if iou.ndim != 2 or picked.shape != (iou.shape[0],):
        raise ValueError(f"expected iou (N, K) and picked (N,), got {iou.shape}, {picked.shape}")
    n = iou.shape[0]
    if n == 0:
        raise ValueError("no images")
    chosen = iou[np.arange(n), picked]
    best = iou.max(axis=1)
    differs = best - iou.min(axis=1) >= differ - EPS
    near_pick = chosen >= best - near - EPS
    fixed = iou.mean(axis=0)
    return {
        "n": n,
        "picked_iou": float(chosen.mean()),
        "oracle_iou": float(best.mean()),
        "fixed_iou": fixed.tolist(),
        "best_fixed": int(np.argmax(fixed)),
        "best_fixed_iou": float(fixed.max()),
        "regret": float((best - chosen).mean()),
        "n_differ": int(differs.sum()),
        "share_differ": float(differs.mean()),
        "near_on_differ": float(near_pick[differs].mean()) if differs.any() else float("nan"),
        "n_near_on_differ": int(near_pick[differs].sum()),
        "near_all": float(near_pick.mean()),
        "picks_best": float((chosen >= best - EPS).mean()),
    }


def run_ranking(run: MethodRun, images: list[DevImage]) -> dict[str, dict[str, Any]]:
    """:func:`ranking_stats` of one run for each part and the total (empty: one candidate)."""
    out: dict[str, dict[str, Any]] = {}
    for part in parts_of(images):
        keys = [im.key for im in images
                if (part == TOTAL or im.part == part) and im.key in run.candidates]
        if not keys:
            continue
        iou = np.array([run.candidates[k]["iou"] for k in keys])
        scores = np.array([run.candidates[k]["score"] for k in keys])
        picked = np.array([run.candidates[k]["picked"] for k in keys])
        stats = ranking_stats(iou, picked)
        stats["mean_score"] = scores.mean(axis=0).tolist()
        stats["picked_count"] = np.bincount(picked, minlength=iou.shape[1]).tolist()
        corr = (np.corrcoef(scores.ravel(), iou.ravel())[0, 1]
                if iou.size > 2 and iou.std() > 0 and scores.std() > 0 else float("nan"))
        stats["score_iou_corr"] = float(corr)
        out[part] = stats
    return out


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
    import onnxruntime
    import torch

    return (f"{cpu}, {os.cpu_count()} cores, {platform.system()}, Python "
            f"{platform.python_version()}, torch {torch.__version__} (threads "
            f"{torch.get_num_threads()}), ONNX Runtime {onnxruntime.__version__}, "
            f"OpenCV {cv2.__version__}")


def load_text() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def rel(path: Path | str) -> str:
    """``path`` as the docs may print it: relative to the repository (or to ``shared``'s
    parent), ``~/...`` under the home folder, else relative to the repository; never an
    absolute path of the machine that ran the benchmark."""
    p = Path(path).resolve()
    for root, prefix in ((REPO, ""), (SHARED.resolve().parent, "../")):
        try:
            return prefix + str(p.relative_to(root))
        except ValueError:
            continue
    try:
        return "~/" + str(p.relative_to(Path.home().resolve()))
    except ValueError:
        return os.path.relpath(p, REPO)


def shown_command(args: list[str]) -> str:
    """The command line for the report, absolute paths inside arguments made :func:`rel`."""
    import re

    return " ".join(["python benchmarks/quality.py",
                     *(re.sub(r"(?<![\w.~])/[^\s=@,]+", lambda m: rel(m[0]), a) for a in args)])


def table(rows: list[dict[str, Any]], marks: dict[str, str] | None = None) -> str:
    """Markdown: one line per method, best value of each column in bold; ``marks`` appends a
    footnote sign to a method's name."""
    from s3od.evaluation.metrics import SPECS

    marks = marks or {}
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
        lines.append(f"| {r['model']}{marks.get(r['model'], '')} | {r['count']} | "
                     + " | ".join(cells) + f" | {per_img:.3f} |")
    return "\n".join(lines)


def _check(value: float, ok: bool) -> str:
    return f"{value:+.3f} {'✓' if ok else '✗'}"


def targets_table(runs: dict[str, MethodRun], ours: str, peers: list[str], parts: list[str],
                  ranking: dict[str, dict[str, Any]]) -> str:
    """Issue 21's quality targets for ``ours`` against ``peers``, per part: the margin and
    whether it is met (✓/✗). Margins are ours minus the best peer (MAE: best peer minus ours)."""
    from s3od.evaluation.metrics import SPECS

    peers = [p for p in peers if p in runs]
    if not peers:
        return ""
    head = "| Target | " + " | ".join(parts) + " |"
    lines = [head, "|:--|" + "--:|" * len(parts)]

    def lead(part: str, key: str, against: list[str]) -> tuple[float, str]:
        mine = runs[ours].rows[part]["metrics"][key]
        theirs = {p: runs[p].rows[part]["metrics"][key] for p in against}
        higher = SPECS[key].higher_is_better
        name, best = (max if higher else min)(theirs.items(), key=lambda kv: kv[1])
        return (mine - best if higher else best - mine), name

    rules = [("maxF", TARGET_MAXF_LEAD, f"maxF ≥ every peer's + {TARGET_MAXF_LEAD}", peers)]
    rules += [(k, 0.0, f"{k} ≥ every peer's", peers) for k in ("Sm", "IoU", "wF")]
    rules.append(("MAE", 0.0, "MAE ≤ every peer's", peers))
    if "u2net" in peers:
        rules.append(("BIoU", TARGET_BIOU_LEAD, f"BIoU ≥ u2net's + {TARGET_BIOU_LEAD}",
                      ["u2net"]))
    for key, need, text, against in rules:
        cells = []
        for part in parts:
            value, name = lead(part, key, against)
            cells.append(f"{_check(value, value >= need - EPS)} ({name})")
        lines.append(f"| {text} | " + " | ".join(cells) + " |")
    if ranking:
        cells = [f"{ranking[p]['regret']:.3f} "
                 f"{'✓' if ranking[p]['regret'] <= TARGET_REGRET + EPS else '✗'}"
                 if p in ranking else "-" for p in parts]
        lines.append(f"| mean regret ≤ {TARGET_REGRET} | " + " | ".join(cells) + " |")
        cells = []
        for p in parts:
            r = ranking.get(p)
            if not r or not r["n_differ"]:
                cells.append("- (no image's candidates differ)" if r else "-")
                continue
            ok = r["near_on_differ"] >= TARGET_NEAR_BEST - EPS
            cells.append(f"{r['near_on_differ']:.0%} of {r['n_differ']} {'✓' if ok else '✗'}")
        lines.append(f"| near-best pick (≤ {NEAR_BEST} below the best) on images whose "
                     f"candidates differ by ≥ {DIFFER}: ≥ {TARGET_NEAR_BEST:.0%} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def ranking_table(ranking: dict[str, dict[str, dict[str, Any]]], parts: list[str]) -> str:
    """One line per s3od model and part: pick, oracle, best fixed candidate, regret, and how
    the pick fares where candidates differ."""
    lines = ["| Model | part | N | picked IoU ↑ | oracle IoU | best fixed candidate IoU (k) | "
             f"mean regret ↓ (≤ {TARGET_REGRET}) | candidates differ (≥ {DIFFER}) | "
             f"near-best pick there ↑ (≥ {TARGET_NEAR_BEST:.0%}) | near-best pick, all | "
             "pick is the best | corr(score, IoU) |",
             "|:--|:--|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for label, by_part in ranking.items():
        for part in parts:
            r = by_part.get(part)
            if r is None:
                continue
            near = ("-" if not r["n_differ"] else
                    f"{r['near_on_differ']:.0%} ({r['n_near_on_differ']}/{r['n_differ']})")
            lines.append(
                f"| {label} | {part} | {r['n']} | {r['picked_iou']:.3f} | {r['oracle_iou']:.3f} "
                f"| {r['best_fixed_iou']:.3f} ({r['best_fixed']}) | {r['regret']:.3f} | "
                f"{r['share_differ']:.0%} ({r['n_differ']}) | {near} | {r['near_all']:.0%} | "
                f"{r['picks_best']:.0%} | {r['score_iou_corr']:.2f} |")
    return "\n".join(lines)


def candidate_table(stats: dict[str, Any]) -> str:
    """Each candidate index: mean true IoU, mean predicted IoU, how often it was picked."""
    lines = ["| Candidate | mean IoU | mean predicted IoU | picked |", "|:--|--:|--:|--:|"]
    for i, (m, s, n) in enumerate(zip(stats["fixed_iou"], stats["mean_score"],
                                      stats["picked_count"], strict=True)):
        lines.append(f"| {i} | {m:.3f} | {s:.3f} | {n} / {stats['n']} |")
    lines.append(f"| best per image (oracle) | {stats['oracle_iou']:.3f} | | |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- regressions


def pipeline_checks(remover: Any, images: list[np.ndarray], masks: list[np.ndarray],
                    batch_size: int) -> tuple[dict[str, float], dict[str, Any]]:
    """Plain mean IoU as shipped and through deliberately broken pipelines; demo verdicts.

    Returns:
        ``{pipeline: mean IoU}`` and, per verdict of ``RemovalResult.assessment()`` (what the
        demo tells the user), the number of images, their mean IoU and how many are below 0.5.
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

    verdicts: dict[str, list[float]] = {}
    for r, g in zip(shipped, masks, strict=True):
        verdicts.setdefault(r.assessment().verdict, []).append(_iou(r.predicted_mask >= 0.5, g))
    return out, {v: {"images": len(x), "mean_iou": float(np.mean(x)),
                     "below_0.5": int(np.sum(np.array(x) < 0.5))}
                 for v, x in sorted(verdicts.items())}


# ----------------------------------------------------------------------------- speed


def speed_worker(job: dict[str, Any]) -> dict[str, Any]:
    """One method in a fresh process: load it, warm up, time photo file -> mask at photo size.

    End to end per photo, batch 1, as a user running one photo at a time sees it: decoding
    the file, preprocessing, the network, resizing the mask back. Peak RSS is the process's.
    ``kind``: ``s3od`` (``defaults``: exactly as ``load_remover(model)`` with ``s3od remove``'s
    default precision), ``teacher`` (an ``--onnx-teacher``) or ``peer`` (``peers.py``).
    """
    from common import peak_rss_mb

    from s3od.imageio import load_image

    start = time.perf_counter()
    fn: Callable[[np.ndarray], np.ndarray]
    if job["kind"] == "teacher":
        fn = TeacherPredictor(job["name"], Path(job["model"]), job.get("flip", False)).fn
    elif job["kind"] == "peer":
        from peers import load_peer

        fn = load_peer(job["name"], job.get("cache"), verify=False)
    else:
        from s3od import load_remover

        if job.get("defaults"):
            remover = load_remover(job["model"], precision="auto")
        else:
            remover = load_remover(job["model"], precision=job.get("precision", "fp32"),
                                   device="cpu", image_size=job.get("size"))

        def fn(rgb: np.ndarray) -> np.ndarray:
            return remover.remove_background(rgb).predicted_mask
    load_s = time.perf_counter() - start
    paths = job["images"]
    for path in paths[:2]:  # warm-up: lazy initialisation, allocator, oneDNN primitives
        fn(load_image(path))
    times = []
    for path in paths:
        t0 = time.perf_counter()
        mask = fn(load_image(path))
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
        rows[label] = run_worker(Path(__file__), job, timeout=3600)
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


DEFAULTS_LABEL = "s3od-lite, defaults (bundled; `s3od remove`: PyTorch, precision auto)"


def speed_jobs(spec: str, size: int | None, teachers: list[tuple[str, Path, bool]],
               peers: list[str], cache: Path | None, images: list[str],
               folder: Path, torch_row: bool = True) -> list[tuple[str, dict[str, Any], Path]]:
    """The shipped s3od-lite at its defaults; the headline model on PyTorch (precision auto;
    left out with ``torch_row=False`` when that is the defaults row again) and exported to
    ONNX Runtime; every ONNX teacher and peer; all on the same photos."""
    from peers import PEER_FILES, PEER_ROWS, cache_dir

    from s3od.export import export_onnx

    jobs: list[tuple[str, dict[str, Any], Path]] = [
        (DEFAULTS_LABEL, {"kind": "s3od", "model": "s3od-lite", "defaults": True,
                          "images": images}, BUNDLED)]
    name = None
    if "=" in spec and Path(spec.split("=", 1)[1]).is_file():
        name, spec = spec.split("=", 1)
    model_id = "s3od-lite" if spec == "bundled" else spec
    weights = BUNDLED if spec == "bundled" else Path(model_id)
    label = name or ("s3od-lite" if spec == "bundled" else Path(spec).stem)
    at = f" @{size}" if size else ""
    onnx_path = folder / "ours.onnx"
    export_onnx(model_id, onnx_path, image_size=size)
    if torch_row:
        jobs.append((f"{label}{at}, PyTorch (precision auto)",
                     {"kind": "s3od", "model": model_id, "size": size, "precision": "auto",
                      "images": images}, weights))
    jobs.append((f"{label}{at}, ONNX Runtime",
                 {"kind": "s3od", "model": str(onnx_path), "size": size, "images": images},
                 onnx_path))
    for peer in peers:
        path = cache_dir(cache) / PEER_FILES[PEER_ROWS[peer].file].filename
        jobs.append((peer, {"kind": "peer", "name": peer,
                            "cache": None if cache is None else str(cache),
                            "images": images}, path))
    for tname, path, flip in teachers:
        jobs.append((tname, {"kind": "teacher", "name": tname, "model": str(path), "flip": flip,
                             "images": images}, path))
    return jobs


# ----------------------------------------------------------------------------- main


def parse_args(argv: list[str]) -> argparse.Namespace:
    from peers import PEER_ROWS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", default=None,
                        help="checkpoint (.ckpt) or .safetensors path, NAME=path or registry "
                             "name; repeat to compare several, the first is the headline "
                             "('bundled': the shipped s3od-lite, default)")
    parser.add_argument("--sizes", default="default",
                        help="input sides for the s3od models, comma list; 'default' is each "
                             "model's own; the first is the headline")
    parser.add_argument("--shared", type=Path, default=SHARED, help="the ../shared folder")
    parser.add_argument("--peers", default=",".join(PEER_ROWS),
                        help="comma list of peer rows from benchmarks/peers.py (empty: none); "
                             f"default {','.join(PEER_ROWS)}")
    parser.add_argument("--peer-cache", type=Path, default=None,
                        help="folder of the peer files (default: peers.py's cache)")
    parser.add_argument("--baselines", default=",".join(BASELINES),
                        help="comma list of OpenCV baseline names (empty for none)")
    parser.add_argument("--no-davis", action="store_true",
                        help="BSDS part only (no DAVIS-dev part, no fixture table)")
    parser.add_argument("--no-fixture", action="store_true", help="skip the s3od-fixture table")
    parser.add_argument("--no-regressions", action="store_true",
                        help="skip the broken-pipeline rows")
    parser.add_argument("--onnx-teacher", action="append", default=[],
                        help="NAME=path.onnx[@flip]: another ONNX saliency model run as rembg "
                             "runs it; @flip averages its mirror image; repeatable")
    parser.add_argument("--limit", type=int, default=None,
                        help="at most N images of each part, evenly spaced (smoke runs)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: --limit 5 (unless given), 3 speed photos, first size "
                             "only, no baselines, regressions or fixture")
    parser.add_argument("--speed-images", type=int, default=20,
                        help="BSDS photos of the split for the end-to-end speed table (0: skip)")
    parser.add_argument("--speed-baseline", default="u2netp",
                        help="peer or ONNX teacher the speed ratios are relative to")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--out", type=Path, default=None,
                        help="markdown report (default docs/quality.md; with --limit/--quick "
                             "runs/quality/quality-limitN.md)")
    parser.add_argument("--json", type=Path, default=None,
                        help="machine-readable results (default: --out with .json)")
    args = parser.parse_args(argv)
    if args.quick:
        args.limit = args.limit or 5
        args.speed_images = min(args.speed_images, 3)
        args.sizes = args.sizes.split(",")[0]
        args.baselines = ""
        args.no_regressions = args.no_fixture = True
    if args.out is None:
        args.out = (REPO / "docs" / "quality.md" if args.limit is None
                    else REPO / "runs" / "quality" / f"quality-limit{args.limit}.md")
    if args.json is None:
        args.json = args.out.with_suffix(".json")
    return args


@dataclass
class LoadedModel:
    """An s3od model at one input size, with what the report says about its weights."""

    label: str
    remover: Any
    sha256: str | None
    path: Path | None = None


def _load_models(specs: list[str], sizes: list[int | None]) -> tuple[list[LoadedModel],
                                                                      list[str]]:
    """Every model x size, and one provenance line per model."""
    from peers import file_sha256

    from s3od import BackgroundRemoval

    models, notes = [], []
    for spec in specs:
        name = None
        if "=" in spec and Path(spec.split("=", 1)[1]).is_file():  # NAME=path/to/weights
            name, spec = spec.split("=", 1)
        if spec != "bundled" and not Path(spec).exists() and os.sep in spec:
            raise SystemExit(f"--model {spec}: no such file")
        path = BUNDLED if spec == "bundled" else Path(spec)
        # Hash before loading: the file may be replaced while a long run goes on.
        digest = file_sha256(path) if path.is_file() else None
        model_id = "s3od-lite" if spec == "bundled" else spec
        remover = None
        for size in sizes:
            remover = BackgroundRemoval(model_id, image_size=size, device="cpu")
            label = name or (remover.model_name if spec == "bundled" or not path.is_file()
                             else path.stem)
            taken = {m.label for m in models}
            if f"{label} @{remover.image_size}" in taken:  # e.g. a copy of the bundled file
                label = f"{label} ({rel(path) if path.is_file() else spec})"
            models.append(LoadedModel(f"{label} @{remover.image_size}", remover, digest,
                                      path if path.is_file() else None))
        seen = DAVIS_SEEN.get((digest or "")[:16])
        source = rel(remover.source) if Path(str(remover.source)).exists() else remover.source
        notes.append(f"- model `{label}`: {source}"
                     + (f", sha256 `{digest[:16]}…`" if digest else "")
                     + f"; runtime {remover.runtime.describe()}"
                     + (f"; **{seen}: trained on the DAVIS-dev sequences**" if seen else ""))
    return models, notes


def _peer_predictors(names: list[str], cache: Path | None) -> list[tuple[str, MapPredictor]]:
    """Peer rows, their files checked against the recorded sha256 first."""
    from peers import PEER_ROWS, PeerError, load_peer

    unknown = [n for n in names if n not in PEER_ROWS]
    if unknown:
        raise SystemExit(f"unknown peers {unknown}; choose from {', '.join(PEER_ROWS)}")
    out = []
    for name in names:
        try:
            out.append((name, MapPredictor(name, load_peer(name, cache))))
        except PeerError as err:
            raise SystemExit(f"peer {name}: {err}\n(or leave it out: --peers with the others, "
                             "--peers '' for none)") from None
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.worker:
        print(json.dumps(speed_worker(json.loads(args.worker))))
        return 0
    import torch
    from peers import describe

    from s3od.evaluation import benchmark_model, read_mask
    from s3od.imageio import load_image

    if args.threads:
        torch.set_num_threads(args.threads)
    if not (args.shared / "data" / "sod-bsds300").is_dir():
        raise SystemExit(f"{args.shared / 'data' / 'sod-bsds300'} not found: "
                         "pass --shared /path/to/shared")
    baseline_names = [b for b in args.baselines.split(",") if b]
    unknown = [b for b in baseline_names if b not in BASELINES]
    if unknown:
        raise SystemExit(f"unknown baselines {unknown}; choose from {', '.join(BASELINES)}")
    if baseline_names:
        _cv2()
    sizes = [None if s == "default" else int(s) for s in args.sizes.split(",") if s]
    peer_names = [p for p in args.peers.split(",") if p]
    images = dev_split(args.shared, args.limit, davis=not args.no_davis)
    parts = parts_of(images)
    command = shown_command(sys.argv[1:] if argv is None else argv)
    load_start, started = load_text(), time.perf_counter()

    peer_methods = _peer_predictors(peer_names, args.peer_cache)
    models, model_notes = _load_models(args.model or ["bundled"], sizes)
    ours = models[0].label
    teachers = [parse_teacher(t) for t in args.onnx_teacher]
    methods: list[tuple[str, Any]] = (
        [(m.label, m.remover) for m in models] + peer_methods
        + [(name, TeacherPredictor(name, path, flip)) for name, path, flip in teachers]
        + [(b, MapPredictor(b, BASELINES[b])) for b in baseline_names])
    peer_labels = [name for name, _ in peer_methods] + [name for name, _, _ in teachers]
    davis_seen = {m.label: " †" for m in models if (m.sha256 or "")[:16] in DAVIS_SEEN}

    runs = {label: run_method(label, method, images, args.batch_size)
            for label, method in methods}
    ranking = {m.label: r for m in models if (r := run_ranking(runs[m.label], images))}

    regressions: dict[str, float] = {}
    verdicts: dict[str, Any] = {}
    bsds = [im for im in images if im.part == "bsds"]
    if not args.no_regressions:
        print(f"{ours} / broken pipelines ...", file=sys.stderr, flush=True)
        regressions, verdicts = pipeline_checks(
            models[0].remover, [load_image(im.image) for im in bsds],
            [read_mask(im.mask) > 128 for im in bsds], args.batch_size)
    fixture_rows: list[dict[str, Any]] = []
    fixture = args.shared / "data" / "s3od-fixture"
    if not (args.no_davis or args.no_fixture) and fixture.is_dir():
        for label, method in methods:
            print(f"{label} / s3od-fixture ...", file=sys.stderr, flush=True)
            fixture_rows += benchmark_model(method, fixture, name=label,
                                            batch_size=args.batch_size)
    speed_md, speed_rows, speed_headline = "", {}, DEFAULTS_LABEL
    if args.speed_images:
        photos = [str(im.image.resolve()) for im in bsds[:args.speed_images]]
        with tempfile.TemporaryDirectory(prefix="s3od-quality-") as tmp:
            headline = (args.model or ["bundled"])[0]
            jobs = speed_jobs(headline, models[0].remover.image_size, teachers, peer_names,
                              args.peer_cache, photos, Path(tmp),
                              torch_row=not (headline == "bundled" and sizes[0] is None))
            labels = [j[0] for j in jobs]
            # The headline at its default settings: its PyTorch row, or the defaults row.
            speed_headline = next((j[0] for j in jobs[1:] if "PyTorch" in j[0]), labels[0])
            speed_md, speed_rows = speed_table(
                jobs, args.speed_baseline if args.speed_baseline in labels else None)
    elapsed = time.perf_counter() - started

    text = render(args=args, command=command, images=images, parts=parts, runs=runs,
                  ours=ours, peers=peer_labels, model_notes=model_notes,
                  peer_notes=[describe(p, args.peer_cache) for p in peer_names],
                  davis_seen=davis_seen, ranking=ranking, regressions=regressions,
                  verdicts=verdicts, fixture_rows=fixture_rows, speed_md=speed_md,
                  speed_rows=speed_rows, speed_headline=speed_headline,
                  weights=models[0].path, elapsed=elapsed,
                  load_start=load_start)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({
        "command": command,
        "date": f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC",
        "machine": machine(),
        "split": {p: [im.id for im in images if im.part == p] for p in parts[:-1]},
        "models": {m.label: {"sha256": m.sha256} for m in models},
        "davis_seen": sorted(davis_seen),
        "rows": {p: [runs[label].rows[p] for label in runs] for p in parts},
        "plain_iou": {label: run.plain_iou for label, run in runs.items()},
        "candidates": {label: run.candidates for label, run in runs.items() if run.candidates},
        "ranking": ranking, "regressions": regressions, "verdicts": verdicts,
        "fixture": fixture_rows, "speed": speed_rows,
    }, indent=1, default=str))
    print(f"wrote {rel(args.out)} and {rel(args.json)}", file=sys.stderr)
    return 0


def render(*, args: argparse.Namespace, command: str, images: list[DevImage], parts: list[str],
           runs: dict[str, MethodRun], ours: str, peers: list[str], model_notes: list[str],
           peer_notes: list[str], davis_seen: dict[str, str],
           ranking: dict[str, dict[str, Any]], regressions: dict[str, float],
           verdicts: dict[str, Any], fixture_rows: list[dict[str, Any]], speed_md: str,
           speed_rows: dict[str, Any], speed_headline: str, weights: Path | None,
           elapsed: float,
           load_start: str) -> str:
    """The markdown report."""
    counts = {p: sum(im.part == p for im in images) for p in parts[:-1]}
    counts[TOTAL] = len(images)
    names = {"bsds": "sod-bsds300", "davis": "DAVIS-dev", TOTAL: "total"}
    seen_note = ("† trained on frames of the DAVIS-dev sequences (the v3/v5 training pool, "
                 "`dataset=lite_distill`, holds every DAVIS-2016 frame; `lite_v6` leaves these "
                 "4 sequences out): its DAVIS-dev and total numbers are a training fit, not "
                 "held out.")
    lines = [
        "# s3od-lite quality vs. the offline peers (rembg's U²-Net family, IMG.LY's ISNet)",
        "",
        "Written by `benchmarks/quality.py`; every number below was measured by it in one run.",
        "",
        f"- command: `{command}`",
        f"- date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC, "
        f"{elapsed / 60:.1f} min; load average at start {load_start}, at end {load_text()}",
        f"- machine: {machine()}",
        *model_notes,
        *(f"- peer {n}" for n in peer_notes),
        f"- dev split: {counts.get('bsds', 0)} sod-bsds300 images (the held-out ids of "
        "`src/synth_sod/model_training/splits/lite_eval_bsds300.txt`)"
        + (f" and {counts['davis']} DAVIS-2016 frames of 4 sequences held out by sequence "
           "(`splits/dev_davis2016_data.txt`, `splits/dev_davis2016_train.txt`)"
           if "davis" in counts else "")
        + (f"; **at most {args.limit} per part (smoke run)**" if args.limit else ""),
        "- metrics: `s3od.evaluation` (pysodmetrics conventions: predictions min-max normalised "
        "per image; IoU and boundary IoU (BIoU, band of 2 % of the diagonal) at 0.5 after "
        "that); best value per column in bold; s/img is the whole read + predict + score loop "
        "per image on this (shared) machine.",
        "",
    ]
    if peers:
        lines += [f"## Issue 21's targets: {ours} against the peers", "",
                  "Margin of the headline model over the best peer (✓ met, ✗ not), best peer "
                  "in brackets." + (f" {seen_note}" if ours in davis_seen else ""), "",
                  targets_table(runs, ours, peers, [p for p in parts],
                                ranking.get(ours, {})), ""]
        base = speed_rows.get(args.speed_baseline, {}).get("median_s")
        mine = speed_rows.get(speed_headline, {}).get("median_s")
        if base and mine:
            ratio = base / mine
            lines += [f"Speed: {speed_headline} is {ratio:.2f}x faster than "
                      f"{args.speed_baseline} end to end per photo (target ≥ {TARGET_SPEEDUP}x: "
                      f"{'✓' if ratio >= TARGET_SPEEDUP else '✗'})"
                      + (f"; weights {weights.stat().st_size / 1e6:.1f} MB (target ≤ 25 MB)"
                         if weights else "") + ".", ""]
    for part in parts:
        title = {"bsds": f"sod-bsds300, {counts['bsds']} held-out images",
                 "davis": f"DAVIS-2016 dev, {counts.get('davis', 0)} frames of 4 held-out "
                          "sequences",
                 TOTAL: f"Dev split, total: all {counts[TOTAL]} images pooled"}[part]
        marks = davis_seen if part != "bsds" else {}
        lines += [f"## {title}", "", table([r.rows[part] for r in runs.values()], marks), ""]
        if marks and part == "davis":
            lines += [seen_note, ""]
    if ranking:
        lines += [
            "## Candidate ranking",
            "",
            "True IoU of every candidate (plain IoU at 0.5, the definition below). Mean regret: "
            "best candidate's IoU minus the picked one's, averaged over images. Candidates "
            f"differ on an image when the best and the worst candidate's IoU are ≥ {DIFFER} "
            "apart (the largest pairwise gap of their IoUs); a pick is near-best when within "
            f"{NEAR_BEST} of the best. Oracle: the best candidate every time; best fixed: "
            "always candidate k, for the best k.",
            "",
            ranking_table(ranking, parts),
            "",
        ]
        for part in parts:
            if part in ranking.get(ours, {}):
                lines += [f"### {ours}: each candidate, {names[part]}", "",
                          candidate_table(ranking[ours][part]), ""]
    if len(runs) > 1:
        lines += [
            "## Plain per-image IoU (threshold 0.5, no normalisation) and paired bootstrap",
            "",
            "The definition `tests/test_default_model.py` checks. Interval: 95 % percentile "
            f"over {BOOTSTRAP_ROUNDS} resamplings of the {counts[TOTAL]} images (paired; "
            "DAVIS frames of one sequence are not independent, so the interval is optimistic "
            "there).",
            "",
            "| Method | " + " | ".join(f"mean IoU {names[p]}" for p in parts)
            + f" | median (total) | images with IoU < 0.3 | {ours} lead, total (95 % CI) |",
            "|:--|" + "--:|" * (len(parts) + 3),
        ]
        keys = [im.key for im in images]
        mine = [runs[ours].plain_iou[k] for k in keys]
        for label, run in runs.items():
            values = [run.plain_iou[k] for k in keys]
            means = [np.mean([run.plain_iou[im.key] for im in images
                              if p == TOTAL or im.part == p]) for p in parts]
            lead = ""
            if label != ours:
                mean, lo, hi = paired_bootstrap(mine, values)
                lead = f"{mean:+.3f} ({lo:+.3f} .. {hi:+.3f})"
            lines.append(f"| {label} | " + " | ".join(f"{m:.3f}" for m in means)
                         + f" | {np.median(values):.3f} | {sum(v < 0.3 for v in values)} | "
                         f"{lead} |")
        lines.append("")
    if regressions:
        n_bsds = counts.get("bsds", 0)
        lines += [
            f"## {ours} through broken pipelines (plain mean IoU, the {n_bsds} sod-bsds300 "
            "images)",
            "",
            "What the quality floor of `tests/test_default_model.py` has to catch.",
            "",
            "| Pipeline | mean IoU | change |",
            "|:--|--:|--:|",
            *(f"| {k} | {v:.3f} | {v - regressions['as shipped']:+.3f} |"
              for k, v in regressions.items()),
            "",
            "What the demo says (`RemovalResult.assessment()`, from the IoU head's scores) "
            "against the measured IoU of the pick:",
            "",
            "| Verdict | images | mean IoU | images with IoU < 0.5 |",
            "|:--|--:|--:|--:|",
            *(f"| {v} | {d['images']} | {d['mean_iou']:.3f} | {d['below_0.5']} |"
              for v, d in verdicts.items()),
            "",
        ]
    if speed_md:
        lines += [
            f"## End-to-end speed per photo (first {args.speed_images} sod-bsds300 photos of "
            "the split)",
            "",
            "Each method in a fresh process, one photo at a time (batch 1), after two warm-up "
            "photos: decode the file, preprocess, run the network, mask back at the photo's "
            "size. ONNX models run on ONNX Runtime's CPU provider with its default threads; "
            "PyTorch with its default threads. Peak RSS is the whole process's. ISNet runs at "
            "1024 x 1024, as IMG.LY's package runs it.",
            "",
            speed_md,
            "",
        ]
    if fixture_rows:
        lines += [
            "## s3od fixture (not clean)",
            "",
            "One 1024 px image from the reference repository, probably generated, soft "
            "pseudo-label mask; also in the lite training pool. Kept for parity only.",
            "",
            table(fixture_rows),
            "",
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
