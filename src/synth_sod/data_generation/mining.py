"""Step 6: hard-category mining — which classes should the next round generate more of?

A student model predicts each validation image of a filtered synthetic set and its mirror
image. Per image (S = S-measure, pysodmetrics, α = 0.5)::

    s_orig = S(pred, mask)        s_flip = S(flip(pred_on_flipped), mask)
    s_cons = S(pred, binarised flip(pred_on_flipped))   (NaN → mean of the other two)
    score  = (s_orig + s_flip) · s_cons / 2

A category's score is the mean over its first ``max_val_samples`` images, and becomes a sample
count for the next round (published schedule)::

    d = 0.1                              if score ≥ 0.95
    d = 0.7 + 0.3 · (0.8 − score) / 0.8  if score ≤ 0.8
    d = 0.1 + 0.6 · (0.95 − score) / 0.15 otherwise
    n = round(min + (max − min) · sigmoid(8 · (d − 0.5)))

Each image is predicted once (the published script predicted and scored every image twice).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from s3od.errors import InvalidImageError
from synth_sod.data_generation.filters.base import Sample
from synth_sod.data_generation.sharding import (
    Manifest,
    PipelineError,
    Shard,
    atomic_write_json,
    progress,
    read_json,
    take_shard,
)

log = logging.getLogger(__name__)
Predictor = Callable[[list[np.ndarray]], list[np.ndarray]]


def category_of(stem: str) -> str:
    """``<class>_<idx>`` → ``<class>`` (the flat filtered naming)."""
    return stem.rsplit("_", 1)[0] if "_" in stem else stem


def difficulty(score: float) -> float:
    if score >= 0.95:
        return 0.1
    if score <= 0.8:
        return 0.7 + 0.3 * (0.8 - score) / 0.8
    return 0.1 + 0.6 * (0.95 - score) / (0.95 - 0.8)


def new_sample_count(score: float, min_samples: int = 20, max_samples: int = 100) -> int:
    """How many images to generate for a category with this score in the next round."""
    d = difficulty(score)
    return round(min_samples + (max_samples - min_samples) / (1 + math.exp(-8 * (d - 0.5))))


def s_measure(pred: np.ndarray, gt: np.ndarray) -> float:
    """S-measure of one prediction (float [0, 1]) against a uint8 mask."""
    import py_sod_metrics

    sm = py_sod_metrics.Smeasure()
    sm.step(pred=np.clip(np.rint(pred * 255), 0, 255).astype(np.uint8), gt=gt)
    return float(sm.get_results()["sm"])


def image_scores(predictor: Predictor, image: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """``s_orig``, ``s_flip``, ``s_cons`` and ``score`` for one image (one batched prediction)."""
    plain, mirrored = predictor([image, np.ascontiguousarray(image[:, ::-1])])
    unflipped = np.ascontiguousarray(mirrored[:, ::-1])
    s_orig, s_flip = s_measure(plain, mask), s_measure(unflipped, mask)
    s_cons = s_measure(plain, ((unflipped > 0.5) * 255).astype(np.uint8))
    if math.isnan(s_cons):
        s_cons = (s_orig + s_flip) / 2
    return {"s_orig": s_orig, "s_flip": s_flip, "s_cons": s_cons,
            "score": (s_orig + s_flip) * s_cons / 2}


def validation_samples(input_dir: str | os.PathLike, max_val_samples: int = 10) -> list[Sample]:
    """Images listed in ``data_splits.json['val']`` if present, else every image; first
    ``max_val_samples`` per category (flat ``images/<class>_<idx>`` + ``masks/`` layout)."""
    root = Path(input_dir)
    images_dir, masks_dir = root / "images", root / "masks"
    if not images_dir.is_dir() or not masks_dir.is_dir():
        raise PipelineError(f"{root} must contain images/ and masks/ (a filtered synthetic set)")
    splits = root / "data_splits.json"
    if splits.is_file():
        data = read_json(splits, "split file")
        names = [Path(str(n)).name for n in (data.get("val") or [])] if isinstance(
            data, dict) else []
        files = [images_dir / n for n in names]
    else:
        files = sorted(p for p in images_dir.iterdir()
                       if p.suffix.lower() in (".jpg", ".jpeg", ".png") and not
                       p.name.startswith("."))
    per_cat: dict[str, list[Sample]] = defaultdict(list)
    for f in files:
        mask = masks_dir / f"{f.stem}.png"
        if not f.is_file() or not mask.is_file():
            continue
        cat = category_of(f.stem)
        if len(per_cat[cat]) < max_val_samples:
            per_cat[cat].append(Sample(f, mask, cat, f.stem.rsplit("_", 1)[-1]))
    samples = [s for cat in sorted(per_cat) for s in per_cat[cat]]
    if not samples:
        raise PipelineError(f"no image/mask pairs found under {root}")
    return samples


def mine_categories(input_dir: str | os.PathLike, predictor: Predictor,
                    output_dir: str | os.PathLike,
                    *, min_samples: int = 20, max_samples: int = 100, max_val_samples: int = 10,
                    shard: Shard | None = None, settings: dict[str, Any] | None = None
                    ) -> Path | None:
    """Score this shard's images (resumable), then merge every shard's scores into
    ``class_weights.json`` (feed it to ``class_weights_path``) and a timestamped report.

    Returns the weights file, or None while other shards' scores are still missing.
    """
    shard = shard or Shard()
    out = Path(output_dir)
    samples = take_shard(validation_samples(input_dir, max_val_samples), shard)
    scores_file = out / "mine_scores" / f"{shard.tag}.json"
    scores: dict[str, dict[str, Any]] = {}
    if scores_file.is_file():
        scores = dict(read_json(scores_file, "score file"))
    manifest = Manifest.create(out, "mine", shard, {"input_dir": str(input_dir),
                                                    **(settings or {})})
    todo = [s for s in samples if s.id not in scores]
    manifest.total, manifest.skipped = len(samples), len(samples) - len(todo)
    for i, sample in enumerate(progress(todo, total=len(todo), desc="mine")):
        try:
            scores[sample.id] = {"category": sample.category,
                                 **image_scores(predictor, sample.image, sample.mask)}
            manifest.record()
        except (InvalidImageError, OSError, ValueError) as err:
            manifest.fail(sample.id, err)
        if i % 50 == 49:
            atomic_write_json(scores_file, scores)
    atomic_write_json(scores_file, scores)
    manifest.close()
    return write_mining_result(out, shard.count, min_samples, max_samples)


def write_mining_result(output_dir: Path, num_shards: int, min_samples: int = 20,
                        max_samples: int = 100) -> Path | None:
    """Merge ``mine_scores/*.json`` once all ``num_shards`` files exist."""
    files = sorted((output_dir / "mine_scores").glob(f"shard-*-of-{num_shards:05d}.json"))
    if len(files) < num_shards:
        log.info("mining: %d of %d shard score files present; merge later", len(files),
                 num_shards)
        return None
    per_cat: dict[str, list[float]] = defaultdict(list)
    per_sample: dict[str, dict[str, float]] = defaultdict(dict)
    for f in files:
        for sid, rec in read_json(f, "score file").items():
            per_cat[rec["category"]].append(float(rec["score"]))
            per_sample[rec["category"]][sid] = float(rec["score"])
    cat_scores = {c: float(np.mean(v)) for c, v in sorted(per_cat.items())}
    new_samples = {c: new_sample_count(s, min_samples, max_samples)
                   for c, s in cat_scores.items()}
    ranked = sorted(cat_scores, key=cat_scores.__getitem__)
    report = {"category_scores": cat_scores, "new_samples": new_samples,
              "category_sample_scores": per_sample,
              "stable_categories": ranked[::-1][:15], "unstable_categories": ranked[:15]}
    atomic_write_json(output_dir / f"_eval_results_{time.strftime('%Y%m%d_%H%M%S')}.json", report)
    return atomic_write_json(output_dir / "class_weights.json", {"new_samples": new_samples})


def student_predictor(model_path: str, image_size: int | None = None,
                      device: str | None = None) -> Predictor:
    """Same student wrapper as the flip-consistency filter."""
    from synth_sod.data_generation.filters.consistency import student_predictor as make

    return make(model_path, image_size, device)


if __name__ == "__main__":
    from synth_sod.data_generation.module_entry import run_as_step

    run_as_step("mine")
