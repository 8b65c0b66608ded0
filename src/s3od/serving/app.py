"""The HTTP service: ``create_app(settings)`` builds a FastAPI app around one loaded model.

Data flow per request: auth -> admission (:class:`~s3od.serving.limits.Gate`) -> content type
-> bounded body read (own timeout, no slot held) -> a slot -> header probe -> decode (thread) ->
:class:`MicroBatcher` (inference thread) -> result, render + encode (thread) -> bytes or JSON.
One deadline covers all of it from the request's arrival. Every refusal is an
:class:`~s3od.serving.limits.ApiError` rendered as ``{"error": code, "message": text}``.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from s3od import compose
from s3od.imageio import encode_image
from s3od.serving.batching import InferenceOutOfMemory, MicroBatcher, batch_buckets, padded
from s3od.serving.limits import (
    FILE_FIELDS,
    MULTIPART,
    ApiError,
    Gate,
    check_content_type,
    decode_checked,
    read_body,
)
from s3od.serving.settings import ServerSettings

if TYPE_CHECKING:
    import numpy as np

    from s3od.remover import Remover
    from s3od.result import RemovalResult

log = logging.getLogger(__name__)
T = TypeVar("T")
#: Retry-After (seconds) of the 503 answered when a forward pass ran out of GPU memory.
OOM_RETRY_AFTER_S = 5

# Both stay lossless. On CPU, Pillow's default effort costs about as much as a small model's
# forward pass; these are ~5x (PNG, +5% bytes) and ~20x (WebP, +13%) faster
# (benchmarks/serve_encode.py).
PNG_FAST = {"compress_level": 1}
WEBP_FAST = {"lossless": True, "method": 0, "quality": 0}

_IMAGE_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {"type": "object", "required": ["file"],
                       "properties": {"file": {"type": "string", "format": "binary"}}}},
        "image/*": {"schema": {"type": "string", "format": "binary"}},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    },
}


class ErrorBody(BaseModel):
    """Shape of every 4xx/5xx answer."""

    error: str
    message: str


_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in {
        400: "Body is not a decodable image", 401: "Missing or wrong API key",
        413: "Body or pixel count over the limit", 415: "Unsupported content type or format",
        422: "Invalid option",
        503: "Concurrency limit reached, or the GPU ran out of memory (Retry-After)",
        504: "Request timed out",
    }.items()
}


class MaskCandidate(BaseModel):
    index: int
    iou: float | None = Field(None, description="Predicted IoU; null for models without an "
                                                "IoU head (foreign ONNX models).")
    png_base64: str


class MasksResponse(BaseModel):
    model: str
    width: int
    height: int
    best_index: int
    ambiguous: bool
    masks: list[MaskCandidate]


def _runtime(remover: Remover) -> str | None:
    """How the model runs (precision, memory format), when the backend has such options."""
    return remover.runtime.describe() if remover.runtime is not None else None


def remover_for(settings: ServerSettings) -> Remover:
    """The one model the server uses, through :func:`s3od.load_remover` (an ``.onnx`` file
    runs on ONNX Runtime); errors propagate: the CLI reports them."""
    from s3od.loading import load_remover

    return load_remover(settings.model, precision=settings.precision, compile=settings.compile,
                        device=settings.device, image_size=settings.image_size,
                        preprocess=settings.preprocess,
                        threads=settings.threads)


def _error_response(status: int, code: str, message: str,
                    headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": code, "message": message}, status_code=status, headers=headers)


def _validation_message(err: RequestValidationError) -> str:
    parts = []
    for item in err.errors():
        where = ".".join(str(p) for p in item.get("loc", ()) if p not in ("query", "body"))
        parts.append(f"{where}: {item.get('msg', 'invalid')}" if where else item.get("msg", ""))
    return "; ".join(parts) or "invalid request"


def _only_known_params(*names: str) -> Callable[[Request], None]:
    """Refuse unknown query parameters: a typo such as ``bgcolor`` must not be ignored."""
    allowed = set(names)

    def check(request: Request) -> None:
        unknown = sorted(set(request.query_params) - allowed)
        if unknown:
            raise ApiError(422, "invalid_option",
                           f"unknown option(s) {', '.join(unknown)}; accepted: "
                           f"{', '.join(sorted(allowed)) or 'none'}")

    return check


def create_app(settings: ServerSettings | None = None,
               remover: Remover | None = None) -> FastAPI:
    """Build the service. ``remover`` injects an already-built predictor (tests, embedding).

    Example:
        >>> app = create_app(ServerSettings(model="s3od-lite", max_batch=4))  # doctest: +SKIP
        >>> uvicorn.run(app, host="127.0.0.1", port=8000)  # doctest: +SKIP
    """
    settings = settings or ServerSettings.from_env()
    remover = remover if remover is not None else remover_for(settings)
    # A compiled model sees only a few batch sizes (padded up to them), compiled at start-up.
    sizes = batch_buckets(settings.max_batch) if settings.compile else ()
    batcher = MicroBatcher(padded(remover.predict_arrays, sizes) if sizes
                           else remover.predict_arrays, settings.max_batch,
                           settings.batch_window_ms / 1000.0)
    gate = Gate(settings.max_concurrency, settings.max_queue)
    # Decoding and encoding get one thread per admitted request, not a large shared pool: few
    # threads means few malloc arenas, which keeps RSS flat under sustained load.
    workers = ThreadPoolExecutor(settings.max_concurrency, thread_name_prefix="s3od-io")

    async def off_loop(fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(workers, fn, *args)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await batcher.start()
        try:
            if sizes:  # compile every batch shape now, not inside the first requests
                import numpy

                side = remover.image_size
                await batcher.warm_up(numpy.full((side, side, 3), 128, numpy.uint8), sizes)
            yield
        finally:
            await batcher.stop()
            workers.shutdown(wait=True, cancel_futures=True)

    app = FastAPI(
        title="s3od",
        summary="Background removal and salient-object masks over HTTP.",
        version=_version(),
        lifespan=lifespan,
        # "/v1/remove/" gets a JSON 404 naming the route, not a 307 with a non-JSON body that
        # many clients would follow with a GET or without the upload
        redirect_slashes=False,
    )
    app.state.settings = settings
    app.state.remover = remover
    app.state.batcher = batcher
    app.state.gate = gate

    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware, allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type"],
            expose_headers=["X-S3OD-Model", "X-S3OD-IoU", "X-S3OD-Best-Index",
                            "X-S3OD-Ambiguous"])

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, err: ApiError) -> JSONResponse:
        return _error_response(err.status, err.code, err.message, err.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, err: RequestValidationError) -> JSONResponse:
        return _error_response(422, "invalid_option", _validation_message(err))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, err: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(err.status_code, "http_error")
        message = str(err.detail)
        path = request.url.path
        if err.status_code == 404 and len(path) > 1 and path.endswith("/"):
            known = {getattr(r, "path", None) for r in app.routes}
            if path.rstrip("/") in known:
                message = f"no route {path}; the route is {path.rstrip('/')} (no trailing slash)"
        return _error_response(err.status_code, code, message, err.headers)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, err: Exception) -> JSONResponse:
        log.error("unexpected server error", exc_info=err)
        return _error_response(500, "internal", "internal server error (logged on the server)")

    def require_key(request: Request) -> None:
        if settings.api_key is None:
            return
        given = request.headers.get("x-api-key", "")
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if not given and scheme.lower() == "bearer":
            given = token.strip()
        expected = settings.api_key.get_secret_value()
        if not hmac.compare_digest(given.encode(), expected.encode()):
            raise ApiError(401, "unauthorized",
                           "missing or wrong API key (send 'Authorization: Bearer KEY' or "
                           "'X-API-Key: KEY')", {"WWW-Authenticate": "Bearer"})

    async def receive(request: Request) -> bytes:
        """The upload, within its own timeout; a slow client holds no inference slot."""
        try:
            return await asyncio.wait_for(_image_bytes(request, settings.max_upload_bytes),
                                          settings.upload_timeout_s)
        except asyncio.TimeoutError:
            raise ApiError(408, "upload_timeout", f"the upload took longer than "
                           f"{settings.upload_timeout_s:g} s") from None
        except ClientDisconnect:  # the client went away: nothing to answer, nothing to alarm
            log.info("client disconnected during the upload (%s)", _peer(request))
            raise ApiError(499, "client_closed_request",
                           "the client closed the connection during the upload") from None

    async def guarded(request: Request, work: Callable[[bytes], Awaitable[T]]) -> T:
        """Admission, upload, a slot, the work: one deadline from the request's arrival."""
        async with gate.admit():
            async def whole() -> T:
                data = await receive(request)
                async with gate.slot():
                    return await work(data)

            try:
                return await asyncio.wait_for(whole(), settings.request_timeout_s)
            except asyncio.TimeoutError:
                raise ApiError(504, "timeout", f"request took longer than "
                               f"{settings.request_timeout_s:g} s") from None

    async def predict(data: bytes, threshold: float) -> RemovalResult:
        rgb = await off_loop(decode_checked, data, settings.max_pixels)
        del data
        try:
            masks, ious = await batcher.submit(rgb)
        except InferenceOutOfMemory:
            raise ApiError(503, "out_of_memory", "the model ran out of memory on this batch; "
                           "retry shortly", {"Retry-After": str(OOM_RETRY_AFTER_S)}) from None
        # compositing a full-size cut-out is pixel work: never on the event loop
        return await off_loop(remover.result, rgb, masks, ious, threshold)

    @app.api_route("/healthz", methods=["GET", "HEAD"], tags=["service"])
    async def healthz() -> dict[str, Any]:
        """Liveness plus what is loaded and how batching has gone (no auth)."""
        stats = batcher.stats
        return {
            "status": "ok", "model": remover.model_name, "device": str(remover.device),
            "image_size": remover.image_size, "max_batch": settings.max_batch,
            "runtime": _runtime(remover),
            "in_flight": gate.admitted,
            "batches": {"count": stats.batches, "images": stats.images,
                        "largest": stats.largest, "failures": stats.failures,
                        "out_of_memory": stats.out_of_memory},
        }

    @app.get("/v1/models", tags=["models"], responses=_ERRORS,
             dependencies=[Depends(require_key), Depends(_only_known_params())])
    async def models() -> dict[str, Any]:
        """The registry, and which model this server has loaded."""
        from s3od.registry import list_models

        return {
            "loaded": {"name": remover.model_name, "source": remover.source,
                       "image_size": remover.image_size, "device": str(remover.device)},
            "models": [{"name": s.name, "architecture": s.architecture,
                        "image_size": s.image_size, "description": s.description,
                        "license": s.license, "weights": s.source} for s in list_models()],
        }

    remove_params = ("format", "mask_only", "bg_color", "crop", "threshold")

    @app.post(
        "/v1/remove", tags=["inference"], response_class=Response,
        dependencies=[Depends(require_key), Depends(_only_known_params(*remove_params))],
        openapi_extra={"requestBody": _IMAGE_BODY},
        responses={200: {"content": {"image/png": {}, "image/webp": {}},
                         "description": "The cut-out (or mask / composite)"}, **_ERRORS})
    async def remove(
        request: Request,
        format: Literal["png", "webp"] = Query("png", description="png or webp (lossless)."),
        mask_only: bool = Query(False, description="Return the soft mask (greyscale)."),
        bg_color: str | None = Query(None, description="Composite over a colour: name, "
                                     "#rrggbb or r,g,b."),
        crop: bool = Query(False, description="Crop to the object's bounding box."),
        threshold: float = Query(0.5, ge=0.0, le=1.0, description="Threshold used by crop."),
    ) -> Response:
        """Cut out the main object. Send the image as the raw body or multipart field ``file``.

        Options mirror ``s3od remove``; the response headers carry the best candidate's IoU.
        """
        color = None
        if bg_color is not None and mask_only:
            raise ApiError(422, "invalid_option", "bg_color and mask_only cannot be combined: "
                           "a mask has no background to colour")
        if bg_color is not None:
            try:
                color = compose.parse_color(bg_color)
            except ValueError as err:
                raise ApiError(422, "invalid_option", f"bg_color: {err}") from None

        async def work(data: bytes) -> Response:
            result = await predict(data, threshold)
            payload, headers = await off_loop(_render, result, mask_only, color, crop, format)
            return Response(payload, media_type=f"image/{format}",
                            headers={"X-S3OD-Model": remover.model_name, **headers})

        return await guarded(request, work)

    @app.post(
        "/v1/masks", tags=["inference"], response_model=MasksResponse,
        dependencies=[Depends(require_key), Depends(_only_known_params())],
        openapi_extra={"requestBody": _IMAGE_BODY}, responses=_ERRORS)
    async def masks(request: Request) -> MasksResponse:
        """Every candidate mask (8-bit PNG, base64) with its predicted IoU."""

        async def work(data: bytes) -> MasksResponse:
            result = await predict(data, 0.5)
            return await off_loop(_masks_body, result, remover.model_name)

        return await guarded(request, work)

    return app


