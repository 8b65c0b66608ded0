"""`s3od serve` over real HTTP: a uvicorn server on 127.0.0.1, a real client, real images."""

from __future__ import annotations

import base64
import io
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np
import pytest
from PIL import Image

from .conftest import SAMPLES, needs_shared, shared_pairs
from .hostile_corpus import png_bomb

pytest.importorskip("fastapi", reason="the [server] extra is not installed")
httpx = pytest.importorskip("httpx", reason="the [server] extra is not installed")
uvicorn = pytest.importorskip("uvicorn", reason="the [server] extra is not installed")

from s3od.serving.app import create_app  # noqa: E402
from s3od.serving.settings import ServerSettings  # noqa: E402

CAT = SAMPLES / "cat.jpg"
COFFEE = SAMPLES / "coffee.jpg"
UPLOAD_LIMIT = 400_000
PIXEL_LIMIT = 2_000_000


@contextmanager
def serving(app) -> Iterator[str]:
    """Run ``app`` under uvicorn on a free loopback port in a thread; yield its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()


@pytest.fixture(scope="module")
def base_url(tiny_remover) -> Iterator[str]:
    settings = ServerSettings(max_batch=4, batch_window_ms=300, max_upload_bytes=UPLOAD_LIMIT,
                              max_pixels=PIXEL_LIMIT)
    with serving(create_app(settings, tiny_remover)) as url:
        yield url


@pytest.fixture(scope="module")
def client(base_url) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=60) as c:
        yield c


def decode(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def reference_rgb(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def best_mask_alpha(client: httpx.Client, data: bytes) -> np.ndarray:
    r = client.post("/v1/masks", content=data, headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 200, r.text
    body = r.json()
    mask = body["masks"][body["best_index"]]
    return np.asarray(decode(base64.b64decode(mask["png_base64"])))


# --------------------------------------------------------------------------- happy paths


def test_healthz_and_models(client, tiny_remover):
    health = client.get("/healthz")
    assert health.status_code == 200
    assert health.json()["status"] == "ok"
    assert health.json()["image_size"] == tiny_remover.image_size
    assert health.json()["runtime"] == tiny_remover.runtime.describe()
    models = client.get("/v1/models").json()
    names = [m["name"] for m in models["models"]]
    assert "s3od" in names and "s3od-lite" in names
    assert models["loaded"]["name"] == tiny_remover.model_name
    docs = client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    spec = client.get("/openapi.json").json()
    assert {"/v1/remove", "/v1/masks", "/v1/models", "/healthz"} <= set(spec["paths"])


def test_remove_multipart_keeps_pixels_and_uses_best_mask(client):
    data = CAT.read_bytes()
    r = client.post("/v1/remove", files={"file": ("cat.jpg", data, "image/jpeg")})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    out = decode(r.content)
    expected = reference_rgb(CAT)
    assert out.mode == "RGBA" and out.size == (expected.shape[1], expected.shape[0])
    rgba = np.asarray(out)
    np.testing.assert_array_equal(rgba[..., :3], expected)
    np.testing.assert_array_equal(rgba[..., 3], best_mask_alpha(client, data))
    assert 0.0 <= float(r.headers["x-s3od-iou"]) <= 1.0
    assert r.headers["x-s3od-ambiguous"] in ("true", "false")


def test_remove_raw_body_options(client):
    data = COFFEE.read_bytes()
    headers = {"Content-Type": "image/jpeg"}
    alpha = best_mask_alpha(client, data)

    mask = client.post("/v1/remove", content=data, headers=headers, params={"mask_only": True})
    assert mask.status_code == 200
    np.testing.assert_array_equal(np.asarray(decode(mask.content)), alpha)

    white = client.post("/v1/remove", content=data, headers=headers,
                        params={"bg_color": "white"})
    pixels = np.asarray(decode(white.content))
    assert pixels.shape[2] == 3
    assert (pixels[alpha == 0] == 255).all()

    webp = client.post("/v1/remove", content=data, headers=headers, params={"format": "webp"})
    assert webp.headers["content-type"] == "image/webp" and webp.content[8:12] == b"WEBP"
    np.testing.assert_array_equal(np.asarray(decode(webp.content))[..., 3], alpha)

    cropped = client.post("/v1/remove", content=data, headers=headers, params={"crop": True})
    w, h = decode(cropped.content).size
    ys, xs = np.nonzero(alpha >= 128)
    if len(ys):  # the crop covers the confident object and no more than the uncertain one
        loose_y, loose_x = np.nonzero(alpha >= 127)
        assert np.ptp(xs) + 1 <= w <= np.ptp(loose_x) + 1
        assert np.ptp(ys) + 1 <= h <= np.ptp(loose_y) + 1


@needs_shared
@pytest.mark.shared
def test_real_images_masks_endpoint(client):
    pairs = shared_pairs("davis2016", 2) + shared_pairs("sod-bsds300", 2)
    for image_path, _ in pairs:
        data = image_path.read_bytes()
        r = client.post("/v1/masks", files={"file": (image_path.name, data, "image/jpeg")})
        assert r.status_code == 200, r.text
        body = r.json()
        width, height = Image.open(image_path).size
        assert (body["width"], body["height"]) == (width, height)
        ious = [m["iou"] for m in body["masks"]]
        assert len(ious) >= 2 and all(0.0 <= v <= 1.0 for v in ious)
        assert body["best_index"] == int(np.argmax(ious))
        for m in body["masks"]:
            assert decode(base64.b64decode(m["png_base64"])).size == (width, height)


# --------------------------------------------------------------------------- refusals


def _multipart_text_part() -> dict:
    return {"files": {"file": ("notes.txt", b"hello", "text/plain")}}


def _ppm() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 20, 30)).save(buf, format="PPM")
    return buf.getvalue()


JPEG = {"Content-Type": "image/jpeg"}
ERROR_CASES = {
    "garbage": (400, {"content": b"not an image at all" * 10, "headers": JPEG}),
    "empty": (400, {"content": b"", "headers": JPEG}),
    "truncated-jpeg": (400, {"content": CAT.read_bytes()[:4000], "headers": JPEG}),
    "multipart-without-file": (400, {"files": {"other": ("a.jpg", b"x", "image/jpeg")}}),
    "declared-too-large": (413, {"content": os.urandom(UPLOAD_LIMIT + 1), "headers": JPEG}),
    "chunked-too-large": (413, {"content": iter([b"\xff" * 100_000] * 5), "headers": JPEG}),
    "too-many-pixels": (413, {"content": png_bytes(Image.new("L", (2000, 1001))),
                              "headers": {"Content-Type": "image/png"}}),
    "text-content-type": (415, {"content": b"hello", "headers": {"Content-Type": "text/plain"}}),
    "form-urlencoded": (415, {"content": CAT.read_bytes(),
                              "headers": {"Content-Type": "application/x-www-form-urlencoded"}}),
    "multipart-text-part": (415, _multipart_text_part()),
    "ppm-format": (415, {"content": _ppm(), "headers": {"Content-Type": "image/x-portable"}}),
    "bad-format": (422, {"content": b"x", "headers": JPEG, "params": {"format": "gif"}}),
    "bad-threshold": (422, {"content": b"x", "headers": JPEG, "params": {"threshold": 1.5}}),
    "bad-colour": (422, {"content": b"x", "headers": JPEG, "params": {"bg_color": "nocolour"}}),
    "unknown-option": (422, {"content": b"x", "headers": JPEG, "params": {"bgcolor": "red"}}),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_refusals_are_json_4xx(client, case):
    status, request = ERROR_CASES[case]
    r = client.post("/v1/remove", **request)
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error", "message"} and body["message"]
    assert client.get("/healthz").status_code == 200


def test_unknown_route_and_method_are_json(client):
    assert client.get("/v2/nothing").json()["error"] == "not_found"
    r = client.get("/v1/remove")
    assert r.status_code == 405 and r.json()["error"] == "method_not_allowed"


def test_decompression_bomb_refused_before_decode(client):
    import psutil

    bomb = png_bomb()
    assert len(bomb) < UPLOAD_LIMIT  # small on the wire: only the header gives it away
    rss_before = psutil.Process().memory_info().rss
    for path in ("/v1/remove", "/v1/masks"):
        r = client.post(path, content=bomb, headers={"Content-Type": "image/png"})
        assert r.status_code == 413, r.text
        assert "30000x30000" in r.json()["message"]
    # decoding it would take at least 900 MB (2.7 GB as RGB); the server never tried
    assert psutil.Process().memory_info().rss - rss_before < 300 * 2**20
    assert client.get("/healthz").status_code == 200


# --------------------------------------------------------------------------- concurrency


def _variants() -> list[tuple[str, bytes]]:
    """Eight distinct images of different sizes, so a mix-up between requests shows."""
    out = []
    for path in (CAT, COFFEE, SAMPLES / "astronaut.jpg"):
        img = Image.open(path).convert("RGB")
        for scale in (1.0, 0.6, 0.35):
            size = (max(8, int(img.width * scale)), max(8, int(img.height * scale)))
            buf = io.BytesIO()
            img.resize(size).save(buf, format="JPEG", quality=90)
            out.append((f"{path.stem}@{scale}", buf.getvalue()))
    return out[:8]


def test_concurrent_requests_are_batched_without_mixups(base_url, tiny_remover):
    variants = _variants()

    def send(item: tuple[str, bytes]) -> tuple[str, httpx.Response]:
        with httpx.Client(base_url=base_url, timeout=120) as c:
            return item[0], c.post("/v1/remove", content=item[1],
                                   headers={"Content-Type": "image/jpeg"})

    with ThreadPoolExecutor(len(variants)) as pool:
        answers = dict(pool.map(send, variants))
    for name, data in variants:
        r = answers[name]
        assert r.status_code == 200, (name, r.text)
        got = np.asarray(decode(r.content))
        alone = np.asarray(tiny_remover.remove_background(data).rgba_image)
        assert got.shape == alone.shape, name
        np.testing.assert_array_equal(got[..., :3], alone[..., :3])
        # batched vs single forward passes may round a few alphas differently
        diff = np.abs(got[..., 3].astype(int) - alone[..., 3].astype(int))
        assert diff.max() <= 2 and diff.mean() < 0.05, name
    batches = httpx.get(f"{base_url}/healthz").json()["batches"]
    assert batches["largest"] > 1
    assert batches["failures"] == 0


def _slow(remover, seconds: float):
    """The same predictor, but each forward pass takes at least ``seconds``."""
    import copy

    slow = copy.copy(remover)
    inner = remover.predict_arrays

    def predict_arrays(images):
        time.sleep(seconds)
        return inner(images)

    slow.predict_arrays = predict_arrays
    return slow


def test_busy_server_answers_503_and_recovers(tiny_remover):
    settings = ServerSettings(max_concurrency=1, max_queue=0)
    data = COFFEE.read_bytes()
    with serving(create_app(settings, _slow(tiny_remover, 1.0))) as url:
        def send(_: int) -> httpx.Response:
            return httpx.post(f"{url}/v1/remove", content=data, timeout=60,
                              headers={"Content-Type": "image/jpeg"})

        with ThreadPoolExecutor(3) as pool:
            codes = sorted(r.status_code for r in pool.map(send, range(3)))
        assert codes[0] == 200 and codes[-1] == 503, codes
        assert send(0).status_code == 200


def test_request_timeout_is_504(tiny_remover):
    settings = ServerSettings(request_timeout_s=0.3)
    with serving(create_app(settings, _slow(tiny_remover, 1.0))) as url:
        r = httpx.post(f"{url}/v1/masks", content=COFFEE.read_bytes(), timeout=60,
                       headers={"Content-Type": "image/jpeg"})
        assert r.status_code == 504 and r.json()["error"] == "timeout"
        assert httpx.get(f"{url}/healthz").status_code == 200


# --------------------------------------------------------------------------- auth and CORS


def test_api_key_and_cors(tiny_remover):
    settings = ServerSettings(api_key="s3cret-key", cors_origins="https://shop.example")
    data = CAT.read_bytes()
    with serving(create_app(settings, tiny_remover)) as url, httpx.Client(base_url=url) as c:
        assert c.get("/healthz").status_code == 200
        for headers in ({}, {"X-API-Key": "wrong"}, {"Authorization": "Bearer s3cret"},
                        {"Authorization": "Basic s3cret-key"}):
            r = c.post("/v1/remove", content=data, headers={**JPEG, **headers})
            assert r.status_code == 401, headers
            assert r.json()["error"] == "unauthorized"
            assert r.headers["www-authenticate"] == "Bearer"
        assert c.get("/v1/models").status_code == 401
        ok = c.post("/v1/remove", content=data,
                    headers={**JPEG, "Authorization": "Bearer s3cret-key"})
        assert ok.status_code == 200
        ok = c.post("/v1/masks", content=data, headers={**JPEG, "X-API-Key": "s3cret-key"})
        assert ok.status_code == 200
        allowed = c.get("/healthz", headers={"Origin": "https://shop.example"})
        assert allowed.headers["access-control-allow-origin"] == "https://shop.example"
        other = c.get("/healthz", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers


def test_cors_is_off_by_default(client):
    r = client.get("/healthz", headers={"Origin": "https://shop.example"})
    assert "access-control-allow-origin" not in r.headers
    pre = client.options("/v1/remove", headers={"Origin": "https://shop.example",
                                                "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in pre.headers


# --------------------------------------------------------------------------- settings and CLI


def test_settings_from_env():
    from pydantic import ValidationError

    env = {"S3OD_MAX_BATCH": "4", "S3OD_CORS_ORIGINS": "https://a.example, https://b.example",
           "S3OD_API_KEY": "", "S3OD_MAX_PIXELS": "1000"}
    s = ServerSettings.from_env(env, max_pixels=5000)
    assert s.max_batch == 4 and s.max_pixels == 5000 and s.api_key is None
    assert s.precision == "auto" and s.compile is False
    assert ServerSettings.from_env({"S3OD_PRECISION": "fp32"}).precision == "fp32"
    with pytest.raises(ValidationError, match="precision"):
        ServerSettings.from_env({"S3OD_PRECISION": "int4"})
    assert s.cors_origins == ("https://a.example", "https://b.example")
    with pytest.raises(ValidationError):
        ServerSettings.from_env({"S3OD_MAX_BATCH": "0"})
    with pytest.raises(ValidationError):
        ServerSettings.from_env({"S3OD_MAX_BACTH": "2"}, max_bacth=2)
    with pytest.raises(ValidationError, match="max_concurrency"):
        ServerSettings(max_batch=8, max_concurrency=4)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_serve_process(tiny_lite_checkpoint):
    port = _free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "S3OD_API_KEY": "k"}
    cmd = [sys.executable, "-m", "s3od.cli", "serve", "--model", str(tiny_lite_checkpoint),
           "--image-size", "128", "--port", str(port), "--max-batch", "2", "--threads", "1",
           "--precision", "fp32"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stderr.read().decode()
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server did not come up"
            time.sleep(0.2)
        r = httpx.post(f"{url}/v1/remove", files={"file": ("cat.jpg", CAT.read_bytes())},
                       headers={"X-API-Key": "k"}, timeout=60)
        assert r.status_code == 200 and decode(r.content).mode == "RGBA"
        health = httpx.get(f"{url}/healthz").json()
        assert health["max_batch"] == 2 and health["image_size"] == 128
        assert health["runtime"].startswith("fp32")
    finally:
        proc.terminate()
        proc.wait(20)


def test_cli_serve_bad_model_fails_cleanly(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "s3od.cli", "serve", "--model",
                           str(tmp_path / "missing.safetensors")], capture_output=True,
                          env=env, timeout=120)
    err = proc.stderr.decode()
    assert proc.returncode != 0 and "cannot resolve model" in err and "Traceback" not in err


def test_cli_serve_bad_precision_fails_cleanly(tiny_lite_checkpoint):
    proc = subprocess.run([sys.executable, "-m", "s3od.cli", "serve", "--model",
                           str(tiny_lite_checkpoint), "--precision", "int4"],
                          capture_output=True, env={**os.environ, "HF_HUB_OFFLINE": "1"},
                          timeout=120)
    err = proc.stderr.decode()
    assert proc.returncode != 0 and "precision" in err and "Traceback" not in err
