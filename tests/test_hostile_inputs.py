"""Hostile and careless inputs through ``load_image``: a decoded image or a typed refusal, nothing
else (issue 14). The corpus and the fuzzer live in ``tests/hostile_corpus.py``."""

from __future__ import annotations

import collections
import io
import subprocess
import sys
import threading

import numpy as np
import pytest
from PIL import Image

from s3od.errors import ImageTooLargeError, InvalidImageError, UnsupportedFormatError
from s3od.imageio import ACCEPTED_FORMATS, DEFAULT_MAX_PIXELS, load_image, read_header

from .hostile_corpus import (
    GIANT,
    INVALID,
    OK,
    TOO_LARGE,
    TYPED,
    UNSUPPORTED,
    corpus,
    encode,
    fuzz_cases,
    photo,
)

EXPECTED_ERROR = {INVALID: InvalidImageError, UNSUPPORTED: UnsupportedFormatError,
                  TOO_LARGE: ImageTooLargeError}
CASES = {case.name: case for case in corpus()}
FUZZ_COUNT = 400


def outcome(source, **kwargs) -> np.ndarray | InvalidImageError:
    """The decoded array or the typed error; any other exception propagates and fails the test."""
    try:
        return load_image(source, **kwargs)
    except InvalidImageError as err:
        return err


@pytest.mark.parametrize("name", list(CASES))
def test_corpus_case_decodes_or_is_refused_with_a_typed_error(name):
    case = CASES[name]
    limit_before = Image.MAX_IMAGE_PIXELS
    got = outcome(case.data)
    assert limit_before == Image.MAX_IMAGE_PIXELS
    if case.expect == OK:
        assert isinstance(got, np.ndarray), got
        assert got.dtype == np.uint8 and got.shape == (*case.shape, 3)
    elif case.expect == TYPED:
        assert isinstance(got, (np.ndarray, InvalidImageError))
    else:
        assert isinstance(got, EXPECTED_ERROR[case.expect]), got
        assert str(got)
    if case.expect == TOO_LARGE:
        assert "--max-pixels" in str(got) and "MP" in str(got)


def test_corpus_covers_the_issue_list():
    names = set(CASES)
    refused = {n.removeprefix("format-").upper() for n in names if n.startswith("format-")}
    assert {"EPS", "ICO", "PPM", "TGA", "PSD", "PCX", "SGI", "QOI", "XPM", "DDS", "FITS"} <= refused
    assert not refused & set(ACCEPTED_FORMATS)
    for prefix in ("truncated-", "exif-garbage-", "icc-garbage-", "xmp-garbage-", "giant-header-",
                   "bomb-", "shape-1x4000-", "shape-4000x1-", "animated-", "cmyk-", "grey-16bit-",
                   "rgb-16bit-", "palette-", "empty", "text"):
        assert any(n.startswith(prefix) for n in names), prefix
    for fmt in ("jpeg", "png", "webp"):  # malformed EXIF, ICC and XMP in each of these
        assert {f"exif-garbage-{fmt}", f"icc-garbage-{fmt}", f"xmp-garbage-{fmt}"} <= names
    bombs = [CASES["bomb-png"], CASES["bomb-tiff"]]
    assert all(len(b.data) < 200_000 for b in bombs)  # 900 MP in ~110 kB
    assert read_header(CASES["bomb-png"].data).pixels == GIANT * GIANT


def test_malformed_exif_is_an_invalid_image_not_a_syntax_error():
    """The reported crash: Pillow raises SyntaxError reading a PNG/WebP's broken EXIF block."""
    for fmt in ("png", "webp"):
        got = outcome(CASES[f"exif-garbage-{fmt}"].data)
        assert isinstance(got, InvalidImageError) and "EXIF" in str(got)


@pytest.mark.parametrize("name", ["valid-png", "exif-garbage-png", "bomb-png", "format-psd",
                                  "truncated-50-jpeg", "exif-rotate-90-jpeg"])
def test_paths_and_file_objects_behave_like_bytes(tmp_path, name):
    case = CASES[name]
    path = tmp_path / f"x.{case.suffix}"
    path.write_bytes(case.data)
    expected = outcome(case.data)
    for source in (path, str(path), io.BytesIO(case.data)):
        got = outcome(source)
        assert type(got) is type(expected)
        if isinstance(got, np.ndarray):
            np.testing.assert_array_equal(got, expected)


def test_pixel_limit_is_checked_before_decoding_and_can_be_raised():
    img = encode(photo(100, 80), "PNG")
    assert isinstance(outcome(img, max_pixels=7_999), ImageTooLargeError)
    assert outcome(img, max_pixels=8_000).shape == (80, 100, 3)
    assert DEFAULT_MAX_PIXELS >= 150_000_000  # every camera photo up to 150 MP


