"""Video: clips made in the test from the sample photos (a camera pan, a cut), all formats."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from s3od.errors import InvalidVideoError
from tests.conftest import SAMPLES
from tests.luma_model import luma_remover

av = pytest.importorskip("av", reason="the edges extra (PyAV) is not installed")

from s3od.video import (  # noqa: E402  (after the skip: PyAV is optional)
    TemporalSmoother,
    VideoWriter,
    iter_frames,
    probe,
    remove_video_background,
)

FPS = 12
W, H = 96, 64


def _pan(name: str, frames: int, step: int = 3) -> list[np.ndarray]:
    """A camera pan: a window sliding across a real photo."""
    photo = np.asarray(Image.open(SAMPLES / f"{name}.jpg").convert("RGB").resize((200, 130)))
    return [np.ascontiguousarray(photo[20:20 + H, i * step:i * step + W]) for i in range(frames)]


def _write_clip(path: Path, frames: list[np.ndarray], audio_seconds: float | None) -> None:
    """H.264 clip at FPS, with an AAC sine tone when ``audio_seconds`` is given."""
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=FPS)
        video.width, video.height, video.pix_fmt = W, H, "yuv420p"
        audio = out.add_stream("aac", rate=16000) if audio_seconds else None
        for i, frame in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(frame, format="rgb24")
            vf.pts = i
            out.mux(video.encode(vf))
        out.mux(video.encode(None))
        if audio is not None:
            t = np.arange(int(16000 * audio_seconds)) / 16000
            pcm = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None]
            for start in range(0, pcm.shape[1], 1024):
                af = av.AudioFrame.from_ndarray(np.ascontiguousarray(pcm[:, start:start + 1024]),
                                                format="flt", layout="mono")
                af.sample_rate = 16000
                out.mux(audio.encode(af))
            out.mux(audio.encode(None))


@pytest.fixture(scope="module")
def remover():
    return luma_remover()


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("video") / "pan.mp4"
    _write_clip(path, _pan("coffee", 24), audio_seconds=2.0)
    return path


@pytest.fixture(scope="module")
def cut_clip(tmp_path_factory) -> Path:
    """A still shot of the coffee photo, then one of the astronaut (a cut at frame 12), with
    sensor-like noise in every frame, so per-frame masks flicker."""
    rng = np.random.default_rng(0)
    shots = [_pan("coffee", 1)[0]] * 12 + [_pan("astronaut", 1)[0]] * 12
    noisy = [np.clip(f + rng.normal(0, 8, f.shape), 0, 255).astype(np.uint8) for f in shots]
    path = tmp_path_factory.mktemp("video") / "cut.mp4"
    _write_clip(path, noisy, audio_seconds=None)
    return path


def _decode_rgba(path: Path) -> list[np.ndarray]:
    """Every frame with its alpha; VP9 alpha needs the libvpx decoder."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        if stream.codec_context.name == "vp9":
            decoder = av.CodecContext.create("libvpx-vp9", "r")
            frames = [f for p in container.demux(stream) for f in decoder.decode(p)]
        else:
            frames = list(container.decode(stream))
        return [f.to_ndarray(format="rgba") for f in frames]


def _streams(path: Path) -> tuple[str, str | None, float]:
    with av.open(str(path)) as container:
        audio = container.streams.audio[0].codec_context.name if container.streams.audio else None
        return container.streams.video[0].codec_context.name, audio, container.duration / 1e6


def test_probe_and_decode_the_test_clip(clip):
    info = probe(clip)
    assert (info.width, info.height, info.fps, info.frames) == (W, H, FPS, 24)
    assert info.audio_codec == "aac" and info.duration == pytest.approx(2.0, abs=0.1)
    frames = list(iter_frames(clip))
    assert len(frames) == 24 and frames[0].shape == (H, W, 3) and frames[0].dtype == np.uint8


@pytest.mark.parametrize(("suffix", "codec", "audio"), [(".webm", "vp9", "opus"),
                                                        (".mov", "prores", "aac")])
