"""BackgroundRemoval: result contract, geometry round trips, inputs, and end-to-end fidelity."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from s3od import BackgroundRemoval, InvalidImageError, RemovalResult
from s3od.transforms import letterbox_geometry, letterbox_image, unletterbox

from .conftest import REFERENCE_TINY, SAMPLES, SHARED, needs_shared, tiny_reference_config


def test_result_fields_shapes_dtypes_and_ranges(tiny_remover):
    image = Image.open(SAMPLES / "cat.jpg")
    result = tiny_remover.remove_background(image)
    w, h = image.size
    assert isinstance(result, RemovalResult)
    assert result.predicted_mask.shape == (h, w) and result.predicted_mask.dtype == np.float32
    assert result.all_masks.shape == (3, h, w) and result.all_masks.dtype == np.float32
    assert result.all_ious.shape == (3,) and result.all_ious.dtype == np.float32
    assert result.all_masks.min() >= 0.0 and result.all_masks.max() <= 1.0
    assert np.all((result.all_ious > 0) & (result.all_ious < 1))
    best = int(np.argmax(result.all_ious))
    assert np.array_equal(result.predicted_mask, result.all_masks[best])
    assert result.rgba_image.mode == "RGBA" and result.rgba_image.size == (w, h)
    rgba = np.asarray(result.rgba_image)
    assert np.array_equal(rgba[..., 3], (result.predicted_mask * 255).astype(np.uint8))
    assert np.array_equal(rgba[..., :3], np.asarray(image.convert("RGB")))


@pytest.mark.parametrize("shape", [(333, 500), (500, 333), (1001, 1024), (7, 3), (1, 4000),
                                   (4000, 1), (256, 256)])
def test_letterbox_round_trip_any_size(shape):
    h, w = shape
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    padded, box = letterbox_image(image, 64)
    assert padded.shape == (3, 64, 64)
    assert box.top + box.bottom + box.resized_height == 64
    assert box.left + box.right + box.resized_width == 64
    assert max(box.resized_height, box.resized_width) == 64
    # A map that is 1 inside the image region and 0 in the padding comes back as all ones.
    inside = torch.zeros(1, 64, 64)
    inside[:, box.top:64 - box.bottom, box.left:64 - box.right] = 1.0
    restored = unletterbox(inside, box)
    assert restored.shape == (1, h, w)
    assert torch.allclose(restored, torch.ones_like(restored), atol=1e-5)


def test_resize_matches_opencv_bit_for_bit_at_fixture_sizes():
    cv2 = pytest.importorskip("cv2", reason="OpenCV (extra [train]) is the reference here")
    from s3od.transforms import resize_uint8_linear

    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (481, 321, 3), dtype=np.uint8)
    for h, w in ((256, 170), (320, 213), (64, 42)):
        ours = resize_uint8_linear(torch.from_numpy(image), h, w).numpy()
        np.testing.assert_array_equal(ours, cv2.resize(image, (w, h)))


def test_published_geometry_for_even_padding():
    box = letterbox_geometry(480, 854, 256)  # landscape: new_h = int(256 / (854/480)) = 143
    assert (box.resized_height, box.resized_width) == (143, 256)
    assert box.top == 56 and box.bottom == 57  # odd padding: published code crashed here
    square = letterbox_geometry(100, 100, 64)
    assert (square.top, square.left, square.resized_width) == (0, 0, 64)


@pytest.mark.parametrize("shape", [(1, 4000), (4000, 1), (3, 1000)])
def test_extreme_aspect_ratios_predict(tiny_remover, shape):
    image = np.full((*shape, 3), 128, np.uint8)
    result = tiny_remover.remove_background(image)
    assert result.predicted_mask.shape == shape
    assert result.rgba_image.size == (shape[1], shape[0])


def _jpeg_bytes(array: np.ndarray, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="JPEG", quality=95, **kw)
    return buf.getvalue()


def test_every_input_type_gives_the_same_result(tiny_remover, tmp_path):
    rgb = np.asarray(Image.open(SAMPLES / "coffee.jpg").convert("RGB"))
    path = tmp_path / "coffee.png"
    Image.fromarray(rgb).save(path)
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 200, np.uint8)])
    inputs = [rgb, Image.fromarray(rgb), path, str(path), path.read_bytes(), rgba,
              io.BytesIO(path.read_bytes())]
    results = [tiny_remover.remove_background(x).predicted_mask for x in inputs]
    for mask in results[1:]:
        np.testing.assert_array_equal(mask, results[0])


def test_grey_16bit_cmyk_palette_and_la_images_are_converted(tiny_remover, tmp_path):
    grey = (np.arange(64 * 48).reshape(48, 64) % 256).astype(np.uint8)
    cases = {
        "L": Image.fromarray(grey, "L"),
        "I;16": Image.fromarray((grey.astype(np.uint16) * 257), "I;16"),
        "LA": Image.fromarray(np.dstack([grey, grey]), "LA"),
        "P": Image.fromarray(grey, "L").convert("P"),
        "CMYK": Image.fromarray(np.dstack([grey] * 3), "RGB").convert("CMYK"),
    }
    from s3od.imageio import load_image

    for mode, img in cases.items():
        rgb = load_image(img)
        assert rgb.shape == (48, 64, 3) and rgb.dtype == np.uint8, mode
        # every conversion keeps the grey ramp (within CMYK/palette rounding)
        assert np.abs(rgb[..., 0].astype(int) - grey).max() <= 3, mode
    # numpy variants: HxW grey, uint16, float
    assert np.array_equal(load_image(grey)[..., 1], grey)
    assert np.array_equal(load_image(grey.astype(np.uint16) * 257)[..., 2], grey)
    assert np.array_equal(load_image(grey / 255.0)[..., 0], grey)


def test_exif_orientation_is_applied(tiny_remover, tmp_path):
    rgb = np.zeros((40, 80, 3), np.uint8)
    rgb[:, :20] = 255  # white band on the left
    img = Image.fromarray(rgb)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 CW on display
    path = tmp_path / "rotated.jpg"
    img.save(path, exif=exif, quality=95)
    result = tiny_remover.remove_background(path)
    assert result.predicted_mask.shape == (80, 40)
    shown = np.asarray(result.rgba_image)[..., :3]
    assert shown[:20, :, 0].mean() > 200 and shown[-20:, :, 0].mean() < 50


@pytest.mark.parametrize("bad", [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n\x00\x00trunc"])
def test_undecodable_input_raises_typed_error(tiny_remover, bad):
    with pytest.raises(InvalidImageError):
        tiny_remover.remove_background(bad)


def test_missing_file_and_bad_array_raise_typed_error(tiny_remover, tmp_path):
    with pytest.raises(InvalidImageError, match="no such file"):
        tiny_remover.remove_background(tmp_path / "nope.jpg")
    with pytest.raises(InvalidImageError, match="shape"):
        tiny_remover.remove_background(np.zeros((4, 4, 2), np.uint8))


def test_batched_equals_single(tiny_remover):
    images = [np.asarray(Image.open(SAMPLES / n).convert("RGB")) for n in
              ("cat.jpg", "coffee.jpg", "astronaut.jpg")]
    batched = tiny_remover.remove_backgrounds(images, batch_size=2)
    for image, result in zip(images, batched, strict=True):
        single = tiny_remover.remove_background(image)
        np.testing.assert_allclose(result.all_masks, single.all_masks, atol=1e-5)


def test_image_size_must_be_a_stride_multiple(tiny_lite_checkpoint):
    with pytest.raises(ValueError, match="multiple of 32"):
        BackgroundRemoval(tiny_lite_checkpoint, image_size=100)
    with pytest.raises(ValueError, match="batch_size"):
        BackgroundRemoval(tiny_lite_checkpoint, image_size=64).remove_backgrounds([], 0)


def test_output_helpers(tiny_remover):
    result = tiny_remover.remove_background(SAMPLES / "cat.jpg")
    result.predicted_mask[:] = 0.0
    result.predicted_mask[50:100, 20:60] = 1.0
    white = np.asarray(result.composite("white"))
    assert (white[0, 0] == 255).all()
    np.testing.assert_array_equal(white[60, 30], result.image[60, 30])
    assert result.crop(result.mask_image()).size == (40, 50)


@needs_shared
def test_predictor_reproduces_published_end_to_end_results():
    from safetensors.torch import load_file

    from s3od.hub import ResolvedCheckpoint

    cases = json.loads((REFERENCE_TINY / "predict.json").read_text())
    resolved = ResolvedCheckpoint(load_file(REFERENCE_TINY / "weights.safetensors"), "dpt_dinov3",
                                  tiny_reference_config(), "reference-tiny", "tiny")
    remover = BackgroundRemoval(resolved, image_size=cases["image_size"], device="cpu")
    for case in cases["cases"]:
        ref = np.load(REFERENCE_TINY / case["file"])
        result = remover.remove_background(SHARED.parent / case["image"])
        assert result.all_masks.shape == ref["all_masks"].shape
        # transforms.resize_uint8_linear reproduces OpenCV's fixed-point resize bit for bit,
        # so what is left is float32 summation order (observed: ~1e-7 mean, ~3e-6 max).
        np.testing.assert_allclose(result.all_masks, ref["all_masks"], atol=1e-4, rtol=0)
        assert np.abs(result.all_masks - ref["all_masks"]).mean() < 1e-5
        np.testing.assert_allclose(result.all_ious, ref["all_ious"], atol=1e-5, rtol=0)
        assert np.array_equal(np.argsort(result.all_ious), np.argsort(ref["all_ious"]))
        np.testing.assert_allclose(result.predicted_mask, ref["predicted_mask"], atol=1e-4)
        rgba = np.asarray(result.rgba_image).astype(int)
        assert np.array_equal(rgba[..., :3], ref["rgba"][..., :3])
        # alpha truncates mask*255: a 1e-6 difference can flip a level at an exact boundary
        assert np.abs(rgba[..., 3] - ref["rgba"][..., 3]).max() <= 1


@needs_shared
def test_odd_padding_sizes_work_where_published_code_crashed():
    from s3od.modeling import DPTSegmentation

    model = DPTSegmentation(**tiny_reference_config()).eval()
    remover = BackgroundRemoval.from_model(model, image_size=256, device="cpu")
    frame = SHARED / "data" / "davis2016" / "images" / "blackswan_00000.jpg"
    result = remover.remove_background(frame)
    assert result.predicted_mask.shape == (480, 854)