async def _image_bytes(request: Request, limit: int) -> bytes:
    """The uploaded image: the raw body, or the ``file`` part of a multipart body."""
    kind = check_content_type(request.headers.get("content-type"))
    body = await read_body(request.stream(), request.headers.get("content-length"), limit)
    if kind != MULTIPART:
        return body
    return await _multipart_file(request, body)


async def _multipart_file(request: Request, body: bytes) -> bytes:
    """Parse an already size-checked multipart body and return its single image part."""
    sent = False

    async def replay() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=2, max_fields=8)
    except Exception as err:
        raise ApiError(400, "bad_multipart", f"cannot parse multipart body: "
                       f"{getattr(err, 'detail', err)}") from None
    try:
        parts = [(name, part) for name, part in form.multi_items() if name in FILE_FIELDS]
        if len(parts) > 1:
            raise ApiError(400, "bad_multipart", f"multipart body has {len(parts)} image parts "
                           f"({', '.join(repr(n) for n, _ in parts)}); send exactly one 'file'")
        for name, part in parts:
            if isinstance(part, str):
                raise ApiError(400, "bad_multipart", f"field {name!r} must be a file upload, "
                               "not text")
            part_type = part.content_type or "application/octet-stream"
            if part_type.startswith(MULTIPART):
                raise ApiError(415, "unsupported_media_type", "nested multipart is not accepted")
            check_content_type(part_type)
            return await part.read()
        raise ApiError(400, "bad_multipart", "multipart body has no 'file' part "
                       "(use -F file=@photo.jpg)")
    finally:
        await form.close()