def test_transparent_outputs_keep_frames_duration_alpha_and_audio(remover, clip, tmp_path,
                                                                  suffix, codec, audio):
    target = tmp_path / f"out{suffix}"
    report = remove_video_background(remover, clip, target, batch_size=5)
    assert report.frames == 24 and target.is_file()
    assert [p.name for p in tmp_path.iterdir()] == [target.name]      # no temporary left over
    v_codec, a_codec, duration = _streams(target)
    assert (v_codec, a_codec) == (codec, audio)
    assert duration == pytest.approx(2.0, abs=0.1)
    frames = _decode_rgba(target)
    assert len(frames) == 24 and frames[0].shape == (H, W, 4)
    # The alpha plane is the predicted mask of that frame (up to lossy coding).
    src = list(iter_frames(clip))
    expected = remover.remove_background(src[5], full_size_candidates=False).predicted_mask
    decoded_alpha = frames[5][..., 3].astype(np.float32) / 255
    assert np.abs(decoded_alpha - expected).mean() < 0.03
    assert decoded_alpha.std() > 0.01                                # not a constant plane


def test_mp4_needs_a_background_or_a_mask(remover, clip, tmp_path):
    with pytest.raises(InvalidVideoError, match="no alpha"):
        remove_video_background(remover, clip, tmp_path / "out.mp4")
    assert list(tmp_path.iterdir()) == []
    green = remove_video_background(remover, clip, tmp_path / "green.mp4",
                                    background=(0, 255, 0))
    mask = remove_video_background(remover, clip, tmp_path / "mask.mp4", mask_only=True,
                                   audio=False)
    assert green.frames == mask.frames == 24
    assert _streams(tmp_path / "green.mp4")[:2] == ("h264", "aac")
    assert _streams(tmp_path / "mask.mp4")[:2] == ("h264", None)
    frames = _decode_rgba(tmp_path / "mask.mp4")
    src = list(iter_frames(clip))
    expected = remover.remove_background(src[10], full_size_candidates=False).predicted_mask
    got = frames[10][..., 0].astype(np.float32) / 255
    assert np.all(frames[10][..., 3] == 255)
    assert np.abs(got - expected).mean() < 0.03


def test_an_interrupted_run_leaves_no_file(remover, clip, tmp_path):
    def stop(done, _total):
        if done == 7:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        remove_video_background(remover, clip, tmp_path / "out.webm", on_progress=stop)
    assert list(tmp_path.iterdir()) == []


def test_bad_inputs_are_typed_errors(remover, clip, tmp_path):
    not_video = tmp_path / "notes.mp4"
    not_video.write_bytes(b"this is not a video")
    with pytest.raises(InvalidVideoError):
        remove_video_background(remover, not_video, tmp_path / "o.webm")
    with pytest.raises(InvalidVideoError, match="no such file"):
        probe(tmp_path / "missing.mp4")
    with pytest.raises(InvalidVideoError, match="cannot write"):
        remove_video_background(remover, clip, tmp_path / "o.avi")
    with pytest.raises(ValueError), VideoWriter(tmp_path / "o.webm", Fraction(FPS), W, H) as w:
        w.write(np.zeros((H + 1, W, 3), np.uint8))
    assert not (tmp_path / "o.webm").exists()


def test_smoother_averages_and_restarts_at_a_cut():
    rng = np.random.default_rng(0)
    frames = _pan("coffee", 10) + _pan("astronaut", 10)
    truth = np.zeros((16, 24), np.float32)
    truth[4:12, 6:18] = 1.0
    noisy = [np.clip(truth + rng.normal(0, 0.15, truth.shape), 0, 1).astype(np.float32)
             for _ in frames]
    smoother = TemporalSmoother(strength=0.7, motion_scale=0)
    out = [smoother.update(m, f) for m, f in zip(noisy, frames, strict=True)]
    assert smoother.cuts == [10]                            # panning is not a cut; the switch is
    np.testing.assert_array_equal(out[10], noisy[10])       # restarted: nothing carried over
    flicker_in = np.mean([np.abs(noisy[i] - noisy[i - 1]).mean() for i in range(3, 10)])
    flicker_out = np.mean([np.abs(out[i] - out[i - 1]).mean() for i in range(3, 10)])
    assert flicker_out < 0.5 * flicker_in
    assert np.abs(out[9] - truth).mean() < np.abs(noisy[9] - truth).mean()
    with pytest.raises(ValueError):
        TemporalSmoother(strength=1.0)


