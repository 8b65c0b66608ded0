"""Shared fixtures: paths to ../shared, small random models saved as real checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SHARED_DATA = SHARED / "data"
REFERENCE_TINY = SHARED / "fixtures" / "reference-tiny"
SAMPLES = REPO / "assets" / "samples"

needs_shared = pytest.mark.skipif(
    not SHARED_DATA.is_dir(),
    reason=f"../shared not found at {SHARED}: real-data tests need the shared folder",
)

torch.set_num_threads(min(2, torch.get_num_threads()))


def shared_pairs(source: str, limit: int | None = None) -> list[tuple[Path, Path]]:
    """(image, mask) paths of one source in ../shared/data, sorted by id."""
    images = sorted((SHARED_DATA / source / "images").glob("*.jpg"))[:limit]
    return [(p, SHARED_DATA / source / "masks" / f"{p.stem}.png") for p in images]


def tiny_reference_config() -> dict:
    """Constructor arguments of the reference-tiny fixture model."""
    c = json.loads((REFERENCE_TINY / "config.json").read_text())
    return {
        "encoder_config": c["encoder_config"],
        "layer_indices": c["hidden_state_indices"],
        "features": c["model"]["features"],
        "out_channels": c["model"]["out_channels"],
        "num_masks": c["model"]["num_outputs"],
        "use_bn": c["model"]["use_bn"],
        "mask_inter_features": c["mask_head_inter_features"],
        "iou_hidden": c["iou_head_hidden"],
    }


@pytest.fixture(scope="session")
def tiny_lite_checkpoint(tmp_path_factory) -> Path:
    """A small random-weight lite model saved in the bundled-weights format."""
    from s3od.hub import save_checkpoint
    from s3od.modeling import LiteSegmentation

    torch.manual_seed(0)
    model = LiteSegmentation(features=16, mask_upsample_features=16, mask_inter_features=8)
    path = tmp_path_factory.mktemp("ckpt") / "tiny-lite.safetensors"
    save_checkpoint(model.state_dict(), path, "lite",
                    {"features": 16, "mask_upsample_features": 16, "mask_inter_features": 8})
    return path


@pytest.fixture(scope="session")
def tiny_remover(tiny_lite_checkpoint):
    from s3od import BackgroundRemoval

    return BackgroundRemoval(tiny_lite_checkpoint, image_size=128, device="cpu")
