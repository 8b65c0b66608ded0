"""Decode anything into HxWx3 uint8 RGB, and write files atomically.

Accepts paths, bytes, file objects, PIL images and numpy arrays; applies EXIF orientation and
converts 16-bit, CMYK, palette, LA and greyscale images the way a user expects to see them.

Encoded inputs (paths, bytes, file objects) are hostile until decoded: only the formats in
:data:`ACCEPTED_FORMATS` are decoded, the pixel count is read from the header and checked against
``max_pixels`` before any pixel is decoded, and whatever goes wrong while decoding (truncated
data, malformed EXIF, a decoder bug) surfaces as :class:`~s3od.errors.InvalidImageError`.
Pillow's process-wide ``Image.MAX_IMAGE_PIXELS`` keeps the value the application gave it: it is
lifted only under a lock, for one header read (to name a bomb's size) or for one decode that the
caller's own ``max_pixels`` allows, and restored right after.
"""

from __future__ import annotations

import io
import os
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from s3od.errors import ImageTooLargeError, InvalidImageError, UnsupportedFormatError

ImageInput = str | os.PathLike | bytes | bytearray | IO[bytes] | Image.Image | np.ndarray

#: Formats decoded from files and bytes. Everything else Pillow could open (PSD, EPS, ICO, TGA,
#: JPEG 2000 ...) is refused: each extra decoder is attack surface, and EPS even runs Ghostscript.
#: Convert such files first, or pass them in as a PIL image or numpy array.
ACCEPTED_FORMATS = ("JPEG", "MPO", "PNG", "WEBP", "BMP", "TIFF", "GIF", "AVIF")

#: Default pixel limit for encoded inputs: 178 MP, about Pillow's own refusal threshold. Every
#: camera photo up to 150 MP fits; larger panoramas need ``max_pixels=`` (``--max-pixels``).
DEFAULT_MAX_PIXELS = 178_000_000

_UMASK = os.umask(0)
os.umask(_UMASK)

#: Serialises the rare opens and decodes that need Pillow's global bomb limit lifted.
_PILLOW_LIMIT_LOCK = threading.Lock()


def _accepted_list() -> str:
    return ", ".join(f for f in ACCEPTED_FORMATS if f != "MPO")


def _reason(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


@contextmanager
def _pillow_limit_lifted() -> Iterator[None]:
    """Lift Pillow's process-wide bomb limit for one header read or one decode, then restore it.

    Used only where s3od checks the pixel count itself: to read the header of an image over
    Pillow's threshold (so the refusal can name its size) and to decode one that the caller's
    own, larger limit allows. The lock makes every use restore exactly the value it found.
    """
    with _PILLOW_LIMIT_LOCK:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def _pillow_refuses(pixels: int) -> bool:
    """Whether Pillow's own check would raise DecompressionBombError at this size."""
    limit = Image.MAX_IMAGE_PIXELS
    return limit is not None and pixels > 2 * limit


def _opener(source: Any) -> Callable[[], Any]:
    """Validate an encoded source and return a function giving something Image.open reads."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise InvalidImageError("empty input (0 bytes)")
        data = bytes(source)
        return lambda: io.BytesIO(data)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        try:
            if not path.is_file():
                raise InvalidImageError(f"no such file: {path}")
            if path.stat().st_size == 0:
                raise InvalidImageError(f"empty file (0 bytes): {path}")
        except OSError as err:  # permission denied, name too long, symlink loop ...
            raise InvalidImageError(f"cannot read {path}: {err.strerror or err}") from None
        return lambda: path
    if hasattr(source, "read"):
        stream = source if getattr(source, "seekable", lambda: False)() else io.BytesIO(
            source.read())
        start = stream.tell()

        def rewind() -> Any:
            stream.seek(start)
            return stream
        return rewind
    raise InvalidImageError(f"cannot read an image from a {type(source).__name__}")


def _open_lazy(opener: Callable[[], Any]) -> Image.Image:
    """``Image.open`` (header only) whatever Pillow's bomb limit; callers check the size."""
    def attempt() -> Image.Image:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                return Image.open(opener())
        except Image.DecompressionBombError:
            raise
        except UnidentifiedImageError:
            raise InvalidImageError("cannot decode image: not an image in any known format "
                                    f"(accepted: {_accepted_list()})") from None
        except InvalidImageError:
            raise
        except MemoryError:
            raise InvalidImageError("cannot decode image: out of memory reading the header"
                                    ) from None
        except Exception as err:  # a header parser failing in any way
            raise InvalidImageError(f"cannot decode image header: {_reason(err)}") from err

    try:
        return attempt()
    except Image.DecompressionBombError:
        pass
    with _pillow_limit_lifted():  # only the header is parsed here; nothing is decoded
        return attempt()


@dataclass(frozen=True)
class ImageHeader:
    """What an encoded image's header says, before any pixel is decoded."""

    format: str
    width: int
    height: int

    @property
    def pixels(self) -> int:
        return self.width * self.height


def read_header(source: ImageInput) -> ImageHeader:
    """Format and size of a path, bytes or file object, parsing only the header.

    Raises :class:`~s3od.errors.InvalidImageError` when no known format matches or the header
    is broken; formats outside :data:`ACCEPTED_FORMATS` are reported, not refused, here.
    """
    with _open_lazy(_opener(source)) as img:
        return ImageHeader(img.format or "", *img.size)


def _check_header(img: Image.Image, max_pixels: int) -> None:
    if img.format not in ACCEPTED_FORMATS:
        raise UnsupportedFormatError(
            f"image format {img.format or 'unknown'} is not accepted; use one of "
            f"{_accepted_list()} (or pass a PIL image or numpy array)")
    width, height = img.size
    if width <= 0 or height <= 0:
        raise InvalidImageError(f"cannot decode image: it has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"image is {width}x{height} = {width * height / 1e6:.1f} MP, over the limit of "
            f"{max_pixels / 1e6:.1f} MP (it would take {3 * width * height / 2**30:.1f} GiB "
            f"decoded); raise max_pixels (CLI: --max-pixels) to allow larger photos")


def _decode(img: Image.Image) -> np.ndarray:
    """Decode pixels and convert them; every failure becomes InvalidImageError."""
    lifted = _pillow_limit_lifted() if _pillow_refuses(img.width * img.height) else nullcontext()
    with lifted, warnings.catch_warnings():
        # the caller's own limit was checked; Pillow's warning would only repeat it, louder
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img.load()
        except MemoryError:
            raise InvalidImageError(f"cannot decode image: out of memory decoding "
                                    f"{img.width}x{img.height} pixels") from None
        except Exception as err:  # truncated data, corrupt streams, decoder errors of any type
            raise InvalidImageError(f"cannot decode {img.format} image: {_reason(err)}"
                                    ) from err
        return _to_array(img)


def pil_to_rgb(img: Image.Image) -> Image.Image:
    """Orientation-corrected RGB, mapping high-bit-depth greys to 8 bits instead of clipping."""
    img = ImageOps.exif_transpose(img) or img
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "I;16N"):
        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if arr.max() > 255 else 255.0
        arr = np.clip(arr / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float32)
        scale = 255.0 if arr.max() <= 1.0 else 1.0
        return Image.fromarray(np.clip(arr * scale + 0.5, 0, 255).astype(np.uint8)).convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        # Transparent pixels keep their stored colour; alpha is not the network's business.
        return img.convert("RGBA").convert("RGB")
    return img.convert("RGB")


