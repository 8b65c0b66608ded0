"""`s3od remove` under faults and careless use (issue 14): interrupted and killed runs, stale
temp files, outputs that would overwrite inputs or each other, symlink loops, hostile files."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from PIL import Image

from s3od.imageio import save_image_atomic, stale_temp_files


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temp_files_are_ours_and_from_dead_writers_only(tmp_path):
    dead = _dead_pid()
    names = {
        "dead": f".a.png.{dead}.abcd1234.part",
        "legacy": ".a.png.q_erty12.part",  # written before temp names carried the pid
        "alive": f".a.png.{os.getpid()}.zzzzzzzz.part",
        "other-target": f".b.png.{dead}.abcd1234.part",
        "not-mkstemp": f".a.png.{dead}.ABCD.part",
        "unrelated": "notes.part",
    }
    for name in names.values():
        (tmp_path / name).write_bytes(b"half a png")
    (tmp_path / f".a.png.{dead}.dir12345.part").mkdir()  # not a file: never touched
    stale = stale_temp_files([tmp_path / "a.png", tmp_path / "missing" / "c.png"])
    assert stale == sorted([tmp_path / names["dead"], tmp_path / names["legacy"]])


def test_atomic_save_interrupted_mid_write_leaves_nothing(tmp_path, monkeypatch):
    image = Image.new("RGB", (64, 64), (1, 2, 3))
    target = tmp_path / "out" / "a.png"

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(Image.Image, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_image_atomic(image, target)
    assert list(target.parent.iterdir()) == []
    monkeypatch.undo()
    save_image_atomic(image, target)
    assert [p.name for p in target.parent.iterdir()] == ["a.png"]