def test_pipeline_smoothing_finds_the_cut(remover, cut_clip, tmp_path):
    plain = remove_video_background(remover, cut_clip, tmp_path / "plain.webm")
    smooth = remove_video_background(remover, cut_clip, tmp_path / "smooth.webm",
                                     temporal_smoothing=0.8)
    assert plain.frames == smooth.frames == 24 and plain.audio == "none"
    assert smooth.scene_cuts == [12] and plain.scene_cuts == []
    a = [f[..., 3].astype(np.float32) for f in _decode_rgba(tmp_path / "plain.webm")]
    b = [f[..., 3].astype(np.float32) for f in _decode_rgba(tmp_path / "smooth.webm")]
    change_plain = np.mean([np.abs(a[i] - a[i - 1]).mean() for i in range(2, 12)])
    change_smooth = np.mean([np.abs(b[i] - b[i - 1]).mean() for i in range(2, 12)])
    assert change_smooth < 0.6 * change_plain
    # At the cut the average restarts: the new shot's first frame is taken as it is.
    assert np.abs(b[12] - a[12]).mean() < 0.2 * np.abs(b[11] - a[12]).mean()


@pytest.fixture
def one_thread():
    """Frame batches are tiny; a second torch thread only adds contention on a busy machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_cli_video(tiny_lite_checkpoint, clip, tmp_path, one_thread):
    from s3od.cli import app

    runner = CliRunner()
    out = tmp_path / "out.webm"
    args = ["remove", str(clip), "-m", str(tiny_lite_checkpoint), "--image-size", "64",
            "--batch-size", "8"]
    result = runner.invoke(app, [*args, "-o", str(out), "--temporal-smoothing", "0.5"])
    assert result.exit_code == 0, result.output
    assert len(_decode_rgba(out)) == 24
    result = runner.invoke(app, [*args, "-o", str(tmp_path / "out.mp4")])
    assert result.exit_code == 2 and "no alpha channel" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "out.mp4").exists()
    result = runner.invoke(app, [*args, "-o", str(tmp_path / "bg.mp4"), "--bg-color", "white",
                                 "--no-audio"])
    assert result.exit_code == 0, result.output
    assert _streams(tmp_path / "bg.mp4")[:2] == ("h264", None)
    result = runner.invoke(app, [*args, str(SAMPLES / "cat.jpg")])
    assert result.exit_code == 2 and "cannot be mixed" in result.output


def test_cli_video_loads_its_model_like_photos(tiny_lite_checkpoint, clip, tmp_path,
                                               tmp_path_factory, one_thread, monkeypatch):
    """Videos go through s3od.load_remover: --precision and --compile reach the model, and an
    .onnx file runs on ONNX Runtime (videos used to build an fp32 PyTorch model regardless)."""
    import s3od.runtime
    import s3od.video
    from s3od.cli import app

    used = []
    real = s3od.video.remove_video_background

    def spy(remover, *args, **kwargs):
        used.append(remover)
        return real(remover, *args, **kwargs)

    monkeypatch.setattr(s3od.video, "remove_video_background", spy)
    runner = CliRunner()
    args = ["remove", str(clip), "--device", "cpu", "--no-audio", "--batch-size", "8"]
    out = tmp_path / "bf16.webm"
    result = runner.invoke(app, [*args, "-m", str(tiny_lite_checkpoint), "--image-size", "64",
                                 "--precision", "bf16", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert used[-1].runtime.precision == "bf16" and len(_decode_rgba(out)) == 24

    with monkeypatch.context() as m:  # no compiler: --compile must fail, so it was honoured
        m.setattr(s3od.runtime.shutil, "which", lambda name: None)
        result = runner.invoke(app, [*args, "-m", str(tiny_lite_checkpoint), "--image-size",
                                     "64", "--compile", "-o", str(tmp_path / "c.webm")])
    assert result.exit_code == 2 and "C++ compiler" in " ".join(result.output.split())

    pytest.importorskip("onnxruntime", reason="needs the [onnx] extra")
    from s3od.export import OnnxBackgroundRemoval
    from tests.onnx_tiny import calibrated_lite_checkpoint, exported_lite

    onnx_path, code, output = exported_lite(
        tmp_path_factory.mktemp("onnx"), calibrated_lite_checkpoint(tmp_path_factory.mktemp("ck")))
    assert code == 0, output
    out = tmp_path / "onnx.webm"
    result = runner.invoke(app, [*args, "-m", str(onnx_path), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert isinstance(used[-1], OnnxBackgroundRemoval)
    alphas = [frame[..., 3] for frame in _decode_rgba(out)]
    assert len(alphas) == 24 and max(int(a.max()) - int(a.min()) for a in alphas) > 64
    result = runner.invoke(app, [*args, "-m", str(onnx_path), "--precision", "fp16",
                                 "-o", str(tmp_path / "bad.webm")])
    assert result.exit_code == 2
    assert "ONNX model runs as it was exported" in " ".join(result.output.split())
