"""The numpy twins of s3od.transforms agree with the torch path (what ONNX Runtime relies on)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from s3od.imageio import load_image
from s3od.transforms import (
    crop_padding,
    letterbox_array,
    letterbox_image,
    normalize,
    normalize_array,
    preprocess,
    preprocess_arrays,
    resize_uint8_linear,
    resize_uint8_linear_array,
    unletterbox,
    unletterbox_array,
)

from .conftest import SAMPLES, needs_shared, shared_pairs

SIZES = (64, 128, 320, 512)


def _sample_images() -> list[np.ndarray]:
    return [load_image(p) for p in sorted(SAMPLES.glob("*.jpg"))]


@pytest.mark.parametrize("size", SIZES)
def test_preprocessing_is_bit_identical_on_sample_photos(size):
    images = _sample_images()
    ours, boxes_np = preprocess_arrays(images, size)
    reference, boxes_pt = preprocess(images, size)
    assert ours.dtype == np.float32 and ours.shape == (len(images), 3, size, size)
    assert boxes_np == boxes_pt
    np.testing.assert_array_equal(ours, reference.numpy())


@needs_shared
def test_preprocessing_is_bit_identical_on_shared_real_images():
    images = [load_image(img) for source in ("davis2016", "sod-bsds300", "s3od-fixture")
              for img, _ in shared_pairs(source, limit=2)]
    assert images, "no images in ../shared/data"
    for size in (128, 512):
        ours, _ = preprocess_arrays(images, size)
        np.testing.assert_array_equal(ours, preprocess(images, size)[0].numpy())


@pytest.mark.parametrize("shape", [(1, 4000), (4000, 1), (3, 1000), (7, 5), (480, 854)])
def test_resize_and_letterbox_agree_at_awkward_shapes(shape):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    padded_np, box_np = letterbox_array(image, 64)
    padded_pt, box_pt = letterbox_image(image, 64)
    assert box_np == box_pt
    np.testing.assert_array_equal(padded_np, padded_pt.numpy())
    out_np = resize_uint8_linear_array(image, 37, 53)
    np.testing.assert_array_equal(out_np,
                                  resize_uint8_linear(torch.from_numpy(image), 37, 53).numpy())


def test_normalisation_uses_the_same_constants():
    rng = np.random.default_rng(1)
    batch = rng.integers(0, 256, (2, 3, 8, 8)).astype(np.float32)
    np.testing.assert_array_equal(normalize_array(batch),
                                  normalize(torch.from_numpy(batch)).numpy())
    # Plain ImageNet statistics, stated here rather than read from the module.
    white = normalize_array(np.full((1, 3, 1, 1), 255, np.float32))[0, :, 0, 0]
    np.testing.assert_allclose(white, [(1 - 0.485) / 0.229, (1 - 0.456) / 0.224,
                                       (1 - 0.406) / 0.225], rtol=1e-6)


@pytest.mark.parametrize("shape", [(300, 451), (480, 854), (64, 64), (1000, 3), (2000, 1500)])
def test_unletterbox_agrees_with_torch(shape):
    """Down- and upsampling of soft masks: Pillow's filter vs torch's antialiased bilinear."""
    h, w = shape
    rng = np.random.default_rng(2)
    _, box = letterbox_array(np.zeros((h, w, 3), np.uint8), 128)
    probs = rng.random((3, 128, 128), dtype=np.float32)
    ours = unletterbox_array(probs, box)
    reference = unletterbox(torch.from_numpy(probs), box).numpy()
    assert ours.shape == reference.shape == (3, h, w) and ours.dtype == np.float32
    assert np.abs(ours - reference).max() < 1e-4
    # crop_padding is shared: slicing works on arrays and tensors alike.
    np.testing.assert_array_equal(crop_padding(probs, box),
                                  crop_padding(torch.from_numpy(probs), box).numpy())


def test_numpy_path_does_not_import_torch():
    code = ("import sys\n"
            "sys.modules['torch'] = None  # any 'import torch' now raises ImportError\n"
            "import numpy as np\n"
            "from s3od.transforms import preprocess_arrays, unletterbox_array\n"
            "batch, boxes = preprocess_arrays([np.zeros((30, 50, 3), np.uint8)], 64)\n"
            "assert unletterbox_array(np.ones((2, 64, 64), np.float32), boxes[0]).shape "
            "== (2, 30, 50)\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
