"""Request limits: body size, content type, pixel count before decode, concurrency.

Everything here runs before any pixel is decoded, so a hostile or careless client costs at most
``max_upload_bytes`` of memory and a header parse.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from s3od.errors import InvalidImageError
from s3od.imageio import load_image
from s3od.serving.settings import ACCEPTED_FORMATS

RAW_TYPES = ("application/octet-stream",)
MULTIPART = "multipart/form-data"
FILE_FIELDS = ("file", "image")


class ApiError(Exception):
    """A refusal that becomes a JSON response ``{"error": code, "message": ...}``."""

    def __init__(self, status: int, code: str, message: str,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


def media_type(content_type: str | None) -> str:
    """``"Image/JPEG; charset=x"`` -> ``"image/jpeg"``; missing -> ``""``."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def check_content_type(content_type: str | None) -> str:
    """Accept image/*, octet-stream and multipart uploads; anything else is a 415."""
    kind = media_type(content_type)
    if kind.startswith("image/") or kind in RAW_TYPES or kind == MULTIPART:
        return kind
    hint = (" (curl --data-binary sends form-urlencoded by default: add "
            "-H 'Content-Type: image/jpeg' or use -F file=@photo.jpg)"
            if kind == "application/x-www-form-urlencoded" else "")
    shown = kind or "none"
    raise ApiError(415, "unsupported_media_type",
                   f"Content-Type {shown} is not accepted: send the image bytes as image/* or "
                   f"application/octet-stream, or as multipart/form-data field 'file'{hint}")


def too_large(limit: int) -> ApiError:
    return ApiError(413, "payload_too_large",
                    f"request body exceeds the server's limit of {limit} bytes")


async def read_body(stream: AsyncIterator[bytes], declared_length: str | None, limit: int) -> bytes:
    """The whole body, refusing (413) as soon as it is known to exceed ``limit`` bytes.

    A declared ``Content-Length`` over the limit is refused before reading anything; a chunked
    body is counted as it arrives, so a lying or absent header cannot smuggle more in.
    """
    if declared_length is not None:
        try:
            declared = int(declared_length)
        except ValueError:
            raise ApiError(400, "bad_request", "Content-Length is not a number") from None
        if declared > limit:
            raise too_large(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in stream:
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


@dataclass(frozen=True)
class ImageHeader:
    """What the header says, before any pixel is decoded."""

    format: str
    width: int
    height: int


def probe_image(data: bytes, max_pixels: int) -> ImageHeader:
    """Read only the header: refuse unknown bytes (400), formats (415) and sizes (413)."""
    if not data:
        raise ApiError(400, "invalid_image", "empty body: no image bytes were sent")
    try:
        with Image.open(io.BytesIO(data)) as img:  # lazy: parses the header only
            fmt, (width, height) = img.format or "", img.size
    except Image.DecompressionBombError as err:
        raise ApiError(413, "too_many_pixels", str(err)) from None
    except UnidentifiedImageError:
        raise ApiError(400, "invalid_image",
                       f"cannot decode image: {len(data)} bytes in no known image format") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise ApiError(400, "invalid_image", f"cannot decode image: {err}") from None
    if fmt not in ACCEPTED_FORMATS:
        raise ApiError(415, "unsupported_image_format",
                       f"image format {fmt or 'unknown'} is not accepted; send one of "
                       f"{', '.join(sorted(set(ACCEPTED_FORMATS) - {'MPO'}))}")
    if width * height > max_pixels:
        raise ApiError(413, "too_many_pixels",
                       f"image is {width}x{height} = {width * height} pixels; the server's "
                       f"limit is {max_pixels} pixels")
    return ImageHeader(fmt, width, height)


def decode_checked(data: bytes, max_pixels: int) -> np.ndarray:
    """Probe, then decode through the library's one decode path -> HxWx3 uint8 RGB."""
    probe_image(data, max_pixels)
    try:
        return load_image(data)
    except InvalidImageError as err:
        raise ApiError(400, "invalid_image", str(err)) from None
    except Image.DecompressionBombError as err:
        raise ApiError(413, "too_many_pixels", str(err)) from None


class Gate:
    """At most ``slots`` requests work at once and ``queue`` wait; the rest get a 503 at once.

    Refusing early keeps memory bounded: each admitted request may hold an upload in memory.
    """

    def __init__(self, slots: int, queue: int) -> None:
        self._semaphore = asyncio.Semaphore(slots)
        self._limit = slots + queue
        self._admitted = 0

    @property
    def admitted(self) -> int:
        """Requests working or waiting right now."""
        return self._admitted

    @asynccontextmanager
    async def enter(self) -> AsyncIterator[None]:
        if self._admitted >= self._limit:
            raise ApiError(503, "busy", "server is at its concurrency limit; retry shortly",
                           {"Retry-After": "1"})
        self._admitted += 1
        try:
            async with self._semaphore:
                yield
        finally:
            self._admitted -= 1
