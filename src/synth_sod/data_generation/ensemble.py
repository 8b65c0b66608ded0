"""Teacher ensembles: one pseudo-label from the labels of several teachers.

Each teacher is run by ``s3od-data pseudo-label`` into its own folder (so each can be scored on
the dev split alone, and a new teacher does not mean relabelling with the others). This step
averages their soft masks, with optional weights, into the same generation layout, so
``filter`` and ``export`` run on it unchanged.

Where the teachers agree the average is as sharp as they are; where they disagree it is soft
(two teachers, one says object: 0.5), which is the soft label a student should learn there.
How well they agree is stored per sample as ``agreement``: the lowest IoU (at 0.5) of a
teacher's mask with the average, so the ``teacher_agreement`` filter drops photos the teachers
see differently.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from s3od.errors import InvalidImageError
from s3od.imageio import save_image_atomic
from synth_sod.data_generation.pseudo_label import binary_iou, mask_confidence
from synth_sod.data_generation.sharding import (
    Manifest,
    PipelineError,
    Shard,
    atomic_save,
    atomic_write_json,
    progress,
    read_json,
    take_shard,
)

log = logging.getLogger(__name__)


def _label_sets(folder: Path) -> dict[tuple[str, str], Path]:
    """``(source, stem) -> mask path`` of one teacher's pseudo-label folder."""
    if not folder.is_dir():
        raise PipelineError(f"label folder not found: {folder}")
    found = {}
    for source in sorted(p for p in folder.iterdir() if (p / "masks").is_dir()):
        for mask in sorted((source / "masks").glob("*.png")):
            found[(source.name, mask.stem)] = mask
    if not found:
        raise PipelineError(f"no pseudo-labels (<source>/masks/*.png) under {folder}")
    return found


def _read_soft_mask(path: Path, shape: tuple[int, int] | None) -> np.ndarray:
    try:
        with Image.open(path) as img:
            img.load()
            mask = np.asarray(img.convert("L"), dtype=np.float32) / 255.0
    except (OSError, ValueError) as err:
        raise InvalidImageError(f"unreadable mask {path}: {err}") from err
    if shape is not None and mask.shape != shape:
        raise InvalidImageError(f"{path}: mask is {mask.shape[1]}x{mask.shape[0]}, the other "
                                f"teachers' are {shape[1]}x{shape[0]}")
    return mask


def combine_masks(masks: Sequence[np.ndarray], weights: Sequence[float] | None = None
                  ) -> tuple[np.ndarray, float]:
    """Weighted mean of soft masks and the teachers' agreement (lowest IoU of one teacher's
    mask with the mean; 1.0 for a single teacher)."""
    if not masks:
        raise ValueError("no masks to combine")
    w = np.asarray(weights if weights is not None else [1.0] * len(masks), dtype=np.float64)
    if len(w) != len(masks) or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError(f"weights must be {len(masks)} finite non-negative numbers with a "
                         f"positive sum, got {list(w)}")
    mean = np.zeros_like(masks[0], dtype=np.float64)
    for m, wi in zip(masks, w, strict=True):
        mean += wi * m
    mean = (mean / w.sum()).astype(np.float32)
    agreement = min(binary_iou(m, mean) for m in masks) if len(masks) > 1 else 1.0
    return mean, agreement


def ensemble_labels(label_dirs: Sequence[str | os.PathLike], output_dir: str | os.PathLike,
                    *, weights: Sequence[float] | None = None, shard: Shard | None = None
                    ) -> Manifest:
    """Average the teachers' labels of every photo all of them labelled; resumable.

    Photos missing from some teacher are reported as failures (never averaged over fewer
    teachers, which would change what a label means without a word).
    """
    if len(label_dirs) < 2:
        raise PipelineError("an ensemble needs at least two --label-dir folders")
    if weights is not None and len(weights) != len(label_dirs):
        raise PipelineError(f"{len(weights)} weights for {len(label_dirs)} label folders")
    if weights is not None and (any(not math.isfinite(w) or w < 0 for w in weights)
                                or sum(weights) <= 0):
        raise PipelineError(f"weights must be finite, >= 0 and not all 0, got {list(weights)}")
    out = Path(output_dir).resolve()
    dirs = [Path(d).resolve() for d in label_dirs]
    if out in dirs:
        raise PipelineError(f"--output-dir {out} is one of the label folders")
    sets = [_label_sets(d) for d in dirs]
    keys = sorted(set().union(*sets))
    shard = shard or Shard()
    mine = take_shard(keys, shard)
    manifest = Manifest.create(out, "ensemble", shard, {
        "label_dirs": [str(d) for d in dirs],
        "weights": list(weights) if weights is not None else None})
    manifest.total = len(mine)
    todo = []
    for key in mine:
        if (out / key[0] / "masks" / f"{key[1]}.png").is_file():
            manifest.skip()
        else:
            todo.append(key)
    for source, stem in progress(todo, total=len(todo), desc="ensemble"):
        sample_id = f"{source}_{stem}"
        missing = [str(d) for d, s in zip(dirs, sets, strict=True) if (source, stem) not in s]
        if missing:
            manifest.fail(sample_id, f"not labelled by {', '.join(missing)}")
            continue
        try:
            masks: list[np.ndarray] = []
            for s in sets:
                masks.append(_read_soft_mask(s[(source, stem)],
                                             masks[0].shape if masks else None))
            mean, agreement = combine_masks(masks, weights)
            image = _find_image(dirs[0] / source / "images", stem)
            meta_first = _teacher_meta(dirs[0] / source / "metadata" / f"{stem}.json", True)
        except (InvalidImageError, PipelineError, ValueError) as err:
            log.warning("skipping %s: %s", sample_id, err)
            manifest.fail(sample_id, err)
            continue
        folder = out / source
        atomic_save(folder / "images" / image.name,
                    lambda tmp, src=image: shutil.copyfile(src, tmp))
        metas = [meta_first] + [_teacher_meta(d / source / "metadata" / f"{stem}.json")
                                for d in dirs[1:]]
        meta_out = {"id": sample_id, "category": source, "caption": "",
                    "source_file": meta_first.get("source_file"),
                    "teacher": "ensemble", "teachers": [m.get("teacher") for m in metas],
                    "label_dirs": [d.name for d in dirs],
                    "weights": list(weights) if weights is not None else None,
                    "agreement": round(agreement, 4),
                    "confidence": round(mask_confidence(mean), 4)}
        atomic_write_json(folder / "metadata" / f"{stem}.json", meta_out)
        save_image_atomic(Image.fromarray(np.round(mean * 255).astype(np.uint8), "L"),
                          folder / "masks" / f"{stem}.png")
        manifest.record({"id": sample_id, "agreement": meta_out["agreement"],
                         "confidence": meta_out["confidence"]})
    manifest.close()
    log.info("ensemble %s: %d combined, %d already done, %d failed", shard.tag, manifest.done,
             manifest.skipped, len(manifest.failed))
    return manifest


def _teacher_meta(path: Path, required: bool = False) -> dict:
    """A teacher's per-photo metadata; ``{}`` when it is not an object, or (unless
    ``required``) when it is missing or unreadable."""
    try:
        meta = read_json(path, "teacher metadata")
    except PipelineError:
        if required:
            raise
        return {}
    return meta if isinstance(meta, dict) else {}


def _find_image(folder: Path, stem: str) -> Path:
    matches = sorted(p for p in folder.glob(f"{stem}.*") if p.is_file())
    if not matches:
        raise PipelineError(f"no image for {stem} in {folder}")
    return matches[0]
