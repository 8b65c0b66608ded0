"""Edge refinement: resampling helpers, guided filter, matting, foreground colours, predictor."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from s3od.errors import MissingDependencyError
from s3od.refine import (
    RefineConfig,
    cutout_array,
    defringe,
    downsample_area,
    make_trimap,
    matte_tiles,
    refine_alpha,
    upsample_bilinear,
)
from s3od.refine.guided import banded_coefficients, box_mean, guided_coefficients
from tests.conftest import SAMPLES
from tests.luma_model import luma_remover

pymatting = pytest.importorskip("pymatting", reason="the edges extra (pymatting) is not installed")


def _photo(name: str, size: tuple[int, int]) -> np.ndarray:
    return np.asarray(Image.open(SAMPLES / f"{name}.jpg").convert("RGB").resize(
        size, Image.Resampling.LANCZOS))


@pytest.fixture(scope="module")
def composite():
    """A real foreground (the cat) over a real background (the coffee) with a known alpha.

    The alpha has a soft rim and thin strands reaching past it, like hair: ``I = aF + (1-a)B``
    holds exactly (before rounding), so refined alphas and colours can be scored.
    """
    h = w = 192
    fg = _photo("cat", (w, h)).astype(np.float32)
    bg = _photo("coffee", (w, h)).astype(np.float32)
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    r = np.hypot(yy - h / 2, xx - w / 2)
    theta = np.arctan2(yy - h / 2, xx - w / 2)
    alpha = np.clip((60 - r) / 2, 0, 1)
    strands = (np.abs(np.sin(theta * 20)) > 0.85) & (r < 85)
    alpha = np.maximum(alpha, strands * 0.8 * np.clip((85 - r) / 25, 0, 1)).astype(np.float32)
    image = np.clip(alpha[..., None] * fg + (1 - alpha[..., None]) * bg + 0.5, 0, 255)
    return image.astype(np.uint8), alpha, fg


@pytest.mark.parametrize(("low", "out"), [((17, 23), (120, 200)), ((40, 30), (41, 95)),
                                          ((8, 8), (8, 8))])
def test_tiled_upsampling_matches_torch_bilinear(low, out):
    src = np.random.default_rng(0).random(low).astype(np.float32)
    expected = F.interpolate(torch.from_numpy(src)[None, None], size=out, mode="bilinear",
                             align_corners=False)[0, 0].numpy()
    got = upsample_bilinear(src, *out)
    assert got.dtype == np.float32 and got.shape == out
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_area_downsampling_is_a_block_mean():
    img = np.random.default_rng(1).integers(0, 256, (60, 90, 3), dtype=np.uint8)
    got = downsample_area(img, 20, 30)
    np.testing.assert_allclose(got, img.reshape(20, 3, 30, 3, 3).mean(axis=(1, 3)), atol=1e-4)
    odd = downsample_area(img[..., 0], 7, 11)      # non-integer factor, single channel
    assert odd.shape == (7, 11) and odd.min() >= 0 and odd.max() <= 255
    with pytest.raises(ValueError):
        downsample_area(img, 61, 10)


def test_box_mean_equals_a_brute_force_window_mean():
    x = np.random.default_rng(2).random((9, 13))
    r = 2
    expected = np.array([[x[max(0, i - r):i + r + 1, max(0, j - r):j + r + 1].mean()
                          for j in range(13)] for i in range(9)])
    np.testing.assert_allclose(box_mean(x, r), expected, atol=1e-12)


def test_banded_guided_coefficients_equal_the_whole_image_solve():
    rng = np.random.default_rng(4)
    guide = rng.random((300, 40, 3)).astype(np.float32)
    src = rng.random((300, 40)).astype(np.float32)
    whole = guided_coefficients(guide, src, 3, 1e-3)
    np.testing.assert_allclose(banded_coefficients(guide, src, 3, 1e-3, rows=32), whole,
                               atol=1e-6)


def test_guided_upsampling_recovers_edges_a_bilinear_upsample_blurs(composite):
    image, alpha, _ = composite
    low = downsample_area(alpha, 48, 48)               # the network sees 4x fewer pixels
    plain = refine_alpha(image, low, "none")
    guided = refine_alpha(image, low, "guided")
    assert guided.shape == alpha.shape and guided.dtype == np.float32
    assert guided.min() >= 0.0 and guided.max() <= 1.0
    err_plain, err_guided = np.abs(plain - alpha).mean(), np.abs(guided - alpha).mean()
    assert err_guided < 0.8 * err_plain
    # Far inside and far outside the object the mask is kept exactly.
    assert guided[96, 96] == 1.0 and guided[2, 2] == 0.0


def test_trimap_marks_a_band_around_the_boundary():
    mask = np.zeros((40, 60), np.float32)
    mask[10:30, 15:45] = 1.0
    trimap = make_trimap(mask, radius=3)
    assert set(np.unique(trimap)) == {0, 128, 255}
    assert trimap[20, 30] == 255 and trimap[0, 0] == 0
    row = trimap[20]
    assert np.all(row[12:18] == 128) and np.all(row[42:48] == 128)   # 3 px either side of 15/45
    assert row[11] == 0 and row[18] == 255


def test_matting_respects_its_time_budget_and_known_regions(composite):
    image, alpha, _ = composite
    low = downsample_area(alpha, 48, 48)
    coarse = upsample_bilinear(low, *alpha.shape)
    trimap = make_trimap(coarse, radius=4)
    start = np.full(alpha.shape, 0.5, np.float32)
    none_done = start.copy()
    report = matte_tiles(image, trimap, none_done, time_budget_s=0.0, tile=96)
    assert report.tiles > 0 and report.solved == 0 and not report.complete
    unknown = trimap == 128
    assert np.all(none_done[unknown] == 0.5)               # unsolved tiles keep the input
    assert np.all(none_done[trimap == 255] == 1) and np.all(none_done[trimap == 0] == 0)
    solved = start.copy()
    report = matte_tiles(image, trimap, solved, time_budget_s=None, tile=96)
    assert report.complete and report.unknown_pixels == int(unknown.sum())
    assert np.abs(solved - alpha)[unknown].mean() < np.abs(start - alpha)[unknown].mean()


def test_matting_mode_gives_a_valid_alpha(composite):
    image, alpha, _ = composite
    out = refine_alpha(image, downsample_area(alpha, 48, 48),
                       RefineConfig(mode="matting", time_budget_s=20))
    assert out.shape == alpha.shape and out.min() >= 0 and out.max() <= 1
    assert np.abs(out - alpha).mean() < 0.1


def test_foreground_estimation_removes_the_old_background_from_soft_pixels(composite):
    image, alpha, fg = composite
    rgba = cutout_array(image, alpha)
    before = rgba.copy()
    changed = defringe(rgba)
    a8 = before[..., 3]
    soft = (a8 > 0) & (a8 < 255)
    assert changed == int(soft.sum()) > 0
    # Opaque and fully transparent pixels and the alpha itself are untouched.
    np.testing.assert_array_equal(rgba[~soft], before[~soft])
    np.testing.assert_array_equal(rgba[..., 3], a8)
    # Where the object covers at least a fifth of the pixel, the estimate is much closer to the
    # true foreground colour than the mixed pixel was.
    judged = soft & (alpha > 0.2)
    err_before = np.abs(before[..., :3].astype(np.float32) - fg)[judged].mean()
    err_after = np.abs(rgba[..., :3].astype(np.float32) - fg)[judged].mean()
    assert err_after < 0.6 * err_before


def test_cutout_alpha_is_truncated_like_the_published_cutout():
    from s3od.compose import cutout

    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (30, 20, 3), dtype=np.uint8)
    mask = rng.random((30, 20)).astype(np.float32)
    np.testing.assert_array_equal(cutout_array(rgb, mask), np.asarray(cutout(rgb, mask)))


def test_missing_pymatting_is_a_typed_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "pymatting", None)     # makes `import pymatting` fail
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 3] = 128
    with pytest.raises(MissingDependencyError, match="s3od\\[edges\\]"):
        defringe(rgba)


def test_bad_refine_options_raise_value_errors():
    with pytest.raises(ValueError, match="refine must be one of"):
        RefineConfig(mode="sharpest")
    with pytest.raises(ValueError):
        RefineConfig(method="bayes")
    with pytest.raises(ValueError):
        RefineConfig(eps=0)


# ----------------------------------------------------------------------------- predictor


@pytest.fixture(scope="module")
def remover():
    return luma_remover(image_size=96)


def test_predictor_default_path_is_untouched(remover):
    rgb = _photo("cat", (150, 100))
    default = remover.remove_background(rgb)
    explicit = remover.remove_background(rgb, refine="none", fg_estimate=False,
                                              full_size_candidates=True)
    np.testing.assert_array_equal(default.predicted_mask, explicit.predicted_mask)
    np.testing.assert_array_equal(np.asarray(default.rgba_image), np.asarray(explicit.rgba_image))


def test_predictor_refine_options(remover):
    rgb = _photo("astronaut", (200, 160))
    base = remover.remove_background(rgb)
    lean = remover.remove_background(rgb, full_size_candidates=False)
    # Tiled upsampling agrees with the published resize to float rounding.
    np.testing.assert_allclose(lean.predicted_mask, base.predicted_mask, atol=1e-5)
    assert lean.all_masks.shape[0] == base.all_masks.shape[0]
    assert lean.all_masks.shape[1:] == (76, 96)              # kept at network resolution
    assert lean.best_index == base.best_index == 0
    assert base.predicted_mask.std() > 0.05                  # a mask with content, not a constant
    for mode in ("guided", "matting"):
        res = remover.remove_background(rgb, refine=mode, fg_estimate=True)
        assert res.predicted_mask.shape == (160, 200) and res.all_masks.shape[1:] == (160, 200)
        assert res.predicted_mask is not None and res.rgba_image.mode == "RGBA"
        np.testing.assert_array_equal(res.all_masks[res.best_index], res.predicted_mask)
        alpha = np.asarray(res.rgba_image)[..., 3]
        np.testing.assert_array_equal(alpha, (res.predicted_mask * 255).astype(np.uint8))
    batch = remover.remove_backgrounds([rgb, rgb[:80]], refine="guided")
    single = remover.remove_background(rgb[:80], refine="guided")
    np.testing.assert_allclose(batch[1].predicted_mask, single.predicted_mask, atol=1e-5)
    with pytest.raises(ValueError):
        remover.remove_background(rgb, refine="sharpest")


# ----------------------------------------------------------------------------------- CLI


def test_cli_refine_and_foreground_options(tiny_lite_checkpoint, tmp_path):
    from typer.testing import CliRunner

    from s3od.cli import app

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        runner = CliRunner()
        args = ["remove", str(SAMPLES / "cat.jpg"), "-m", str(tiny_lite_checkpoint),
                "--image-size", "64"]
        outputs = {}
        for name, extra in {"auto": [], "plain": ["--no-fg-estimate"],
                            "guided": ["--refine", "guided"]}.items():
            target = tmp_path / f"{name}.png"
            result = runner.invoke(app, [*args, "-o", str(target), *extra])
            assert result.exit_code == 0, result.output
            outputs[name] = np.asarray(Image.open(target))
        auto, plain = outputs["auto"], outputs["plain"]
        assert auto.shape == plain.shape == (300, 451, 4)
        np.testing.assert_array_equal(auto[..., 3], plain[..., 3])     # same alpha
        soft = (plain[..., 3] > 0) & (plain[..., 3] < 255)
        assert soft.any() and (auto[..., :3][soft] != plain[..., :3][soft]).any()
        original = np.asarray(Image.open(SAMPLES / "cat.jpg").convert("RGB"))
        np.testing.assert_array_equal(plain[..., :3], original)       # colours as decoded
        result = runner.invoke(app, [*args, "-o", str(tmp_path / "x.png"), "--refine", "sharp"])
        assert result.exit_code == 2 and "refine must be one of" in result.output
        assert "Traceback" not in result.output and not (tmp_path / "x.png").exists()
    finally:
        torch.set_num_threads(before)
