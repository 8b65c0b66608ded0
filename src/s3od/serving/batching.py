"""Micro-batching: requests that arrive close together share one forward pass.

The model runs on one dedicated thread, so the event loop never blocks on inference and torch
never sees two concurrent calls on the same module. With ``max_batch == 1`` images are still
queued and run one by one on that thread, just without waiting for company.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger(__name__)

Prediction = tuple[np.ndarray, np.ndarray]
PredictFn = Callable[[Sequence[np.ndarray]], list[Prediction]]


@dataclass
class BatchStats:
    """Counters exposed on ``/healthz``; ``largest`` shows whether batching ever happened."""

    batches: int = 0
    images: int = 0
    largest: int = 0
    failures: int = 0
    sizes: dict[int, int] = field(default_factory=dict)

    def record(self, size: int) -> None:
        self.batches += 1
        self.images += size
        self.largest = max(self.largest, size)
        self.sizes[size] = self.sizes.get(size, 0) + 1


@dataclass
class _Item:
    image: np.ndarray
    future: asyncio.Future[Prediction]


class MicroBatcher:
    """Collects up to ``max_batch`` images within ``window_s`` of the first, then predicts.

    Args:
        predict: ``BackgroundRemoval.predict_arrays`` or anything with its contract: a list of
            ``(H, W, 3)`` uint8 RGB arrays -> ``[(masks (N, H, W) float32, ious (N,))]``.
        max_batch: most images per call of ``predict``.
        window_s: how long the first image of a batch waits for others (0 = take what is queued).
    """

    def __init__(self, predict: PredictFn, max_batch: int = 1, window_s: float = 0.01) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.predict = predict
        self.max_batch = max_batch
        self.window_s = max(0.0, window_s)
        self.stats = BatchStats()
        self._queue: asyncio.Queue[_Item] | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="s3od-infer")

    async def start(self) -> None:
        """Start the collector on the running loop (call from the app's startup)."""
        if self._task is None:
            self._queue = asyncio.Queue()
            self._task = asyncio.get_running_loop().create_task(self._run(), name="s3od-batcher")

    async def stop(self) -> None:
        """Stop collecting, fail what is still queued, and release the inference thread."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        while self._queue is not None and not self._queue.empty():
            item = self._queue.get_nowait()
            if not item.future.done():
                item.future.set_exception(RuntimeError("server is shutting down"))
        self._executor.shutdown(wait=True, cancel_futures=True)

    async def submit(self, image: np.ndarray) -> Prediction:
        """Queue one RGB image and wait for its ``(masks, ious)``."""
        if self._queue is None:
            raise RuntimeError("MicroBatcher.start() was not called")
        future: asyncio.Future[Prediction] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Item(image, future))
        return await future

    async def _collect(self) -> list[_Item]:
        assert self._queue is not None
        items = [await self._queue.get()]
        deadline = time.monotonic() + self.window_s
        while len(items) < self.max_batch:
            remaining = deadline - time.monotonic()
            try:
                if remaining <= 0:
                    items.append(self._queue.get_nowait())
                else:
                    items.append(await asyncio.wait_for(self._queue.get(), remaining))
            except (asyncio.QueueEmpty, asyncio.TimeoutError):
                break
        # A request that timed out while queued no longer wants its answer.
        return [item for item in items if not item.future.done()]

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = await self._collect()
            if not items:
                continue
            try:
                outputs = await loop.run_in_executor(
                    self._executor, self.predict, [item.image for item in items])
                if len(outputs) != len(items):
                    raise RuntimeError(f"predict returned {len(outputs)} results for "
                                       f"{len(items)} images")
            except Exception as err:  # a failed batch fails its requests, never the server
                log.exception("inference failed for a batch of %d", len(items))
                self.stats.failures += 1
                for item in items:
                    if not item.future.done():
                        item.future.set_exception(err)
                continue
            self.stats.record(len(items))
            for item, output in zip(items, outputs, strict=True):
                if not item.future.done():
                    item.future.set_result(output)
