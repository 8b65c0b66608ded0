"""`s3od serve` against hostile inputs and hostile clients (issue 14): only 4xx for bad input,
never a 500, slow or vanishing clients cost nobody else, and the server stays healthy."""

from __future__ import annotations

import collections
from collections.abc import Iterator

import pytest

from .hostile_corpus import INVALID, OK, TOO_LARGE, TYPED, UNSUPPORTED, corpus, fuzz_cases

pytest.importorskip("fastapi", reason="the [server] extra is not installed")
httpx = pytest.importorskip("httpx", reason="the [server] extra is not installed")

from s3od.serving.app import create_app  # noqa: E402
from s3od.serving.settings import ServerSettings  # noqa: E402

from .test_serve_http import serving  # noqa: E402

STATUS = {OK: {200}, INVALID: {400}, UNSUPPORTED: {415}, TOO_LARGE: {413}, TYPED: {200, 400}}


@pytest.fixture(scope="module")
def hostile_client(tiny_remover) -> Iterator[httpx.Client]:
    settings = ServerSettings(max_concurrency=2, max_upload_bytes=1_000_000)
    with serving(create_app(settings, tiny_remover)) as url, httpx.Client(
            base_url=url, timeout=60) as client:
        yield client


def _post(client: httpx.Client, data: bytes) -> httpx.Response:
    return client.post("/v1/remove", content=data,
                       headers={"Content-Type": "application/octet-stream"})


def test_corpus_over_http_gets_the_right_status(hostile_client):
    wrong = []
    for case in corpus():
        r = _post(hostile_client, case.data)
        if r.status_code not in STATUS[case.expect]:
            wrong.append((case.name, r.status_code, r.text[:120]))
        elif r.status_code != 200:
            assert set(r.json()) == {"error", "message"}, case.name
    assert not wrong
    assert hostile_client.get("/healthz").json()["batches"]["failures"] == 0


@pytest.mark.parametrize("count", [150, pytest.param(400, marks=pytest.mark.slow)])
def test_seeded_fuzz_over_http_is_4xx_or_200_never_500(hostile_client, count):
    """The load_image fuzz cases as request bodies (~55 ms each on a busy 2-core CPU)."""
    statuses: collections.Counter[int] = collections.Counter()
    for name, data in fuzz_cases(count):
        r = _post(hostile_client, data)
        assert r.status_code < 500, (name, r.status_code, r.text)
        statuses[r.status_code] += 1
    assert statuses[200] > count // 10 and statuses[400] > count // 4
    health = hostile_client.get("/healthz")
    assert health.status_code == 200 and health.json()["in_flight"] == 0
