"""Small models for the ONNX and Ray tests, and one shared export per test session."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from typer.testing import CliRunner

from .conftest import SAMPLES

# A DINOv3 ViT with the reference-tiny widths (hidden 48, 3 heads) but 4 blocks: same code path
# as the published ViT-B, seconds to export.
TINY_DINOV3 = {
    "hidden_size": 48,
    "num_attention_heads": 3,
    "intermediate_size": 96,
    "num_hidden_layers": 4,
    "num_register_tokens": 4,
    "patch_size": 16,
    "image_size": 224,
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-5,
    "layerscale_value": 1.0,
    "rope_theta": 100.0,
    "pos_embed_rescale": 2.0,
    "query_bias": True,
    "key_bias": False,
    "value_bias": True,
    "proj_bias": True,
    "mlp_bias": True,
    "use_gated_mlp": False,
}
TINY_DPT = {"encoder_config": TINY_DINOV3, "layer_indices": (1, 2, 3, 4), "features": 32,
            "out_channels": (16, 32, 64, 64), "num_masks": 3}
LITE_SIZE = 128

LOGIT_SPREAD = 4.0

_CHECKPOINTS: dict[str, Path] = {}
_EXPORTS: dict[Path, tuple[Path, int, str]] = {}


@torch.no_grad()
def calibrate(model: torch.nn.Module, images: list[np.ndarray], size: int) -> torch.nn.Module:
    """Make a random-weight model behave like a trained one on ``images``.

    Random weights give masks of ~0.5 everywhere, where any runtime "agrees" trivially. Here the
    batch-norm statistics are re-estimated on the photos and the last layer of every mask head
    is rescaled so its logits have median 0 and standard deviation :data:`LOGIT_SPREAD`: masks
    then vary over the image and saturate like a trained model's.
    """
    from s3od.transforms import preprocess

    batch, _ = preprocess(images, size)
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # cumulative average over the calibration pass
    model.train()
    model(batch)
    model.eval()
    logits = model(batch)["pred_masks"]
    for i, head in enumerate(model.seg_head.mask_head.mask_heads):
        last = head[-1]
        values = logits[:, i]
        scale = LOGIT_SPREAD / float(values.std())
        last.weight.mul_(scale)
        last.bias.sub_(float(values.median())).mul_(scale)
    return model


def sample_arrays() -> list[np.ndarray]:
    from s3od.imageio import load_image

    return [load_image(p) for p in sorted(SAMPLES.glob("*.jpg"))]


def calibrated_lite_checkpoint(folder: Path) -> Path:
    """A small lite model, calibrated on the sample photos, saved as a real checkpoint."""
    if "lite" not in _CHECKPOINTS:
        from s3od.hub import save_checkpoint
        from s3od.modeling import LiteSegmentation

        config = {"features": 16, "mask_upsample_features": 16, "mask_inter_features": 8}
        torch.manual_seed(0)
        model = calibrate(LiteSegmentation(**config), sample_arrays(), LITE_SIZE)
        _CHECKPOINTS["lite"] = save_checkpoint(model.state_dict(), folder / "calibrated.pt",
                                               "lite", config)
    return _CHECKPOINTS["lite"]


def exported_lite(folder: Path, checkpoint: Path) -> tuple[Path, int, str]:
    """``s3od export-onnx`` on a lite checkpoint (once per session and checkpoint).

    Returns the file, the command's exit code and its output.
    """
    if checkpoint not in _EXPORTS:
        from s3od.cli import app

        target = folder / "tiny-lite.onnx"
        args = ["export-onnx", str(checkpoint), "-o", str(target), "--image-size",
                str(LITE_SIZE)]
        for sample in sorted(SAMPLES.glob("*.jpg"))[:2]:
            args += ["--verify-image", str(sample)]
        result = CliRunner().invoke(app, args)
        _EXPORTS[checkpoint] = (target, result.exit_code, result.output)
    return _EXPORTS[checkpoint]
