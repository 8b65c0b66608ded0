"""MicroBatcher and Gate on their own: batch sizes, order, failures, cancellation, admission."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from s3od.serving.batching import MicroBatcher
from s3od.serving.limits import ApiError, Gate


def tagged(value: int) -> np.ndarray:
    """A 2x2 image whose pixels all hold ``value``, so answers can be traced to requests."""
    return np.full((2, 2, 3), value, np.uint8)


class Recorder:
    """A fake ``predict_arrays`` that remembers batch sizes and echoes each image's tag."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.sizes: list[int] = []
        self.threads: set[str] = set()
        self.fail_on = fail_on

    def __call__(self, images):
        self.sizes.append(len(images))
        self.threads.add(threading.current_thread().name)
        tags = [int(img[0, 0, 0]) for img in images]
        if self.fail_on in tags:
            raise RuntimeError("boom")
        return [(np.full((1, 2, 2), t, np.float32), np.array([t], np.float32)) for t in tags]


def run(coro):
    return asyncio.run(coro)


def test_batches_fill_up_and_answers_reach_their_requests():
    recorder = Recorder()

    async def main():
        batcher = MicroBatcher(recorder, max_batch=3, window_s=0.5)
        await batcher.start()
        try:
            answers = await asyncio.gather(*(batcher.submit(tagged(v)) for v in range(7)))
        finally:
            await batcher.stop()
        return answers, batcher.stats

    answers, stats = run(main())
    assert [int(ious[0]) for _, ious in answers] == list(range(7))
    assert recorder.sizes == [3, 3, 1]
    assert stats.batches == 3 and stats.images == 7 and stats.largest == 3
    assert all(name.startswith("s3od-infer") for name in recorder.threads)


def test_max_batch_one_never_groups():
    recorder = Recorder()

    async def main():
        batcher = MicroBatcher(recorder, max_batch=1, window_s=1.0)
        await batcher.start()
        try:
            await asyncio.gather(*(batcher.submit(tagged(v)) for v in range(4)))
        finally:
            await batcher.stop()

    run(main())
    assert recorder.sizes == [1, 1, 1, 1]


def test_failed_batch_fails_its_requests_only():
    recorder = Recorder(fail_on=1)

    async def main():
        batcher = MicroBatcher(recorder, max_batch=2, window_s=0.5)
        await batcher.start()
        try:
            first = await asyncio.gather(batcher.submit(tagged(0)), batcher.submit(tagged(1)),
                                         return_exceptions=True)
            later = await batcher.submit(tagged(5))
        finally:
            await batcher.stop()
        return first, later, batcher.stats

    first, later, stats = run(main())
    assert all(isinstance(r, RuntimeError) for r in first)
    assert int(later[1][0]) == 5
    assert stats.failures == 1


def test_request_that_gave_up_is_skipped():
    recorder = Recorder()

    async def main():
        batcher = MicroBatcher(recorder, max_batch=4, window_s=0.3)
        await batcher.start()
        try:
            gave_up = asyncio.ensure_future(batcher.submit(tagged(9)))
            await asyncio.sleep(0.05)
            gave_up.cancel()
            answer = await batcher.submit(tagged(3))
        finally:
            await batcher.stop()
        return answer

    answer = run(main())
    assert int(answer[1][0]) == 3
    assert recorder.sizes == [1]


def test_submit_before_start_is_an_error():
    with pytest.raises(RuntimeError, match="start"):
        run(MicroBatcher(Recorder()).submit(tagged(0)))
    with pytest.raises(ValueError):
        MicroBatcher(Recorder(), max_batch=0)


def test_gate_admits_slots_plus_queue_then_refuses():
    async def main():
        gate = Gate(slots=1, queue=1)
        release = asyncio.Event()
        inside = []

        async def hold(tag):
            async with gate.enter():
                inside.append(tag)
                await release.wait()

        first = asyncio.ensure_future(hold("a"))
        second = asyncio.ensure_future(hold("b"))
        await asyncio.sleep(0.05)
        with pytest.raises(ApiError) as refused:
            async with gate.enter():
                pass
        waiting = list(inside)
        release.set()
        await asyncio.gather(first, second)
        return refused.value, waiting, inside, gate.admitted

    refused, waiting, inside, admitted = run(main())
    assert refused.status == 503 and refused.headers.get("Retry-After")
    assert waiting == ["a"]  # the second one queued instead of running alongside
    assert inside == ["a", "b"] and admitted == 0
