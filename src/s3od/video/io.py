"""Video decoding and encoding through PyAV (the ``edges`` extra), with atomic outputs.

Output formats are chosen by suffix:

========  ==================  =========================  ==============================
suffix    codec               pixel format               alpha
========  ==================  =========================  ==============================
.webm     VP9 (libvpx-vp9)    yuva420p / yuv420p         yes (browsers, ffmpeg)
.mov      ProRes 4444         yuva444p10le / yuv444p10le  yes (editors: Premiere, Resolve)
.mp4      H.264 (libx264)     yuv420p                    no: needs a background or a mask
========  ==================  =========================  ==============================

Frames are written at the input's average frame rate (constant frame rate). The file is
written under a temporary name in the target folder and renamed into place when complete, so
an interrupted run never leaves a half-written file under the final name.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from s3od.errors import InvalidVideoError, MissingDependencyError, VideoTooLargeError

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = {".mp4", ".mov", ".webm", ".mkv", ".avi", ".m4v", ".mpg", ".mpeg", ".wmv"}
OUTPUT_SUFFIXES = (".webm", ".mov", ".mp4")
#: VP9 frames larger than this (4K UHD) are encoded without libvpx's lookahead buffer.
VP9_LOOKAHEAD_MAX_PIXELS = 3840 * 2160


def av_module() -> Any:
    """The ``av`` module, or a typed error that says how to install it."""
    try:
        import av
    except ImportError as err:
        raise MissingDependencyError("video needs PyAV: pip install 's3od[edges]'") from err
    return av


@dataclass(frozen=True)
class VideoInfo:
    """What :func:`probe` reads from a container's header."""

    width: int
    height: int
    fps: Fraction
    frames: int | None
    duration: float | None
    audio_codec: str | None


@dataclass(frozen=True)
class OutputFormat:
    """Codec settings for one output suffix."""

    container: str
    codec: str
    pix_fmt: str
    alpha_pix_fmt: str | None
    options: dict[str, str]
    audio_codecs: frozenset[str]
    audio_fallback: str
    even_size: bool = False


FORMATS: dict[str, OutputFormat] = {
    ".webm": OutputFormat("webm", "libvpx-vp9", "yuv420p", "yuva420p",
                          {"crf": "30", "b": "0", "row-mt": "1", "deadline": "good",
                           "cpu-used": "4"},
                          frozenset({"opus", "vorbis"}), "libopus"),
    ".mov": OutputFormat("mov", "prores_ks", "yuv444p10le", "yuva444p10le",
                         {"profile": "4", "vendor": "apl0"},
                         frozenset({"aac", "pcm_s16le", "pcm_s24le", "alac", "mp3"}), "aac"),
    ".mp4": OutputFormat("mp4", "libx264", "yuv420p", None,
                         {"crf": "18", "preset": "medium", "movflags": "+faststart"},
                         frozenset({"aac", "mp3", "opus", "alac"}), "aac", even_size=True),
}


