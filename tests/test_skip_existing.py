"""``--skip-existing`` counts only complete outputs as done (issue 22, item 8); outputs are
synced to disk before their final name appears."""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image

from .test_cli_faults import remove, write_photos


def _decodes(path: Path) -> bool:
    try:
        with Image.open(path) as img:
            img.load()
    except Exception:
        return False
    return True


def test_empty_truncated_garbage_and_directory_outputs_are_not_done(tmp_path,
                                                                     tiny_lite_checkpoint):
    photos, out = tmp_path / "photos", tmp_path / "out"
    write_photos(photos, ["a.jpg", "b.jpg", "c.jpg", "d.jpg", "e.jpg"])
    code, text = remove(tiny_lite_checkpoint, str(photos), "-o", str(out))
    assert code == 0 and "done 5" in text, text
    good = (out / "d.png").read_bytes()
    whole = (out / "a.png").read_bytes()
    (out / "a.png").write_bytes(whole[: len(whole) // 2])        # truncated
    (out / "b.png").write_bytes(b"")                              # 0 bytes
    (out / "c.png").unlink()
    (out / "c.png").mkdir()                                       # a directory in its place
    (out / "e.png").write_bytes(b"not an image at all")           # garbage
    assert not _decodes(out / "a.png")

    code, text = remove(tiny_lite_checkpoint, str(photos), "-o", str(out), "--skip-existing")
    assert code == 1, text  # the directory cannot be replaced: reported as a failure
    assert "done 3" in text and "skipped 1" in text and "failed 1" in text, text
    assert "redoing 3 existing output(s)" in text, text
    assert "a.png is not a complete image" in text and "b.png is empty (0 bytes)" in text, text
    assert "is a directory; not overwritten" in text, text
    assert all(_decodes(out / f"{n}.png") for n in "abe")
    assert (out / "d.png").read_bytes() == good                   # the complete one untouched
    assert (out / "c.png").is_dir()


def test_output_problem_names_each_case(tmp_path):
    from s3od.imageio import output_problem, save_image_atomic

    ok = save_image_atomic(Image.new("RGBA", (40, 30), (1, 2, 3, 4)), tmp_path / "ok.webp")
    assert output_problem(ok) is None
    (tmp_path / "dir.png").mkdir()
    assert output_problem(tmp_path / "dir.png") == "is a directory"
    (tmp_path / "zero.png").write_bytes(b"")
    assert output_problem(tmp_path / "zero.png") == "is empty (0 bytes)"
    data = ok.read_bytes()
    (tmp_path / "cut.webp").write_bytes(data[: len(data) - 20])
    assert (output_problem(tmp_path / "cut.webp") or "").startswith("is not a complete image")


def test_outputs_are_fsynced_before_the_rename(tmp_path, monkeypatch):
    from s3od import imageio

    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append("fsync")
        return real_fsync(fd)

    def replace(src, dst):
        events.append("replace")
        return real_replace(src, dst)

    monkeypatch.setattr(imageio.os, "fsync", fsync)
    monkeypatch.setattr(imageio.os, "replace", replace)
    imageio.save_image_atomic(Image.new("L", (8, 8)), tmp_path / "x.png")
    assert events[:2] == ["fsync", "replace"], events
