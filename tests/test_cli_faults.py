"""`s3od remove` under faults and careless use (issue 14): interrupted and killed runs, stale
temp files, outputs that would overwrite inputs or each other, symlink loops, hostile files."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from s3od.cli import app
from s3od.cli._shared import IMAGE_SUFFIXES
from s3od.imageio import save_image_atomic, stale_temp_files

from .hostile_corpus import INVALID, OK, TOO_LARGE, TYPED, UNSUPPORTED, corpus, encode, photo

ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


def flat(text: str) -> str:
    return " ".join(text.split())


def remove(checkpoint: Path, *args: str, fg_estimate: bool = False) -> tuple[int, str]:
    """``s3od remove`` in this process; exit code and everything it printed, unwrapped.
    Foreground estimation is off unless asked for: it costs seconds and tests nothing here."""
    flags = [] if fg_estimate else ["--no-fg-estimate"]
    result = CliRunner().invoke(app, ["remove", *args, "--model", str(checkpoint),
                                      "--image-size", "128", "--precision", "fp32", *flags])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, flat(result.output)


def write_photos(folder: Path, names: list[str], size: tuple[int, int] = (64, 48)) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        fmt = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}[name.rsplit(".", 1)[1]]
        (folder / name).write_bytes(encode(photo(*size, seed=i), fmt))


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.is_symlink()}


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


# --------------------------------------------------------------------------- careless use


def test_output_into_the_input_folder_is_refused_before_anything_runs(tmp_path,
                                                                      tiny_lite_checkpoint):
    photos = tmp_path / "photos"
    write_photos(photos, ["a.jpg", "b.png"])
    (tmp_path / "alias").symlink_to(photos)
    before = snapshot(photos)
    for out in (photos, photos / ".", tmp_path / "alias"):
        code, text = remove(tiny_lite_checkpoint, str(photos), "-o", str(out))
        assert code == 2 and "is the input folder" in text, text
    code, text = remove(tiny_lite_checkpoint, str(photos), "-o", str(photos), "--ray", "local")
    assert code == 2 and "is the input folder" in text, text
    assert snapshot(photos) == before


def test_an_output_that_would_overwrite_an_input_is_refused(tmp_path, tiny_lite_checkpoint):
    write_photos(tmp_path, ["x.png", "a.jpg", "a_nobg.png"])
    before = snapshot(tmp_path)
    code, text = remove(tiny_lite_checkpoint, str(tmp_path / "x.png"), "-o",
                        str(tmp_path / "x.png"))
    assert code == 2 and "would overwrite the input" in text, text
    # default names: a.jpg -> a_nobg.png, which is itself an input here
    code, text = remove(tiny_lite_checkpoint, str(tmp_path / "a.jpg"), str(tmp_path / "a_nobg.png"))
    assert code == 2 and "would overwrite the input" in text, text
    assert snapshot(tmp_path) == before


def test_inputs_sharing_an_output_name_get_distinct_reported_names(tmp_path,
                                                                   tiny_lite_checkpoint):
    photos, out = tmp_path / "photos", tmp_path / "out"
    write_photos(photos, ["a.jpg", "a.png", "b.jpg"])
    code, text = remove(tiny_lite_checkpoint, str(photos), "-o", str(out))
    assert code == 0, text
    assert "a.jpg -> a_jpg.png" in text and "a.png -> a_png.png" in text and "done 3" in text
    assert sorted(p.name for p in out.iterdir()) == ["a_jpg.png", "a_png.png", "b.png"]
    code, text = remove(tiny_lite_checkpoint, str(photos), "-o", str(out), "--skip-existing")
    assert code == 0 and "done 0" in text and "skipped 3" in text, text


def test_an_output_folder_inside_the_input_folder_is_not_read_back(tmp_path,
                                                                   tiny_lite_checkpoint):
    photos = tmp_path / "photos"
    write_photos(photos, ["a.jpg", "b.jpg"])
    for _ in range(2):
        code, text = remove(tiny_lite_checkpoint, str(photos), "-o", str(photos / "nobg"))
        assert code == 0 and "done 2" in text and "of 2" in text, text
    assert sorted(p.name for p in (photos / "nobg").iterdir()) == ["a.png", "b.png"]


def test_symlink_loops_and_broken_links_are_reported_not_dropped(tmp_path,
                                                                 tiny_lite_checkpoint):
    photos = tmp_path / "photos"
    write_photos(photos, ["a.jpg"])
    (photos / "loop.jpg").symlink_to("loop.jpg")
    (photos / "gone.png").symlink_to("missing.png")
    (photos / "cycle").symlink_to(".")  # a folder loop: listed, not followed
    (photos / "ok.jpg").symlink_to("a.jpg")
    code, text = remove(tiny_lite_checkpoint, str(photos), "-o", str(tmp_path / "out"))
    assert code == 1, text
    assert "loop.jpg: symlink loop" in text and "gone.png: broken symlink" in text
    assert "not following 1 symlinked folder(s)" in text and "cycle" in text
    assert "done 2" in text and "failed 2 of 4" in text
    code, text = remove(tiny_lite_checkpoint, str(photos / "loop.jpg"))
    assert code == 2 and "symlink loop" in text


def test_all_masks_have_stable_names_and_carry_their_iou(tmp_path, tiny_lite_checkpoint):
    photos, out = tmp_path / "photos", tmp_path / "out"
    write_photos(photos, ["a.jpg"])
    listings = []
    for _ in range(2):
        code, text = remove(tiny_lite_checkpoint, str(photos), "-o", str(out), "--all-masks")
        assert code == 0, text
        listings.append(sorted(p.name for p in out.iterdir()))
    assert listings[0] == listings[1] == ["a.mask0.png", "a.mask1.png", "a.mask2.png", "a.png"]
    infos = [Image.open(out / f"a.mask{i}.png").text for i in range(3)]
    assert all(0.0 <= float(info["s3od:iou"]) <= 1.0 for info in infos)
    assert [info["s3od:best"] for info in infos].count("true") == 1


def test_stale_temp_files_of_a_killed_run_are_removed_and_reported(tmp_path,
                                                                   tiny_lite_checkpoint):
    photos, out = tmp_path / "photos", tmp_path / "out"
    write_photos(photos, ["a.jpg", "b.jpg"])
    out.mkdir()
    dead = _dead_pid()
    ours = [out / f".a.png.{dead}.abcd1234.part", out / f".b.mask1.png.{dead}.x_y_z_12.part"]
    for path in ours:
        path.write_bytes(b"half")
    (out / "notes.part").write_bytes(b"not ours")
    code, text = remove(tiny_lite_checkpoint, str(photos), "-o", str(out), "--all-masks")
    assert code == 0 and "removed 2 temp file(s)" in text, text
    assert not any(p.exists() for p in ours) and (out / "notes.part").exists()


def test_max_pixels_refuses_larger_photos_before_decoding(tmp_path, tiny_lite_checkpoint):
    write_photos(tmp_path, ["big.png"], size=(100, 80))
    code, text = remove(tiny_lite_checkpoint, str(tmp_path / "big.png"), "-o",
                        str(tmp_path / "o1"), "--max-pixels", "7999")
    assert code == 1 and "100x80" in text and "--max-pixels" in text, text
    code, text = remove(tiny_lite_checkpoint, str(tmp_path / "big.png"), "-o",
                        str(tmp_path / "o2"), "--max-pixels", "8000")
    assert code == 0 and (tmp_path / "o2" / "big.png").exists(), text


#: Decodable corpus cases that also go through the model in the CLI test (all of them do over
#: HTTP; a forward pass costs ~0.25 s per image on the shared test CPU).
CLI_GOOD_SAMPLE = ("valid-jpeg", "valid-webp", "shape-1x1-png", "shape-1x4000-png",
                   "shape-4000x1-jpeg", "animated-gif", "cmyk-jpeg", "grey-16bit-png",
                   "palette-transparency-png", "exif-rotate-90-jpeg", "exif-garbage-jpeg", "mpo")


def test_hostile_corpus_folder_is_processed_with_every_bad_file_reported(tmp_path,
                                                                         tiny_lite_checkpoint):
    """Every refused corpus file (non-image bytes under image names too) plus a sample of the
    decodable ones in one folder: every good one written, every bad one a reported failure,
    no traceback, no temp file, exit 1."""
    photos, out = tmp_path / "photos", tmp_path / "out"
    photos.mkdir()
    cases = {}
    for case in corpus():
        if case.expect in (OK, TYPED) and case.name not in CLI_GOOD_SAMPLE:
            continue
        suffix = f".{case.suffix}" if f".{case.suffix}" in IMAGE_SUFFIXES else ".jpg"
        (photos / f"{case.name}{suffix}").write_bytes(case.data)
        cases[case.name] = case
    assert len(cases) > 80 and set(CLI_GOOD_SAMPLE) <= set(cases)
    code, text = remove(tiny_lite_checkpoint, str(photos), "-o", str(out), "--batch-size", "8")
    assert code == 1 and "Traceback" not in text
    compact = text.replace(" ", "")  # rich folds long paths across lines
    written = {p.stem for p in out.iterdir()}
    assert not list(out.glob(".*.part"))
    for name, case in cases.items():
        if case.expect == OK:
            assert name in written, name
        elif case.expect in (INVALID, UNSUPPORTED, TOO_LARGE):
            assert name not in written and f"/{name}." in compact, name
    assert f"failed {len(cases) - len(written)} of {len(cases)}" in text


# --------------------------------------------------------------------------- killed runs

FAULT_PHOTOS = 30


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "s3od.cli", "remove", *args]


def _outputs(out: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")} if out.is_dir() else {}


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_a_killed_folder_run_resumes_with_every_photo_done_exactly_once(tmp_path, sig,
                                                                        tiny_lite_checkpoint):
    """Kill a run once 3 of 30 photos are written; rerun with --skip-existing: the finished ones
    are skipped untouched, the rest done, no temp file and no half-written output anywhere."""
    photos, out = tmp_path / "photos", tmp_path / "out"
    write_photos(photos, [f"p{i:02d}.jpg" for i in range(FAULT_PHOTOS)], size=(1024, 768))
    common = ["-o", str(out), "--model", str(tiny_lite_checkpoint), "--image-size", "128",
              "--precision", "fp32", "--no-fg-estimate", "--batch-size", "1",
              "--png-compression", "9"]  # slow writes: the kill lands mid-run, often mid-write
    proc = subprocess.Popen(_cli(str(photos), *common), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=ENV)
    deadline = time.monotonic() + 240
    while len(_outputs(out)) < 3:
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "no output appeared"
        time.sleep(0.01)
    proc.send_signal(sig)
    err = proc.communicate(timeout=120)[1].decode()
    first = _outputs(out)
    assert 3 <= len(first) < FAULT_PHOTOS, "the run was not stopped mid-way"
    if sig == signal.SIGTERM:
        assert proc.returncode == 128 + signal.SIGTERM, err
        assert "interrupted (SIGTERM)" in err and "Traceback" not in err
        done = int(re.search(r"done (\d+),", flat(err)).group(1))
        # a signal landing between a rename and the count makes the report one short at most
        assert len(first) - 1 <= done <= len(first), (done, len(first))
        assert not list(out.glob(".*.part"))  # the file being written was removed
    else:
        assert proc.returncode == -signal.SIGKILL
        # whatever a SIGKILL left mid-write, plus one more leftover of a dead writer
        (out / f".p29.png.{_dead_pid()}.abcd1234.part").write_bytes(b"half")
    leftovers = len(list(out.glob(".*.part")))
    for name in first:  # what exists under a final name is complete
        with Image.open(out / name) as img:
            img.load()
            assert img.size == (1024, 768) and img.mode == "RGBA"

    rerun = subprocess.run(_cli(str(photos), *common, "--skip-existing"),
                           capture_output=True, env=ENV, timeout=300)
    text = flat(rerun.stderr.decode())
    assert rerun.returncode == 0, text
    assert f"done {FAULT_PHOTOS - len(first)}, skipped {len(first)}, failed 0" in text
    if leftovers:
        assert f"removed {leftovers} temp file(s)" in text
    second = _outputs(out)
    assert len(second) == FAULT_PHOTOS and not list(out.glob(".*.part"))
    assert all(second[name] == mtime for name, mtime in first.items())  # not redone