def array_to_rgb(arr: np.ndarray) -> np.ndarray:
    """numpy HxW / HxWx1 / HxWx3 / HxWx4 of uint8, uint16, bool or float in [0, 1] -> RGB uint8."""
    if not isinstance(arr, np.ndarray):
        raise InvalidImageError(f"expected a numpy array, got {type(arr).__name__}")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise InvalidImageError(f"expected HxW, HxWx3 or HxWx4 array, got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise InvalidImageError(f"image has no pixels (shape {arr.shape})")
    if arr.dtype == np.uint8:
        out = arr
    elif arr.dtype == np.uint16:
        out = (arr.astype(np.uint32) * 255 + 32767) // 65535
    elif arr.dtype == bool:
        out = arr.astype(np.uint8) * 255
    elif np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise InvalidImageError("float image contains NaN or inf")
        out = np.clip(arr * 255.0 + 0.5, 0, 255)
    else:
        raise InvalidImageError(f"unsupported array dtype {arr.dtype}")
    out = out.astype(np.uint8, copy=False)
    if out.ndim == 2:
        out = np.repeat(out[..., None], 3, axis=2)
    elif out.shape[2] == 4:
        out = out[..., :3]
    return np.ascontiguousarray(out)


def _to_array(img: Image.Image) -> np.ndarray:
    try:
        return np.asarray(pil_to_rgb(img), dtype=np.uint8).copy()
    except MemoryError:
        raise InvalidImageError(
            f"not enough memory to convert a {img.width}x{img.height} image") from None
    except SyntaxError as err:  # Pillow's TIFF parser, reading a malformed EXIF block
        raise InvalidImageError(
            f"cannot decode image: malformed EXIF metadata ({_reason(err)})") from err
    except Exception as err:
        raise InvalidImageError(
            f"cannot decode image: converting its {img.mode} pixels failed ({_reason(err)})"
        ) from err


def load_image(source: ImageInput, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Any supported input -> HxWx3 uint8 RGB (EXIF orientation applied).

    Args:
        source: a path, bytes, a binary file object, a PIL image or a numpy array.
        max_pixels: encoded inputs (paths, bytes, files) whose header declares more pixels are
            refused with :class:`~s3od.errors.ImageTooLargeError` before anything is decoded.
            PIL images and arrays are already in memory and are not checked.

    Raises:
        InvalidImageError: for every input that cannot be decoded, whatever the reason
            (subclasses :class:`~s3od.errors.UnsupportedFormatError` and
            :class:`~s3od.errors.ImageTooLargeError` say which refusal it was).
    """
    if isinstance(source, np.ndarray):
        return array_to_rgb(source)
    if isinstance(source, Image.Image):
        return _to_array(source)
    with _open_lazy(_opener(source)) as img:
        _check_header(img, max_pixels)
        return _decode(img)


def save_image_atomic(image: Image.Image, path: str | os.PathLike, **save_kwargs: Any) -> Path:
    """Write ``image`` to a temporary file in the target folder, then rename it into place.

    An interrupted run therefore never leaves a half-written file under the final name. The
    temporary file is ``.<name>.<pid>.<random>.part``: a run killed outright (SIGKILL, power
    loss) leaves it behind, and :func:`stale_temp_files` finds it by name and dead writer.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = save_kwargs.pop("format", None) or Image.registered_extensions().get(
        path.suffix.lower(), "PNG")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".part",
                               dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            image.save(fh, format=fmt, **save_kwargs)
            fh.flush()
            os.fsync(fh.fileno())  # on disk before the name says "done" (power loss, kill -9)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; outputs get normal permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def fsync_dir(folder: str | os.PathLike) -> None:
    """Make a rename in ``folder`` durable (POSIX; a no-op where folders cannot be opened)."""
    if os.name != "posix":
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on a folder; the data itself is synced
        pass
    finally:
        os.close(fd)


def output_problem(path: str | os.PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS
                   ) -> str | None:
    """Why an existing output at ``path`` does not count as done, or None when it is a
    complete image (``--skip-existing``).

    A directory, an empty file, a file that is not an image, and one whose pixels do not all
    decode (truncated) are not done; the image is decoded in full, since a truncated PNG or
    WebP still opens and reports its size.
    """
    path = Path(path)
    if path.is_dir():
        return "is a directory"
    try:
        size = path.stat().st_size
    except OSError as err:
        return f"cannot be read ({err.strerror or err})"
    if size == 0:
        return "is empty (0 bytes)"
    try:
        with _pillow_limit_lifted(), Image.open(path) as img:
            if img.width * img.height > max_pixels:
                return f"declares {img.width}x{img.height} pixels, over the limit"
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                img.load()
    except Exception as err:  # Pillow raises OSError, SyntaxError, ValueError ... on bad files
        return f"is not a complete image ({_reason(err)[:100]})"
    return None


#: mkstemp's random part: 8 characters of this alphabet.
_TEMP_RANDOM = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_")
#: Without a way to ask whether a writer lives (Windows), a temp file this old is stale.
_STALE_AGE_S = 24 * 3600


def _writer_alive(pid: int | None, mtime: float) -> bool:
    if pid is None:  # named before writers recorded their pid: an older s3od, long gone
        return False
    if pid == os.getpid():
        return True
    if os.name != "posix":
        return time.time() - mtime < _STALE_AGE_S
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def _temp_writer(entry: str, names: set[str]) -> tuple[bool, int | None]:
    """Whether ``entry`` is a temp file of :func:`save_image_atomic` for one of ``names``."""
    if not (entry.startswith(".") and entry.endswith(".part")):
        return False, None
    inner = entry[1:-len(".part")]
    for name in names:
        if not inner.startswith(name + "."):
            continue
        tail = inner[len(name) + 1:].split(".")
        if len(tail) == 2 and tail[0].isdigit():
            pid, rand = int(tail[0]), tail[1]
        elif len(tail) == 1:
            pid, rand = None, tail[0]
        else:
            continue
        if len(rand) == 8 and set(rand) <= _TEMP_RANDOM:
            return True, pid
    return False, None


def stale_temp_files(targets: Iterable[str | os.PathLike]) -> list[Path]:
    """Temp files that :func:`save_image_atomic` left beside ``targets`` and whose writer is gone.

    Only files named after one of ``targets`` count, and only when the process that wrote them no
    longer runs, so a concurrent run's files in progress are never listed.
    """
    by_folder: dict[Path, set[str]] = {}
    for target in targets:
        target = Path(target)
        by_folder.setdefault(target.parent, set()).add(target.name)
    stale = []
    for folder, names in by_folder.items():
        try:
            entries = list(os.scandir(folder))
        except OSError:  # not there yet, or not a folder: nothing of ours inside
            continue
        for entry in entries:
            ours, pid = _temp_writer(entry.name, names)
            if not ours or not entry.is_file(follow_symlinks=False):
                continue
            try:
                mtime = entry.stat(follow_symlinks=False).st_mtime
            except OSError:
                continue
            if not _writer_alive(pid, mtime):
                stale.append(Path(entry.path))
    return sorted(stale)


def encode_image(image: Image.Image, fmt: str = "PNG", **save_kwargs: Any) -> bytes:
    """Encode to bytes (for stdout and HTTP responses)."""
    buf = io.BytesIO()
    image.save(buf, format=fmt, **save_kwargs)
    return buf.getvalue()
