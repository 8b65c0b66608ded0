"""`s3od remove` / `s3od models` as a user runs them: real processes, real files."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from .conftest import SAMPLES

ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


def run_cli(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "s3od.cli", *args], input=stdin,
                          capture_output=True, env=ENV, timeout=300)


def test_folder_with_corrupt_and_empty_files(tmp_path, tiny_lite_checkpoint):
    src = tmp_path / "in"
    (src / "nested").mkdir(parents=True)
    shutil.copy(SAMPLES / "cat.jpg", src / "cat.jpg")
    shutil.copy(SAMPLES / "coffee.jpg", src / "nested" / "coffee.jpg")
    (src / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    (src / "empty.png").write_bytes(b"")
    out = tmp_path / "out"
    proc = run_cli("remove", str(src), "-o", str(out), "--model", str(tiny_lite_checkpoint),
                   "--image-size", "128", "--batch-size", "3")
    err = proc.stderr.decode()
    assert proc.returncode == 1, err
    assert "done 2" in err and "failed 2" in err
    assert "broken.jpg" in err and "empty.png" in err and "Traceback" not in err
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert written == ["cat.png", "nested/coffee.png"]
    cat = Image.open(out / "cat.png")
    assert cat.mode == "RGBA" and cat.size == Image.open(SAMPLES / "cat.jpg").size
    # no temporary files are left behind
    assert not list(out.rglob("*.part"))


def test_skip_existing_and_all_masks(tmp_path, tiny_lite_checkpoint):
    out = tmp_path / "out"
    args = ["remove", str(SAMPLES / "cat.jpg"), str(SAMPLES / "coffee.jpg"), "-o", str(out),
            "--model", str(tiny_lite_checkpoint), "--image-size", "128"]
    first = run_cli(*args, "--all-masks")
    assert first.returncode == 0, first.stderr.decode()
    masks = sorted(p.name for p in out.glob("cat.mask*.png"))
    assert masks == ["cat.mask0.png", "cat.mask1.png", "cat.mask2.png"]  # stable, not by IoU
    second = run_cli(*args, "--skip-existing")
    assert second.returncode == 0 and "skipped 2" in second.stderr.decode()


def test_stdin_to_stdout_mask_only(tiny_lite_checkpoint):
    data = (SAMPLES / "coffee.jpg").read_bytes()
    proc = run_cli("remove", "-", "--mask-only", "--model", str(tiny_lite_checkpoint),
                   "--image-size", "128", stdin=data)
    assert proc.returncode == 0, proc.stderr.decode()
    mask = Image.open(io.BytesIO(proc.stdout))
    assert mask.mode == "L" and mask.size == Image.open(SAMPLES / "coffee.jpg").size


def test_stdin_garbage_is_a_clean_error(tiny_lite_checkpoint):
    proc = run_cli("remove", "-", "--model", str(tiny_lite_checkpoint), "--image-size", "128",
                   stdin=b"garbage")
    assert proc.returncode != 0
    assert b"cannot decode" in proc.stderr and b"Traceback" not in proc.stderr
    assert proc.stdout == b""


def test_background_colour_and_crop(tmp_path, tiny_lite_checkpoint):
    out = tmp_path / "white.webp"
    proc = run_cli("remove", str(SAMPLES / "cat.jpg"), "-o", str(out), "--bg-color", "white",
                   "--format", "webp", "--model", str(tiny_lite_checkpoint), "--image-size", "128")
    assert proc.returncode == 0, proc.stderr.decode()
    img = Image.open(out)
    assert img.format == "WEBP" and img.mode == "RGB"


def test_png_compression_changes_bytes_not_pixels(tmp_path, tiny_lite_checkpoint):
    sizes, pixels = {}, {}
    for level in (0, 9):
        out = tmp_path / f"cat{level}.png"
        proc = run_cli("remove", str(SAMPLES / "cat.jpg"), "-o", str(out), "--png-compression",
                       str(level), "--no-fg-estimate", "--model", str(tiny_lite_checkpoint),
                       "--image-size", "128", "--precision", "fp32")
        assert proc.returncode == 0, proc.stderr.decode()
        sizes[level], pixels[level] = out.stat().st_size, np.asarray(Image.open(out))
    assert sizes[0] > 2 * sizes[9]  # level 0 stores raw deflate blocks
    assert np.array_equal(pixels[0], pixels[9])
    bad = run_cli("remove", str(SAMPLES / "cat.jpg"), "--png-compression", "12")
    assert bad.returncode != 0 and b"Traceback" not in bad.stderr


def test_bad_arguments_fail_cleanly(tmp_path, tiny_lite_checkpoint):
    cases = [
        ("remove", str(tmp_path / "missing.jpg")),
        ("remove", str(SAMPLES / "cat.jpg"), "--model", str(tmp_path / "nope.pt")),
        ("remove", str(SAMPLES / "cat.jpg"), "--bg-color", "not-a-colour",
         "--model", str(tiny_lite_checkpoint)),
        ("remove", str(SAMPLES / "cat.jpg"), "--format", "gif"),
        ("remove", str(SAMPLES / "cat.jpg"), "--model", str(tiny_lite_checkpoint),
         "--image-size", "100"),
    ]
    for args in cases:
        proc = run_cli(*args)
        err = proc.stderr.decode()
        assert proc.returncode != 0, args
        assert "error" in err.lower() and "Traceback" not in err, (args, err)
    assert not any(Path(tmp_path).glob("*.png"))


def test_models_lists_registry():
    proc = run_cli("models")
    assert proc.returncode == 0
    text = proc.stdout.decode()
    for name in ("s3od-lite", "s3od-synth", "s3od-dis", "s3od-sod"):
        assert name in text


def test_single_file_default_output_name(tmp_path, tiny_lite_checkpoint):
    shutil.copy(SAMPLES / "cat.jpg", tmp_path / "cat.jpg")
    proc = run_cli("remove", str(tmp_path / "cat.jpg"), "--model", str(tiny_lite_checkpoint),
                   "--image-size", "128")
    assert proc.returncode == 0, proc.stderr.decode()
    alpha = np.asarray(Image.open(tmp_path / "cat_nobg.png"))[..., 3]
    assert alpha.shape == (300, 451)
    umask = os.umask(0)
    os.umask(umask)
    # atomic writes go through mkstemp (0600); the final file gets the usual permissions
    assert (tmp_path / "cat_nobg.png").stat().st_mode & 0o777 == 0o666 & ~umask


def test_error_messages_keep_square_brackets(tmp_path):
    proc = run_cli("remove", str(tmp_path / "photo[1].jpg"))
    assert proc.returncode != 0
    assert "photo[1].jpg" in proc.stderr.decode()