def output_format(path: str | os.PathLike) -> OutputFormat:
    """The :class:`OutputFormat` for ``path``'s suffix (typed error for others)."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise InvalidVideoError(f"cannot write {suffix or 'files without a suffix'!r} video: use "
                                f"{', '.join(OUTPUT_SUFFIXES)}")
    return FORMATS[suffix]


def _open_input(path: str | os.PathLike) -> Any:
    av = av_module()
    path = Path(path)
    if not path.is_file():
        raise InvalidVideoError(f"no such file: {path}")
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError, ValueError) as err:
        raise InvalidVideoError(f"cannot open video {path}: {err}") from err
    if not container.streams.video:
        container.close()
        raise InvalidVideoError(f"{path} has no video stream")
    return container


def probe(path: str | os.PathLike) -> VideoInfo:
    """Size, frame rate, frame count and audio codec of a video file."""
    container = _open_input(path)
    try:
        stream = container.streams.video[0]
        ctx = stream.codec_context
        fps = stream.average_rate or stream.guessed_rate or Fraction(25)
        duration = None
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / 1_000_000
        frames = stream.frames or (round(duration * fps) if duration else None)
        audio = container.streams.audio[0].codec_context.name if container.streams.audio else None
        return VideoInfo(ctx.width, ctx.height, Fraction(fps), frames or None, duration, audio)
    finally:
        container.close()


def check_frame_size(info: VideoInfo, max_pixels: int, source: str | os.PathLike) -> None:
    """Refuse frames over ``max_pixels`` from the stream header, before any frame is decoded
    (the photos' limit: ``--max-pixels``, :data:`s3od.imageio.DEFAULT_MAX_PIXELS`)."""
    pixels = info.width * info.height
    if info.width <= 0 or info.height <= 0:
        raise InvalidVideoError(f"{source}: the video stream declares no frame size "
                                f"({info.width}x{info.height})")
    if pixels > max_pixels:
        raise VideoTooLargeError(
            f"{source}: video frames are {info.width}x{info.height} = {pixels / 1e6:.1f} MP, "
            f"over the limit of {max_pixels / 1e6:.1f} MP (each frame would take "
            f"{3 * pixels / 2**30:.1f} GiB decoded); raise max_pixels (CLI: --max-pixels) to "
            "allow larger frames")


def video_output_problem(path: str | os.PathLike) -> str | None:
    """Why an existing video output does not count as done (``--skip-existing``), or None.

    Done means: a non-empty file that opens, has a video stream, whose packets all demux and
    whose first frame decodes.
    """
    av = av_module()
    path = Path(path)
    if path.is_dir():
        return "is a directory"
    try:
        if path.stat().st_size == 0:
            return "is empty (0 bytes)"
        with av.open(str(path)) as container:
            if not container.streams.video:
                return "has no video stream"
            stream = container.streams.video[0]
            decoded = False
            for packet in container.demux(stream):  # the last, empty packet flushes
                if not decoded:
                    decoded = bool(packet.decode())
            if not decoded:
                return "has no decodable frame"
    except (av.FFmpegError, OSError, ValueError) as err:
        return f"is not a complete video ({type(err).__name__}: {str(err)[:80]})"
    return None


def iter_frames(path: str | os.PathLike) -> Iterator[np.ndarray]:
    """Decode every frame of the first video stream as ``(H, W, 3)`` uint8 RGB."""
    av = av_module()
    container = _open_input(path)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        try:
            for frame in container.decode(stream):
                yield frame.to_ndarray(format="rgb24")
        except av.FFmpegError as err:
            raise InvalidVideoError(f"cannot decode {path}: {err}") from err
    finally:
        container.close()


def _file_mode() -> int:
    """Permissions a plain ``open(path, "w")`` would give under the current umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


class _AudioPump:
    """Moves the input's audio into the output, interleaved with the video by time.

    Packets are copied when the output container accepts the codec, else decoded and
    re-encoded to the container's usual codec; audio past the last video frame is dropped.
    """

    def __init__(self, source: Path, output: Any, fmt: OutputFormat) -> None:
        av = av_module()
        self.status = "none"
        self._input = av.open(str(source))
        if not self._input.streams.audio:
            self._input.close()
            self._input = None
            return
        self._in_stream = self._input.streams.audio[0]
        self._packets = self._input.demux(self._in_stream)
        name = self._in_stream.codec_context.name
        self._copy = name in fmt.audio_codecs
        if self._copy:
            self._out_stream = output.add_stream_from_template(self._in_stream)
            self.status = f"copied ({name})"
        else:
            rate = 48000 if fmt.audio_fallback == "libopus" else (
                self._in_stream.codec_context.sample_rate or 48000)
            self._out_stream = output.add_stream(fmt.audio_fallback, rate=rate)
            self.status = f"re-encoded ({name} -> {fmt.audio_fallback})"
        self._output = output
        self._next: Any = None
        self._done = False

    def _peek(self) -> Any:
        while self._next is None and not self._done:
            packet = next(self._packets, None)
            if packet is None:
                self._done = True
            elif packet.dts is not None:             # skip the demuxer's empty flush packet
                self._next = packet
        return self._next

    def pump(self, until: float) -> None:
        """Write the audio that starts before ``until`` seconds."""
        if self._input is None:
            return
        while (packet := self._peek()) is not None:
            ts = packet.pts if packet.pts is not None else packet.dts
            if float(ts * packet.time_base) >= until:
                return
            self._write(packet)
            self._next = None

    def _write(self, packet: Any) -> None:
        if self._copy:
            packet.stream = self._out_stream
            self._output.mux(packet)
            return
        for frame in packet.decode():
            frame.pts = None
            for out in self._out_stream.encode(frame):
                self._output.mux(out)

    def close(self, end: float) -> None:
        """Write what starts before ``end`` seconds, flush the encoder, close the input."""
        if self._input is None:
            return
        self.pump(end)
        if not self._copy:
            for out in self._out_stream.encode(None):
                self._output.mux(out)
        self._input.close()


class VideoWriter:
    """Encode RGB, RGBA or grey frames to ``path`` (format from its suffix), atomically.

    Use as a context manager; the file appears under its final name only when the block
    exits without an error.

    Args:
        path: output file (.webm, .mov or .mp4).
        fps: frame rate.
        width, height: frame size in pixels.
        alpha: frames carry an alpha channel (RGBA); refused for .mp4.
        audio_from: copy (or re-encode) this file's first audio stream.
    """

    def __init__(self, path: str | os.PathLike, fps: Fraction | float, width: int, height: int,
                 *, alpha: bool = False, audio_from: str | os.PathLike | None = None) -> None:
        self.path = Path(path)
        self.format = output_format(self.path)
        if alpha and self.format.alpha_pix_fmt is None:
            raise InvalidVideoError(
                f"{self.path.suffix} video has no alpha channel: write .webm or .mov, or give a "
                "background colour or image, or ask for the mask")
        self.alpha = alpha
        self.fps = Fraction(fps).limit_denominator(1_000_000)
        self.width, self.height = width, height
        self.audio_from = Path(audio_from) if audio_from is not None else None
        self.frames = 0
        self.audio_status = "none"
        self._tmp: Path | None = None

    def __enter__(self) -> VideoWriter:
        av = av_module()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".part",
                                   dir=self.path.parent)
        os.close(fd)
        self._tmp = Path(tmp)
        try:
            self._container = av.open(tmp, "w", format=self.format.container)
            fmt = self.format
            stream = self._container.add_stream(fmt.codec, rate=self.fps)
            stream.width, stream.height = self._encoded_size()
            stream.pix_fmt = fmt.alpha_pix_fmt if self.alpha else fmt.pix_fmt
            stream.options = dict(fmt.options)
            if fmt.codec == "libvpx-vp9" and self.alpha:
                stream.options["auto-alt-ref"] = "0"      # libvpx cannot alt-ref with alpha
            if fmt.codec == "libvpx-vp9" and self.width * self.height > VP9_LOOKAHEAD_MAX_PIXELS:
                # libvpx buffers lag-in-frames (25) frames ahead: at 4096x4096 with alpha that
                # is 3.6 GB of a 4.1 GB peak; without the lookahead, 2.4 GB
                stream.options["lag-in-frames"] = "0"
            self._stream = stream
            self._audio = (_AudioPump(self.audio_from, self._container, fmt)
                           if self.audio_from is not None else None)
        except av.FFmpegError as err:
            self._discard()
            raise InvalidVideoError(f"cannot write {self.path.name}: {err}") from err
        except BaseException:
            self._discard()
            raise
        return self

    def _encoded_size(self) -> tuple[int, int]:
        if self.format.even_size:
            return self.width + self.width % 2, self.height + self.height % 2
        return self.width, self.height

    def write(self, frame: np.ndarray) -> None:
        """Append one ``(H, W, 3)`` RGB, ``(H, W, 4)`` RGBA or ``(H, W)`` grey uint8 frame."""
        av = av_module()
        if frame.shape[:2] != (self.height, self.width):
            raise ValueError(f"frame is {frame.shape[1]}x{frame.shape[0]}, "
                             f"writer expects {self.width}x{self.height}")
        enc_w, enc_h = self._encoded_size()
        if (enc_w, enc_h) != (self.width, self.height):
            pad = ((0, enc_h - self.height), (0, enc_w - self.width)) + ((0, 0),) * (frame.ndim - 2)
            frame = np.pad(frame, pad, mode="edge")
        layout = "gray" if frame.ndim == 2 else {3: "rgb24", 4: "rgba"}[frame.shape[2]]
        vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format=layout)
        vf.pts = self.frames
        try:
            for packet in self._stream.encode(vf):
                self._container.mux(packet)
            self.frames += 1
            if self._audio is not None:
                self._audio.pump(float(self.frames / self.fps))
        except av.FFmpegError as err:
            raise InvalidVideoError(f"cannot encode {self.path.name}: {err}") from err

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None:
            self._discard()
            return
        av = av_module()
        try:
            for packet in self._stream.encode(None):
                self._container.mux(packet)
            if self._audio is not None:
                self._audio.close(float(self.frames / self.fps))
                self.audio_status = self._audio.status
            self._container.close()
            self._container = None
            assert self._tmp is not None  # set by __enter__
            os.chmod(self._tmp, _file_mode())     # mkstemp makes 0600; outputs follow umask
            with open(self._tmp, "rb+") as fh:    # on disk before the name says "done"
                os.fsync(fh.fileno())
            os.replace(self._tmp, self.path)
            from s3od.imageio import fsync_dir

            fsync_dir(self.path.parent)
        except av.FFmpegError as err:
            self._discard()
            raise InvalidVideoError(f"cannot finish {self.path.name}: {err}") from err
        except BaseException:
            self._discard()
            raise

    def _discard(self) -> None:
        try:
            if getattr(self, "_container", None) is not None:
                self._container.close()
        except Exception:  # closing a broken muxer may fail again; the file goes anyway
            log.debug("closing a failed video output raised", exc_info=True)
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)
