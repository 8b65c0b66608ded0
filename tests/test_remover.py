"""The shared remover API (s3od.remover), the one loader (s3od.load_remover) and rendering."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import s3od
from s3od.remover import LARGE_IMAGE_PIXELS, Remover, postprocess_for

from .conftest import SAMPLES


class DiskRemover(Remover):
    """A backend without a network: one centred disk (best) and its complement as candidates.

    Records the ``full_resolution`` of each call, which is what the base decides for backends.
    """

    backend = "test"
    model_name, source, image_size, device = "disk", "in-memory", 64, "cpu"

    def __init__(self) -> None:
        self.calls: list[bool] = []

    def predict_arrays(self, images, *, full_resolution=True):
        self.calls.append(full_resolution)
        out = []
        for rgb in images:
            h, w = rgb.shape[:2] if full_resolution else (32, 32)
            yy, xx = np.mgrid[:h, :w]
            disk = (((yy - h / 2) / (h / 4)) ** 2 + ((xx - w / 2) / (w / 4)) ** 2 < 1)
            masks = np.stack([disk, ~disk]).astype(np.float32)
            out.append((masks, np.array([0.9, 0.2], np.float32)))
        return out


def test_backends_share_one_api():
    from s3od.export.ort_predictor import OnnxBackgroundRemoval
    from s3od.predictor import BackgroundRemoval

    for cls in (BackgroundRemoval, OnnxBackgroundRemoval):
        assert issubclass(cls, Remover)
        for name in ("remove_background", "remove_backgrounds", "iter_remove_backgrounds",
                     "remove_arrays", "result"):
            assert name not in vars(cls), f"{cls.__name__} repeats {name}"


def test_base_api_batches_and_picks_the_best_candidate():
    remover = DiskRemover()
    rgb = np.full((40, 60, 3), 200, np.uint8)
    results = remover.remove_backgrounds([rgb, rgb[:30], rgb], batch_size=2, threshold=0.5)
    assert remover.calls == [True, True]                          # two forward passes
    assert [r.predicted_mask.shape for r in results] == [(40, 60), (30, 60), (40, 60)]
    assert all(r.best_index == 0 and r.all_masks.shape[0] == 2 for r in results)
    one = remover.remove_background(SAMPLES / "cat.jpg")
    assert one.rgba_image.mode == "RGBA" and one.binary_mask().sum() > 0
    with pytest.raises(ValueError, match="batch_size"):
        list(remover.iter_remove_backgrounds([rgb], batch_size=0))


def test_edges_ask_the_backend_for_network_resolution():
    remover = DiskRemover()
    rgb = np.full((40, 60, 3), 200, np.uint8)
    result = remover.remove_background(rgb, refine="guided")
    assert remover.calls == [False] and result.predicted_mask.shape == (40, 60)
    small = remover.remove_background(rgb, full_size_candidates=False)
    assert remover.calls[-1] is False and small.all_masks.shape == (2, 32, 32)


def test_memory_policy_keeps_large_photos_candidates_small():
    side = int(LARGE_IMAGE_PIXELS ** 0.5) + 1
    large = np.broadcast_to(np.zeros((1, 1, 3), np.uint8), (side, side, 3))  # no memory
    small = np.zeros((64, 64, 3), np.uint8)
    assert postprocess_for([small], full_size_candidates=None) is None    # published path
    post = postprocess_for([small, large], full_size_candidates=None)
    assert post is not None and not post.full_size_candidates and post.needs_low_res
    assert postprocess_for([large], full_size_candidates=True) is None     # --all-masks wins
    assert postprocess_for([small], refine="guided").config.mode == "guided"


def test_render_is_the_one_output_path():
    result = DiskRemover().remove_background(np.full((40, 60, 3), 100, np.uint8))
    assert result.render().mode == "RGBA"
    assert result.render(mask_only=True).mode == "L"
    white = result.render(background="white")
    assert white.mode == "RGB" and white.getpixel((0, 0)) == (255, 255, 255)
    assert result.render(background=(0, 0, 255)).getpixel((0, 0)) == (0, 0, 255)
    over = result.render(background=Image.new("RGB", (7, 5), (0, 255, 0)))
    assert over.size == (60, 40) and over.getpixel((0, 0)) == (0, 255, 0)
    cropped = result.render(mask_only=True, crop=True)
    box = result.binary_mask().nonzero()
    assert cropped.size == (box[1].max() - box[1].min() + 1, box[0].max() - box[0].min() + 1)


def test_load_remover_picks_and_checks_the_backend(tiny_lite_checkpoint, tmp_path):
    remover = s3od.load_remover(tiny_lite_checkpoint, image_size=64, device="cpu",
                                precision="bf16")
    assert remover.backend == "torch" and remover.runtime.precision == "bf16"
    assert "bf16" in remover.describe() and "64px" in remover.describe()
    missing = tmp_path / "missing.onnx"
    with pytest.raises(ValueError, match="runs as it was exported"):
        s3od.load_remover(missing, precision="bf16")
    with pytest.raises(ValueError, match="runs as it was exported"):
        s3od.load_remover(missing, compile=True)
    with pytest.raises(ValueError, match="backend must be"):
        s3od.load_remover(tiny_lite_checkpoint, backend="tensorrt")
    with pytest.raises(ValueError, match=r"needs an \.onnx file"):
        s3od.load_remover(None, backend="onnx")
    with pytest.raises(ValueError, match="torch backend needs a checkpoint"):
        s3od.load_remover(b"onnx bytes", backend="torch")
    pytest.importorskip("onnxruntime", reason="needs the [onnx] extra")
    with pytest.raises(s3od.ModelNotFoundError):
        s3od.load_remover(missing)
    with pytest.raises(s3od.CheckpointError, match="cannot load ONNX model"):
        s3od.load_remover(tiny_lite_checkpoint, backend="onnx")  # forced: no suffix needed


def test_the_base_and_the_loader_import_without_torch():
    code = ("import sys, s3od, s3od.remover, s3od.loading, s3od.export.ort_predictor; "
            "sys.exit('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0
