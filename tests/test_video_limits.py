"""Videos under the photos' limits (issue 22, items 2 and 8): a huge frame is refused from
the stream header by ``--max-pixels``; ``--skip-existing`` redoes incomplete video outputs."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from s3od.errors import ImageTooLargeError, InvalidVideoError, VideoTooLargeError
from tests.hostile_corpus import video_bytes
from tests.luma_model import luma_remover

av = pytest.importorskip("av", reason="the edges extra (PyAV) is not installed")

HUGE = 8192


def write_video(path: Path, width: int, height: int, frames: int = 1) -> Path:
    """A flat grey MJPEG clip (an 8192x8192 frame encodes in about a second into ~1 MB)."""
    path.write_bytes(video_bytes(width, height, frames=frames))
    return path


@pytest.fixture(scope="module")
def huge_video(tmp_path_factory) -> Path:
    """One 8192x8192 frame in a small file (the issue's 15 GB video)."""
    return write_video(tmp_path_factory.mktemp("huge") / "huge.mkv", HUGE, HUGE)


def test_huge_frame_refused_from_the_header(huge_video, tmp_path, monkeypatch):
    import s3od.video.pipeline as pipeline

    decoded: list[Path] = []
    monkeypatch.setattr(pipeline, "iter_frames", lambda p: decoded.append(p) or iter(()))
    assert huge_video.stat().st_size < 2_000_000
    target = tmp_path / "out.webm"
    with pytest.raises(VideoTooLargeError, match=r"8192x8192 = 67.1 MP, over the limit") as err:
        pipeline.remove_video_background(luma_remover(), huge_video, target,
                                         max_pixels=4096 * 4096)
    # the photos' error type and the videos' at once: callers catching either see it
    assert isinstance(err.value, ImageTooLargeError) and isinstance(err.value, InvalidVideoError)
    assert decoded == [] and not target.exists()
    assert not list(tmp_path.glob("*.part"))


def test_cli_max_pixels_applies_to_videos(huge_video, tmp_path, tiny_lite_checkpoint):
    from s3od.cli import app

    out = tmp_path / "huge_nobg.webm"
    result = CliRunner().invoke(app, ["remove", str(huge_video), "-o", str(out), "-m",
                                      str(tiny_lite_checkpoint), "--image-size", "64",
                                      "--max-pixels", "10000000", "--no-audio",
                                      "--precision", "fp32"])
    text = " ".join(result.output.split())
    assert result.exit_code == 1, text
    assert "over the limit of 10.0 MP" in text and "--max-pixels" in text, text
    assert "failed 1" in text and "Traceback" not in text
    assert not out.exists()


def test_frames_within_the_limit_still_run(tmp_path):
    from s3od.video import remove_video_background

    clip = write_video(tmp_path / "small.mkv", 64, 48, frames=3)
    report = remove_video_background(luma_remover(), clip, tmp_path / "o.webm",
                                     max_pixels=64 * 48, audio=False)
    assert report.frames == 3 and (report.width, report.height) == (64, 48)


def test_skip_existing_redoes_incomplete_video_outputs(tmp_path):
    from s3od.cli._shared import Job, Rendering
    from s3od.cli._video import run_videos
    from s3od.video.io import video_output_problem

    clip = write_video(tmp_path / "clip.mkv", 64, 48, frames=2)
    out = tmp_path / "clip_mask.mp4"
    remover = luma_remover()

    def rerun():
        return run_videos([Job(clip, out)], remover, Rendering(mask_only=True), batch_size=4,
                          refine="none", fg_estimate=False, temporal_smoothing=0.0,
                          audio=False, skip_existing=True)

    out.write_bytes(b"")
    assert video_output_problem(out) == "is empty (0 bytes)"
    summary = rerun()
    assert (summary.done, summary.skipped) == (1, 0)
    assert video_output_problem(out) is None
    complete = out.read_bytes()
    out.write_bytes(complete[: len(complete) // 3])           # truncated
    assert video_output_problem(out) is not None
    assert (rerun().done, video_output_problem(out)) == (1, None)
    complete = out.read_bytes()
    summary = rerun()
    assert (summary.done, summary.skipped) == (0, 1) and out.read_bytes() == complete
    out.unlink()
    out.mkdir()
    summary = rerun()
    assert summary.done == 0 and summary.skipped == 0
    assert "is a directory" in summary.failed[0][1]


def test_large_vp9_frames_skip_the_lookahead(tmp_path):
    """Above 4K UHD the VP9 writer drops libvpx's 25-frame lookahead (measured at 4096x4096
    with alpha: peak 4.1 GB -> 2.85 GB for `s3od remove`); smaller frames keep it."""
    from s3od.video.io import VideoWriter

    for (width, height), lag in (((4096, 4096), "0"), ((640, 480), None)):
        with pytest.raises(RuntimeError), VideoWriter(tmp_path / "x.webm", 4, width, height,
                                                      alpha=True) as writer:
            assert writer._stream.options.get("lag-in-frames") == lag
            raise RuntimeError("discard: nothing encoded")
    assert not list(tmp_path.iterdir())
