"""Small models for the ONNX and Ray tests, and one shared export per test session."""

from __future__ import annotations

from pathlib import Path

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

_EXPORTS: dict[Path, tuple[Path, int, str]] = {}


def exported_lite(folder: Path, checkpoint: Path) -> tuple[Path, int, str]:
    """``s3od export-onnx`` on the tiny lite checkpoint (once per session).

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
