"""Request limits: body size, content type, pixel count before decode, concurrency.

Everything here runs before any pixel is decoded, so a hostile or careless client costs at most
``max_upload_bytes`` of memory and a header parse.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import numpy as np

from s3od.errors import ImageTooLargeError, InvalidImageError, S3ODError, UnsupportedFormatError
from s3od.imageio import ACCEPTED_FORMATS, ImageHeader, load_image, read_header

RAW_TYPES = ("application/octet-stream",)
MULTIPART = "multipart/form-data"
FILE_FIELDS = ("file", "image")


class ApiError(S3ODError):
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


def probe_image(data: bytes, max_pixels: int) -> ImageHeader:
    """Read only the header: refuse unknown bytes (400), formats (415) and sizes (413)."""
    if not data:
        raise ApiError(400, "invalid_image", "empty body: no image bytes were sent")
    try:
        header = read_header(data)  # names a bomb's size whatever Pillow's own limit is
    except InvalidImageError as err:
        raise ApiError(400, "invalid_image", str(err)) from None
    if header.format not in ACCEPTED_FORMATS:
        raise ApiError(415, "unsupported_image_format",
                       f"image format {header.format or 'unknown'} is not accepted; send one of "
                       f"{', '.join(sorted(set(ACCEPTED_FORMATS) - {'MPO'}))}")
    if header.pixels > max_pixels:
        raise ApiError(413, "too_many_pixels",
                       f"image is {header.width}x{header.height} = {header.pixels} pixels; the "
                       f"server's limit is {max_pixels} pixels")
    return header


def decode_checked(data: bytes, max_pixels: int) -> np.ndarray:
    """Probe, then decode through the library's one decode path -> HxWx3 uint8 RGB."""
    probe_image(data, max_pixels)
    try:
        return load_image(data, max_pixels=max_pixels)
    except ImageTooLargeError as err:
        raise ApiError(413, "too_many_pixels", str(err)) from None
    except UnsupportedFormatError as err:
        raise ApiError(415, "unsupported_image_format", str(err)) from None
    except InvalidImageError as err:
        raise ApiError(400, "invalid_image", str(err)) from None


class Gate:
    """At most ``slots`` requests work at once and ``queue`` wait; the rest get a 503 at once.

    Refusing early keeps memory bounded: each admitted request may hold an upload in memory.
    :meth:`admit` counts a request from its arrival (its upload is read while admitted, without
    a slot); :meth:`slot` is the part that decodes and infers.
    """

    def __init__(self, slots: int, queue: int) -> None:
        self._semaphore = asyncio.Semaphore(slots)
        self._limit = slots + queue
        self._admitted = 0

    @property
    def admitted(self) -> int:
        """Requests uploading, working or waiting right now."""
        return self._admitted

    @asynccontextmanager
    async def admit(self) -> AsyncIterator[None]:
        if self._admitted >= self._limit:
            raise ApiError(503, "busy", "server is at its concurrency limit; retry shortly",
                           {"Retry-After": "1"})
        self._admitted += 1
        try:
            yield
        finally:
            self._admitted -= 1

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        async with self._semaphore:
            yield

    @asynccontextmanager
    async def enter(self) -> AsyncIterator[None]:
        """Admission and a slot at once."""
        async with self.admit(), self.slot():
            yield
