"""Micro-batching: requests that arrive close together share one forward pass.

The model runs on one dedicated thread, so the event loop never blocks on inference and torch
never sees two concurrent calls on the same module. With ``max_batch == 1`` images are still
queued and run one by one on that thread, just without waiting for company.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger(__name__)

Prediction = tuple[np.ndarray, np.ndarray]
PredictFn = Callable[[Sequence[np.ndarray]], list[Prediction]]


class InferenceOutOfMemory(RuntimeError):
    """The forward pass ran out of (GPU) memory. Carries no traceback of the failed pass, whose
    frames held the batch's tensors; a later retry can succeed."""


def _is_out_of_memory(err: BaseException) -> bool:
    if isinstance(err, MemoryError):
        return True
    torch = sys.modules.get("torch")  # never import torch for an ONNX-only server
    kinds = tuple(k for k in (getattr(torch, "OutOfMemoryError", None),
                              getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None))
                  if isinstance(k, type))
    return bool(kinds) and isinstance(err, kinds)


def _release_cached_memory() -> None:
    """Hand the CUDA caching allocator's free blocks back to the driver (no-op without CUDA)."""
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.cuda.empty_cache()


def batch_buckets(max_batch: int) -> tuple[int, ...]:
    """The batch sizes a compiled model runs at: powers of two below ``max_batch``, then it.

    ``torch.compile(dynamic=False)`` compiles once per input shape and gives up (eager) after
    8 of them, so the batches of a compiled server are padded up to these few sizes
    (:func:`padded`), all compiled before the first request (:meth:`MicroBatcher.warm_up`).
    """
    sizes, size = [], 1
    while size < max_batch:
        sizes.append(size)
        size *= 2
    return (*sizes, max_batch)


def padded(predict: PredictFn, sizes: Sequence[int]) -> PredictFn:
    """``predict`` on batches padded (the last image repeated) to the next of ``sizes``;
    the padding's results are dropped."""
    ordered = sorted(sizes)

    def run(images: Sequence[np.ndarray]) -> list[Prediction]:
        n = len(images)
        size = next((s for s in ordered if s >= n), n)
        outputs = predict([*images, *[images[-1]] * (size - n)])
        return list(outputs[:n])

    return run


@dataclass
class BatchStats:
    """Counters exposed on ``/healthz``; ``largest`` shows whether batching ever happened."""

    batches: int = 0
    images: int = 0
    largest: int = 0
    failures: int = 0
    out_of_memory: int = 0
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

    async def warm_up(self, image: np.ndarray, sizes: Sequence[int]) -> dict[int, float]:
        """Run one batch of each size on the inference thread; seconds per size.

        For ``torch.compile``: it compiles on the first batch of each shape (tens of seconds
        each on CPU), which must happen at start-up, not inside the request-timeout budget of
        the first requests. Call after :meth:`start`, before serving.
        """
        loop = asyncio.get_running_loop()
        seconds: dict[int, float] = {}
        for size in sizes:
            start = time.perf_counter()
            await loop.run_in_executor(self._executor, self.predict, [image] * size)
            seconds[size] = time.perf_counter() - start
            log.info("warm-up: batch of %d took %.1f s", size, seconds[size])
        return seconds

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
            failure: Exception | None = None
            try:
                outputs = await loop.run_in_executor(
                    self._executor, self.predict, [item.image for item in items])
                if len(outputs) != len(items):
                    raise RuntimeError(f"predict returned {len(outputs)} results for "
                                       f"{len(items)} images")
            except Exception as err:  # a failed batch fails its requests, never the server
                if _is_out_of_memory(err):
                    # The traceback's frames hold the batch's (GPU) tensors: drop it, so that
                    # the memory can be given back below, and keep no copy in the log.
                    err.__traceback__ = None
                    failure = InferenceOutOfMemory(
                        f"out of memory on a batch of {len(items)}: "
                        f"{str(err).splitlines()[0][:200] if str(err) else type(err).__name__}")
                else:
                    log.exception("inference failed for a batch of %d", len(items))
                    failure = err
            if failure is not None:
                self.stats.failures += 1
                if isinstance(failure, InferenceOutOfMemory):
                    self.stats.out_of_memory += 1
                    log.warning("%s; answering 503 and releasing cached memory", failure)
                    _release_cached_memory()
                for item in items:
                    if not item.future.done():
                        item.future.set_exception(failure)
                failure = None
                continue
            self.stats.record(len(items))
            for item, output in zip(items, outputs, strict=True):
                if not item.future.done():
                    item.future.set_result(output)
