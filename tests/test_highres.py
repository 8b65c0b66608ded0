"""Large photos: the tiled path agrees with the published one; DINOv3 above 1024 px."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import REFERENCE_TINY, SAMPLES, tiny_reference_config
from tests.luma_model import luma_remover


def test_large_photo_tiled_path_matches_the_published_path():
    photo = np.asarray(Image.open(SAMPLES / "coffee.jpg").convert("RGB").resize(
        (3000, 2000), Image.Resampling.BILINEAR))
    remover = luma_remover(image_size=128)
    published = remover.remove_background(photo)
    tiled = remover.remove_background(photo, full_size_candidates=False)
    assert tiled.predicted_mask.shape == (2000, 3000)
    assert tiled.predicted_mask.dtype == np.float32
    assert tiled.all_masks.shape == (3, 85, 128)          # the others stay at network size
    np.testing.assert_allclose(tiled.predicted_mask, published.predicted_mask, atol=1e-5)
    a, b = np.asarray(tiled.rgba_image), np.asarray(published.rgba_image)
    np.testing.assert_array_equal(a[..., :3], b[..., :3])
    assert np.abs(a[..., 3].astype(int) - b[..., 3]).max() <= 1   # float rounding at most
    guided = remover.remove_background(photo, refine="guided", full_size_candidates=False)
    assert guided.predicted_mask.shape == (2000, 3000)
    assert guided.predicted_mask.min() >= 0 and guided.predicted_mask.max() <= 1


@pytest.mark.slow
@pytest.mark.skipif(not REFERENCE_TINY.is_dir(), reason="needs ../shared/fixtures/reference-tiny")
@pytest.mark.parametrize("size", [1536, 2048])
def test_dinov3_runs_above_1024(size):
    """RoPE positions come from the patch grid, so sizes past the published 1024 work."""
    from s3od import BackgroundRemoval
    from s3od.modeling import DPTSegmentation

    torch.manual_seed(0)
    model = DPTSegmentation(**tiny_reference_config()).eval()
    remover = BackgroundRemoval.from_model(model, image_size=size, device="cpu")
    photo = np.asarray(Image.open(SAMPLES / "astronaut.jpg").convert("RGB"))
    low, ious = remover.predict_arrays([photo], full_resolution=False)[0]
    assert low.shape == (3, size, size) and ious.shape == (3,)
    assert np.isfinite(low).all()