def _render(result: RemovalResult, mask_only: bool, color: compose.Color | None, crop: bool,
            fmt: str) -> tuple[bytes, dict[str, str]]:
    """The CLI's output choices, encoded for the wire, and the result's headers (the ambiguity
    check compares full-size masks, so it runs here, off the event loop)."""
    image = result.render(mask_only=mask_only, background=color, crop=crop)
    if fmt == "webp":
        payload = encode_image(image, "WEBP", **WEBP_FAST)
    else:
        payload = encode_image(image, "PNG", **PNG_FAST)
    headers = {
        "X-S3OD-Best-Index": str(result.best_index),
        "X-S3OD-Ambiguous": str(result.ambiguous).lower(),
    }
    if result.scored:  # no header, rather than "nan", for models without an IoU head
        headers["X-S3OD-IoU"] = f"{float(result.all_ious[result.best_index]):.4f}"
    return payload, headers


def _masks_body(result: RemovalResult, model: str) -> MasksResponse:
    height, width = result.predicted_mask.shape
    candidates = [
        MaskCandidate(index=i, iou=round(float(iou), 6) if result.scored else None,
                      png_base64=base64.b64encode(_png(mask)).decode("ascii"))
        for i, (mask, iou) in enumerate(zip(result.all_masks, result.all_ious, strict=True))
    ]
    return MasksResponse(model=model, width=width, height=height, best_index=result.best_index,
                         ambiguous=result.ambiguous, masks=candidates)


def _png(mask: np.ndarray) -> bytes:
    return encode_image(compose.mask_image(mask), "PNG", **PNG_FAST)


def _peer(request: Request) -> str:
    client = request.client
    return f"{client.host}:{client.port}" if client else "unknown peer"


def _version() -> str:
    from s3od._version import __version__

    return __version__
