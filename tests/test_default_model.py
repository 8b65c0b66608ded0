"""The shipped s3od-lite weights: the offline default, and a quality floor on held-out photos.

Guards what every offline user gets from ``BackgroundRemoval()``: if the weights file, its
loading, the preprocessing (resize, padding, normalisation, channel order) or the mask
post-processing regress, the mean IoU on the held-out split falls towards what a method with no
weights at all reaches, and the floor below catches it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import REPO, SHARED_DATA, needs_shared

WEIGHTS = REPO / "src" / "s3od" / "weights" / "s3od-lite.safetensors"
SPLIT = REPO / "src" / "synth_sod" / "model_training" / "splits" / "lite_eval_bsds300.txt"
# Best baseline without weights on these 70 images: GrabCut (5 iterations, seeded) from a centred
# rectangle with a 10 % margin, mean IoU 0.473 (spectral residual + Otsu 0.256, fine-grained +
# Otsu 0.258, the rectangle alone 0.320). Measured with the IoU definition below by
# `python benchmarks/quality.py` on 2026-11-25; table in docs/quality.md.
BEST_BASELINE_IOU = 0.473
# Floor 0.573. Same images, same definition: the shipped model at its default 320 px 0.658 (at
# 512 px 0.635); the first s3od-lite (width 64, 512 px) 0.641; all pass with room for numeric
# differences between machines. The shipped model's lead over GrabCut has a paired-bootstrap
# 95 % interval of [+0.117, +0.253]: a lead of 0.10 is what "clearly better" can claim. Without
# the ImageNet normalisation the model scores 0.548 and fails; weights or preprocessing that fall
# back to baseline level fail. Subtler slips (RGB read as BGR: 0.634; aspect not kept: 0.651)
# are left to test_predictor.py's end-to-end match with the published code's outputs.
MARGIN = 0.10


@pytest.fixture(scope="module")
def default_remover(tmp_path_factory):
    """``BackgroundRemoval()`` with the hub offline and an empty hub cache."""
    from huggingface_hub import constants

    from s3od import BackgroundRemoval

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setattr(constants, "HF_HUB_OFFLINE", True)
        mp.setattr(constants, "HF_HUB_CACHE", str(tmp_path_factory.mktemp("empty-hub-cache")))
        return BackgroundRemoval()


def test_shipped_weights_file():
    """fp16 safetensors within the 12 MB budget, tagged as the lite architecture."""
    import json

    from safetensors import safe_open

    assert WEIGHTS.is_file(), f"bundled weights missing: {WEIGHTS}"
    assert WEIGHTS.stat().st_size <= 12 * 1024 * 1024
    with safe_open(str(WEIGHTS), "pt") as f:
        meta = json.loads(f.metadata()["s3od"])
        names = f.keys()
        dtypes = {str(f.get_slice(k).get_dtype()) for k in names}
    assert meta["architecture"] == "lite" and meta["name"] == "s3od-lite"
    # The file's own config and the registry's must agree (a bare copy loads by the registry's).
    from s3od.registry import LITE_CONFIG

    assert meta["config"] == LITE_CONFIG
    assert "F32" not in dtypes and "F16" in dtypes


def test_default_offline_is_bundled_lite(default_remover):
    assert default_remover.model_name == "s3od-lite"
    source = Path(default_remover.source)
    assert source.parts[-3:] == ("s3od", "weights", "s3od-lite.safetensors")
    assert default_remover.image_size == 320


def _split_ids() -> list[str]:
    lines = (line.strip() for line in SPLIT.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


@needs_shared
def test_quality_floor_on_held_out_split(default_remover):
    """Mean IoU over the 70 held-out sod-bsds300 images clears the best baseline by MARGIN."""
    source = SHARED_DATA / "sod-bsds300"
    ids = _split_ids()
    assert len(ids) == 70
    images = [source / "images" / f"{i}.jpg" for i in ids]
    results = default_remover.remove_backgrounds(images, batch_size=8)
    ious = []
    for i, result in zip(ids, results, strict=True):
        gt = np.asarray(Image.open(source / "masks" / f"{i}.png").convert("L")) > 128
        pred = result.predicted_mask >= 0.5
        assert pred.shape == gt.shape
        union = np.logical_or(pred, gt).sum()
        ious.append(np.logical_and(pred, gt).sum() / union if union else 1.0)
    mean_iou = float(np.mean(ious))
    assert mean_iou >= BEST_BASELINE_IOU + MARGIN, (
        f"mean IoU {mean_iou:.3f} < floor {BEST_BASELINE_IOU + MARGIN:.3f} "
        f"(best baseline {BEST_BASELINE_IOU:.3f} + margin {MARGIN:.2f})")
