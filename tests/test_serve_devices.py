"""The server's GPU paths on CPU: a CUDA out-of-memory error injected into the forward pass,
and torch.compile's per-shape compilation moved to start-up (the batch sizes are recorded).
tests/test_gpu.py repeats both on a real GPU.
"""

from __future__ import annotations

import copy
import logging
import weakref

import numpy as np
import pytest
import torch

from .conftest import SAMPLES

pytest.importorskip("fastapi", reason="the [server] extra is not installed")
pytest.importorskip("httpx", reason="the [server] extra is not installed")
from fastapi.testclient import TestClient

from s3od.serving.app import OOM_RETRY_AFTER_S, create_app
from s3od.serving.batching import batch_buckets, padded
from s3od.serving.settings import ServerSettings

JPEG = {"Content-Type": "image/jpeg"}


def _with_predict(remover, predict):
    other = copy.copy(remover)
    other.predict_arrays = predict
    return other


def test_cuda_out_of_memory_is_503_with_retry_after_and_frees_the_batch(
        tiny_remover, monkeypatch, caplog):
    batch_refs: list[weakref.ref] = []
    released: list[bool] = []
    failing = [True]

    def predict_arrays(images):
        batch = torch.zeros(len(images), 3, 64, 64)  # stands in for the batch on the GPU
        batch_refs.append(weakref.ref(batch))
        if failing.pop() if failing else False:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return tiny_remover.predict_arrays(images)

    def empty_cache() -> None:  # the batch's tensors must be gone when the cache is released
        released.append(batch_refs[-1]() is None)

    monkeypatch.setattr(torch.cuda, "empty_cache", empty_cache)
    app = create_app(ServerSettings(), _with_predict(tiny_remover, predict_arrays))
    data = (SAMPLES / "coffee.jpg").read_bytes()
    with caplog.at_level(logging.INFO), TestClient(app) as client:
        r = client.post("/v1/remove", content=data, headers=JPEG)
        assert r.status_code == 503, r.text
        assert r.headers["retry-after"] == str(OOM_RETRY_AFTER_S)
        assert r.json()["error"] == "out_of_memory" and "Traceback" not in r.text
        assert released == [True], "cache not released, or released while the batch lived"
        again = client.post("/v1/remove", content=data, headers=JPEG)
        assert again.status_code == 200  # the server recovers
        health = client.get("/healthz").json()["batches"]
        assert health["out_of_memory"] == 1 and health["failures"] == 1
    assert not [rec for rec in caplog.records if rec.exc_info], "a traceback was kept in the log"
    assert any("out of memory" in rec.getMessage() for rec in caplog.records)


def test_other_inference_errors_stay_500(tiny_remover):
    def predict_arrays(images):
        raise RuntimeError("a bug")

    app = create_app(ServerSettings(), _with_predict(tiny_remover, predict_arrays))
    with TestClient(app, raise_server_exceptions=False) as client:
        r = client.post("/v1/masks", content=(SAMPLES / "cat.jpg").read_bytes(), headers=JPEG)
        assert r.status_code == 500 and r.json()["error"] == "internal"


@pytest.mark.parametrize("max_batch,expected", [
    (1, (1,)), (2, (1, 2)), (4, (1, 2, 4)), (6, (1, 2, 4, 6)), (8, (1, 2, 4, 8)),
    (64, (1, 2, 4, 8, 16, 32, 64))])
def test_compiled_batch_sizes_stay_under_the_recompile_limit(max_batch, expected):
    assert batch_buckets(max_batch) == expected
    assert len(expected) <= 8  # torch.compile falls back to eager after 8 shapes


def test_padded_batches_drop_the_padding():
    seen = []

    def predict(images):
        seen.append(len(images))
        return [(np.full(1, i), np.zeros(1)) for i in range(len(images))]

    run = padded(predict, (1, 2, 4, 8))
    out = run([np.zeros((2, 2, 3))] * 3)
    assert seen == [4] and [int(m[0]) for m, _ in out] == [0, 1, 2]
    assert len(run([np.zeros((2, 2, 3))] * 8)) == 8 and seen[-1] == 8


def test_compile_warms_up_every_batch_size_before_serving(tiny_remover):
    sizes: list[int] = []

    def predict_arrays(images):
        sizes.append(len(images))
        return tiny_remover.predict_arrays(images)

    settings = ServerSettings(compile=True, max_batch=4, max_concurrency=4)
    app = create_app(settings, _with_predict(tiny_remover, predict_arrays))
    assert sizes == []
    with TestClient(app) as client:
        assert sizes == [1, 2, 4], "the lifespan hook must run each compiled shape once"
        r = client.post("/v1/remove", content=(SAMPLES / "cat.jpg").read_bytes(), headers=JPEG)
        assert r.status_code == 200
    assert sizes == [1, 2, 4, 1]


def test_without_compile_there_is_no_warm_up_or_padding(tiny_remover):
    sizes: list[int] = []

    def predict_arrays(images):
        sizes.append(len(images))
        return tiny_remover.predict_arrays(images)

    app = create_app(ServerSettings(max_batch=4, max_concurrency=4),
                     _with_predict(tiny_remover, predict_arrays))
    with TestClient(app):
        assert sizes == []
