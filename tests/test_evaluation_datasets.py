"""Benchmark folders: layouts, pairing by stem, masks of every format and bit depth."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from s3od.evaluation.datasets import (
    find_sets,
    pair_by_stem,
    read_mask,
    resolve_gt,
)
from s3od.evaluation.errors import DatasetNotFoundError, MaskReadError, UnknownSetError

from .conftest import SHARED_DATA, needs_shared

PATTERN = np.zeros((12, 16), bool)
PATTERN[3:9, 4:12] = True


def _touch_pair(image_dir, mask_dir, stem):
    image_dir.mkdir(parents=True, exist_ok=True)
    mask_dir.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 12)).save(image_dir / f"{stem}.jpg")
    Image.fromarray(PATTERN.astype(np.uint8) * 255).save(mask_dir / f"{stem}.png")


def test_every_documented_layout_is_found(tmp_path):
    root = tmp_path / "bench"
    _touch_pair(root / "ECSSD" / "Image", root / "ECSSD" / "Mask", "0001")
    _touch_pair(root / "DUTS-TE" / "DUTS-TE-Image", root / "DUTS-TE" / "DUTS-TE-Mask", "a")
    _touch_pair(root / "DIS5K" / "DIS-TE1" / "im", root / "DIS5K" / "DIS-TE1" / "gt", "x")
    _touch_pair(root / "mine" / "images", root / "mine" / "masks", "m")
    (root / "notes").mkdir()  # an unrelated folder is ignored

    sets = find_sets(root)
    assert [s.name for s in sets] == ["DIS-TE1", "DUTS-TE", "ECSSD", "mine"]
    by_name = {s.name: s for s in sets}
    assert by_name["DUTS-TE"].image_dir.name == "DUTS-TE-Image"
    assert by_name["DUTS-TE"].mask_dir.name == "DUTS-TE-Mask"
    assert by_name["DIS-TE1"].layout == "im/gt" and by_name["DIS-TE1"].is_dis
    assert by_name["ECSSD"].layout == "Image/Mask" and not by_name["ECSSD"].is_dis
    for s in sets:
        assert len(pair_by_stem(s.image_dir, s.mask_dir).pairs) == 1

    # --sets: case-insensitive, in the order asked; a typo lists what exists.
    assert [s.name for s in find_sets(root, ["ecssd", "dis-te1"])] == ["ECSSD", "DIS-TE1"]
    with pytest.raises(UnknownSetError, match="available: DIS-TE1, DUTS-TE, ECSSD, mine"):
        find_sets(root, ["ECSSD", "HKU-IS"])
    # A single set given directly.
    assert [s.name for s in find_sets(root / "ECSSD")] == ["ECSSD"]


def test_missing_and_unrecognised_folders_raise_clear_errors(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="no such folder"):
        find_sets(tmp_path / "absent")
    (tmp_path / "random" / "stuff").mkdir(parents=True)
    with pytest.raises(DatasetNotFoundError, match="no dataset found"):
        find_sets(tmp_path / "random")


def test_pairing_by_stem_reports_leftovers_and_duplicates(tmp_path):
    images, masks = tmp_path / "images", tmp_path / "masks"
    for stem in ("a", "b", "c"):
        _touch_pair(images, masks, stem)
    (masks / "c.png").unlink()
    Image.fromarray(PATTERN.astype(np.uint8)).save(masks / "d.png")
    Image.fromarray(PATTERN.astype(np.uint8)).save(masks / "a.bmp")  # same stem as a.png
    (masks / "readme.txt").write_text("not an image")
    (masks / ".hidden.png").write_bytes(b"")

    pairing = pair_by_stem(images, masks)
    assert [(s, i.name, m.name) for s, i, m in pairing.pairs] == [
        ("a", "a.jpg", "a.png"), ("b", "b.jpg", "b.png")]
    assert [p.name for p in pairing.left_only] == ["c.jpg"]
    assert [p.name for p in pairing.right_only] == ["d.png"]
    assert [p.name for p in pairing.duplicates] == ["a.bmp"]


def test_resolve_gt_accepts_a_bare_mask_folder(tmp_path):
    _touch_pair(tmp_path / "ECSSD" / "Image", tmp_path / "ECSSD" / "Mask", "0001")
    (sole,) = resolve_gt(tmp_path / "ECSSD" / "Mask")
    assert sole.name == "ECSSD" and sole.mask_dir == tmp_path / "ECSSD" / "Mask"
    assert sole.image_dir is None


def _save(arr_or_img, path, **kw):
    img = arr_or_img if isinstance(arr_or_img, Image.Image) else Image.fromarray(arr_or_img)
    img.save(path, **kw)
    return path


def test_masks_of_every_format_and_bit_depth(tmp_path):
    u8 = PATTERN.astype(np.uint8) * 255
    rgb = np.repeat(u8[..., None], 3, axis=2)
    rgba_cutout = np.dstack([np.full_like(rgb, 77), u8])  # a rembg-style cut-out: alpha = mask
    palette = Image.fromarray(u8).convert("P")
    lossless = {
        "1bit.png": Image.fromarray(u8).convert("1"),
        "gray.png": u8,
        "label01.png": PATTERN.astype(np.uint8),  # 0/1 label mask
        "16bit.png": Image.fromarray(PATTERN.astype(np.uint16) * 65535),
        "16bit.tif": Image.fromarray(PATTERN.astype(np.uint16) * 65535),
        "float.tif": Image.fromarray(PATTERN.astype(np.float32)),
        "rgb.png": rgb,
        "rgba_cutout.png": rgba_cutout,
        "rgba_opaque.png": np.dstack([rgb, np.full_like(u8, 255)]),
        "la.png": Image.fromarray(u8).convert("LA"),
        "palette.png": palette,
        "gray.bmp": u8,
        "gray.tiff": u8,
    }
    for name, data in lossless.items():
        path = _save(data, tmp_path / name)
        got = read_mask(path)
        assert got.dtype == np.uint8 and got.shape == PATTERN.shape, name
        assert np.array_equal(got, u8), name

    webp = read_mask(_save(rgb, tmp_path / "m.webp", lossless=True))
    assert np.array_equal(webp, u8)
    jpeg = read_mask(_save(u8, tmp_path / "m.jpg", quality=95))  # lossy: compare binarised
    assert np.array_equal(jpeg > 128, PATTERN)


def test_unreadable_masks_raise_mask_read_error(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (tmp_path / "empty.png").write_bytes(b"")
    for name in ("broken.png", "empty.png", "absent.png"):
        with pytest.raises(MaskReadError, match=name):
            read_mask(tmp_path / name)


@needs_shared
def test_shared_data_root_is_read_set_by_set():
    sets = find_sets(SHARED_DATA)
    assert [s.name for s in sets] == ["davis2016", "s3od-fixture", "sod-bsds300"]
    counts = {}
    for s in sets:
        pairing = pair_by_stem(s.image_dir, s.mask_dir)
        assert not pairing.left_only and not pairing.right_only and not pairing.duplicates
        counts[s.name] = len(pairing.pairs)
    assert counts == {"davis2016": 39, "s3od-fixture": 1, "sod-bsds300": 200}  # SOURCES.md
    soft = read_mask(SHARED_DATA / "s3od-fixture" / "masks" / "image.png")
    assert soft.shape == (1024, 1024) and len(np.unique(soft)) == 199  # soft alpha kept