def test_a_larger_limit_than_pillows_works_without_raising_pillows_for_good(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000)  # Pillow refuses over 2000 pixels
    img = encode(photo(100, 80), "PNG")
    with pytest.raises(Image.DecompressionBombError):
        Image.open(io.BytesIO(img))
    results: list[object] = []

    def work() -> None:
        results.append(outcome(img, max_pixels=10_000))

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(isinstance(r, np.ndarray) and r.shape == (80, 100, 3) for r in results)
    assert Image.MAX_IMAGE_PIXELS == 1_000
    refused = outcome(img, max_pixels=5_000)  # still our limit, and the size is named
    assert isinstance(refused, ImageTooLargeError) and "100x80" in str(refused)
    assert Image.MAX_IMAGE_PIXELS == 1_000


def test_importing_s3od_leaves_pillows_limit_alone():
    code = ("from PIL import Image; before = Image.MAX_IMAGE_PIXELS; import s3od.imageio, "
            "s3od.serving.limits; assert Image.MAX_IMAGE_PIXELS == before, Image.MAX_IMAGE_PIXELS")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_seeded_fuzz_gives_images_or_typed_errors_only():
    """400 mutated images of every accepted format: decoded or InvalidImageError, nothing else."""
    kinds: collections.Counter[str] = collections.Counter()
    for name, data in fuzz_cases(FUZZ_COUNT):
        got = outcome(data, max_pixels=4_000_000)
        if isinstance(got, np.ndarray):
            assert got.dtype == np.uint8 and got.ndim == 3 and got.shape[2] == 3, name
            kinds["decoded"] += 1
        else:
            kinds[type(got).__name__] += 1
    # the fuzzer must exercise both sides, or it tests nothing
    assert kinds["decoded"] > FUZZ_COUNT // 10 and kinds["InvalidImageError"] > FUZZ_COUNT // 4
    assert sum(kinds.values()) == FUZZ_COUNT
    assert fuzz_cases(3) == fuzz_cases(3)  # seeded: the same cases every run


@pytest.mark.parametrize("shape", [(1, 1), (1, 40), (40, 1)])
def test_edge_refinement_survives_degenerate_shapes(shape):
    pytest.importorskip("pymatting", reason="the [edges] extra is not installed")
    from s3od.refine.foreground import defringe

    rgba = np.full((*shape, 4), 128, np.uint8)
    changed = defringe(rgba)  # pymatting alone divides by zero on a 1x1 image
    assert changed == (0 if shape == (1, 1) else rgba.shape[0] * rgba.shape[1])


# --------------------------------------------------------------------------- videos (issue 22)


def _run_video(path, out):
    """One video through the pipeline: ``None`` when frames were written, else the error."""
    from s3od.video import remove_video_background
    from tests.luma_model import luma_remover

    from .hostile_corpus import VIDEO_MAX_PIXELS

    try:
        remove_video_background(luma_remover(), path, out, mask_only=True, audio=False,
                                max_pixels=VIDEO_MAX_PIXELS)
    except Exception as err:  # classified by the caller: only typed errors may come out
        return err
    return None


def test_video_corpus_is_processed_or_refused_with_a_typed_error(tmp_path):
    pytest.importorskip("av", reason="the edges extra (PyAV) is not installed")
    from s3od.errors import InvalidVideoError, VideoTooLargeError

    from .hostile_corpus import INVALID, OK, TOO_LARGE, TYPED, video_corpus

    allowed = {INVALID: InvalidVideoError, TOO_LARGE: VideoTooLargeError}
    wrong = []
    for case in video_corpus(tmp_path / "in"):
        out = tmp_path / "out" / f"{case.path.stem}.mp4"
        err = _run_video(case.path, out)
        written = err is None and out.is_file()
        if case.expect == OK:
            ok = written
        elif case.expect == TYPED:  # a damaged stream FFmpeg may partly decode
            ok = written or isinstance(err, InvalidVideoError)
        else:
            ok = isinstance(err, allowed[case.expect])
        if not ok:
            wrong.append((case.name, case.expect, repr(err)[:160]))
    assert wrong == []
    assert not list((tmp_path / "out").glob(".*.part"))


def test_seeded_video_fuzz_gives_outputs_or_typed_errors_only(tmp_path):
    pytest.importorskip("av", reason="the edges extra (PyAV) is not installed")
    from s3od.errors import InvalidVideoError

    from .hostile_corpus import video_fuzz

    outcomes: collections.Counter[str] = collections.Counter()
    for path in video_fuzz(tmp_path / "in", 40):
        err = _run_video(path, tmp_path / "out" / f"{path.stem}.mp4")
        assert err is None or isinstance(err, InvalidVideoError), (path.name, repr(err))
        outcomes["written" if err is None else "refused"] += 1
    assert outcomes["refused"] > 0 and outcomes["written"] > 0, outcomes
    assert not list((tmp_path / "out").glob(".*.part"))
