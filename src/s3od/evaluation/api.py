"""Python API: score saved predictions, or run a model over benchmark sets and score it.

Both functions return plain data, one dict ("row") per model x set::

    {"model": "s3od-lite", "set": "DUTS-TE", "count": 5019, "total": 5019,
     "metrics": {"MAE": 0.031, "maxF": 0.91, ..., "HCE": None},
     "hce": False, "seconds": 812.4, "error": None,
     "skipped": [{"file": ".../x.png", "reason": "..."}]}

``count`` is the number of pairs scored, ``total`` the number of ground-truth masks; files that
were not scored (unreadable, no partner, wrong size) are listed in ``skipped`` and the rest of
the set is still scored. A set where nothing could be scored has ``count == 0``, metrics of
``None`` and an ``error`` message.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from s3od.evaluation.datasets import (
    EvalSet,
    Pairing,
    find_sets,
    has_images,
    pair_by_stem,
    read_mask,
    resolve_gt,
)
from s3od.evaluation.errors import DatasetNotFoundError, MaskReadError, SizeMismatchError
from s3od.evaluation.metrics import METRIC_KEYS, SODMetrics, fit_to_gt, to_uint8

#: ``on_progress(label, done, total)``: called after each pair (label is "model / set").
ProgressFn = Callable[[str, int, int], None]


def _skip(path: Path | str, reason: str) -> dict[str, str]:
    return {"file": str(path), "reason": reason}


def _row(model: str, eval_set: EvalSet, *, total: int, use_hce: bool,
         skipped: list[dict[str, str]], metrics: SODMetrics | None = None,
         seconds: float = 0.0, error: str | None = None) -> dict[str, Any]:
    count = len(metrics) if metrics is not None else 0
    values = metrics.results() if metrics is not None else dict.fromkeys(METRIC_KEYS)
    if count == 0 and error is None:
        error = f"no pair of {eval_set.name} could be scored"
    return {
        "model": model,
        "set": eval_set.name,
        "count": count,
        "total": total,
        "metrics": values,
        "hce": use_hce,
        "seconds": round(seconds, 3),
        "error": error,
        "skipped": skipped,
    }


def _pairing_skips(pairing: Pairing, left_reason: str, right_reason: str) -> list[dict[str, str]]:
    return (
        [_skip(p, left_reason) for p in pairing.left_only]
        + [_skip(p, right_reason) for p in pairing.right_only]
        + [_skip(p, "another file with the same stem was used") for p in pairing.duplicates]
    )


def _score_one(metrics: SODMetrics, pred: np.ndarray, gt: np.ndarray, name: str,
               resize_any: bool) -> None:
    try:
        pred = fit_to_gt(pred, gt.shape, resize_any=resize_any)
    except SizeMismatchError as err:
        raise SizeMismatchError(f"{name}: {err}") from None
    metrics.step(pred, gt)


# --------------------------------------------------------------------------- saved predictions


def _pred_dir_for(pred_root: Path, eval_set: EvalSet, several: bool) -> Path | None:
    """The folder of ``pred_root`` holding predictions for ``eval_set``."""
    subdirs = {p.name.lower(): p for p in pred_root.iterdir() if p.is_dir()}
    named = subdirs.get(eval_set.name.lower())
    if named is not None:
        return named
    if not several and has_images(pred_root):
        return pred_root
    return None


def evaluate_folder(pred: str | os.PathLike, gt: str | os.PathLike, *, name: str | None = None,
                    sets: Iterable[str] | None = None, hce: bool | None = None,
                    resize_any: bool = False,
                    on_progress: ProgressFn | None = None) -> list[dict[str, Any]]:
    """Score saved predictions (any tool, any image format) against ground-truth masks.

    Args:
        pred: a folder of predictions named like the masks (``<stem>.<any image suffix>``), or,
            when ``gt`` is a root with several sets, a folder with one sub-folder per set (as
            ``s3od benchmark --save-pred`` writes).
        gt: a folder of masks, one set (``<set>/masks`` etc.) or a root of several sets.
        name: the model's name in the results (default: the prediction folder's name).
        sets: only these sets of a multi-set ``gt``.
        hce: compute HCE; ``None`` computes it for DIS sets only.
        resize_any: also resize predictions whose aspect ratio differs from the mask's.
        on_progress: called after each pair.

    Returns:
        One row per set (see the module docstring).

    Raises:
        DatasetNotFoundError: ``pred`` or ``gt`` is missing or holds nothing recognisable.
        UnknownSetError: ``sets`` names a set not found under ``gt``.
    """
    pred_root = Path(pred)
    if not pred_root.is_dir():
        raise DatasetNotFoundError(f"no such prediction folder: {pred_root}")
    model = name or pred_root.resolve().name
    gt_sets = resolve_gt(gt, list(sets) if sets else None)
    rows: list[dict[str, Any]] = []
    for eval_set in gt_sets:
        use_hce = eval_set.is_dis if hce is None else hce
        pred_dir = _pred_dir_for(pred_root, eval_set, several=len(gt_sets) > 1)
        if pred_dir is None:
            rows.append(_row(model, eval_set, total=0, use_hce=use_hce, skipped=[], error=(
                f"no predictions for {eval_set.name}: expected {pred_root / eval_set.name}")))
            continue
        pairing = pair_by_stem(pred_dir, eval_set.mask_dir)
        skipped = _pairing_skips(pairing, "no ground-truth mask with this stem",
                                 "no prediction with this stem")
        total = len(pairing.pairs) + len(pairing.right_only)
        metrics = SODMetrics(hce=use_hce)
        label = f"{model} / {eval_set.name}"
        start = time.perf_counter()
        for i, (_, pred_path, gt_path) in enumerate(pairing.pairs):
            try:
                gt_arr = read_mask(gt_path)
                pred_arr = read_mask(pred_path)
                _score_one(metrics, pred_arr, gt_arr, pred_path.name, resize_any)
            except (MaskReadError, SizeMismatchError) as err:
                skipped.append(_skip(pred_path, str(err)))
            if on_progress is not None:
                on_progress(label, i + 1, len(pairing.pairs))
        rows.append(_row(model, eval_set, total=total, use_hce=use_hce, skipped=skipped,
                         metrics=metrics, seconds=time.perf_counter() - start))
    return rows


# --------------------------------------------------------------------------- running a model


def _predictor(model: Any, image_size: int | None, device: str | None) -> tuple[Any, str]:
    """``(object with remove_backgrounds, display name)`` for a name, path, module or predictor."""
    if hasattr(model, "remove_backgrounds"):
        return model, str(getattr(model, "model_name", type(model).__name__))
    if model is None or isinstance(model, (str, os.PathLike)):
        from s3od.loading import load_remover  # .onnx files too, ours and foreign ones

        predictor = load_remover(model, image_size=image_size, device=device)
        return predictor, str(getattr(predictor, "model_name", None) or model or "default")
    import torch

    from s3od import BackgroundRemoval

    if isinstance(model, torch.nn.Module):
        predictor = BackgroundRemoval.from_model(model, image_size=image_size or 1024,
                                                 device=device)
        return predictor, type(model).__name__
    raise TypeError(
        "model must be a name, a path, a torch.nn.Module or a BackgroundRemoval, "
        f"got {type(model).__name__}"
    )


def _save_prediction(mask_u8: np.ndarray, path: Path) -> None:
    from PIL import Image

    from s3od.imageio import save_image_atomic

    save_image_atomic(Image.fromarray(mask_u8, "L"), path)


def benchmark_model(model: Any, data: str | os.PathLike, *, sets: Sequence[str] | None = None,
                    save_pred: str | os.PathLike | None = None, batch_size: int = 8,
                    image_size: int | None = None, device: str | None = None,
                    hce: bool | None = None, name: str | None = None,
                    on_progress: ProgressFn | None = None) -> list[dict[str, Any]]:
    """Run a model over benchmark sets in batches and score its predictions.

    Args:
        model: a registry name, hub id or checkpoint path (loaded with ``BackgroundRemoval``;
            ``None`` is its default model), an in-memory ``torch.nn.Module``, or a ready
            ``BackgroundRemoval``.
        data: a set or a root of sets (layouts in :mod:`s3od.evaluation.datasets`).
        sets: only these sets (case-insensitive names).
        save_pred: also write each prediction as an 8-bit PNG to ``save_pred/<set>/<stem>.png``
            (so ``evaluate_folder(save_pred, data)`` gives the same numbers).
        batch_size: images per forward pass.
        image_size: network input side; ``None`` uses the model's default.
        device: torch device; ``None`` picks the best available.
        hce: compute HCE; ``None`` computes it for DIS sets only.
        name: the model's name in the results.
        on_progress: called after each image.

    Returns:
        One row per set (see the module docstring).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    from s3od.errors import InvalidImageError
    from s3od.imageio import load_image

    eval_sets = find_sets(data, list(sets) if sets else None)
    predictor, model_name = _predictor(model, image_size, device)
    model_name = name or model_name
    out_root = Path(save_pred) if save_pred is not None else None
    rows: list[dict[str, Any]] = []
    for eval_set in eval_sets:
        use_hce = eval_set.is_dis if hce is None else hce
        if eval_set.image_dir is None:
            rows.append(_row(model_name, eval_set, total=0, use_hce=use_hce, skipped=[],
                             error=f"{eval_set.name} has no image folder next to its masks"))
            continue
        pairing = pair_by_stem(eval_set.image_dir, eval_set.mask_dir)
        skipped = _pairing_skips(pairing, "no ground-truth mask with this stem",
                                 "no image with this stem")
        total = len(pairing.pairs) + len(pairing.right_only)
        metrics = SODMetrics(hce=use_hce)
        label = f"{model_name} / {eval_set.name}"
        start = time.perf_counter()
        done = 0
        for first in range(0, len(pairing.pairs), batch_size):
            batch: list[tuple[str, Path, np.ndarray, np.ndarray]] = []
            for stem, img_path, gt_path in pairing.pairs[first:first + batch_size]:
                try:
                    gt_arr = read_mask(gt_path)
                    batch.append((stem, img_path, load_image(img_path), gt_arr))
                except MaskReadError as err:
                    skipped.append(_skip(gt_path, str(err)))
                except InvalidImageError as err:
                    skipped.append(_skip(img_path, f"cannot read {img_path}: {err}"))
            results = (predictor.remove_backgrounds([b[2] for b in batch], batch_size=len(batch))
                       if batch else [])
            for (stem, img_path, _, gt_arr), result in zip(batch, results, strict=True):
                pred = to_uint8(result.predicted_mask)
                if out_root is not None:
                    _save_prediction(pred, out_root / eval_set.name / f"{stem}.png")
                try:
                    _score_one(metrics, pred, gt_arr, img_path.name, resize_any=False)
                except SizeMismatchError as err:
                    skipped.append(_skip(img_path, str(err)))
            done += len(pairing.pairs[first:first + batch_size])
            if on_progress is not None:
                on_progress(label, done, len(pairing.pairs))
        rows.append(_row(model_name, eval_set, total=total, use_hce=use_hce, skipped=skipped,
                         metrics=metrics, seconds=time.perf_counter() - start))
    return rows
