"""Dynamic batching: concurrent requests wait a few milliseconds in a bounded queue and are
scored together, so the model runs on batches of N instead of N batches of one.

The queue is bounded on purpose: when it is full, `submit` raises `Overloaded` at once and the
server answers 503 with Retry-After instead of letting latency grow without limit. Inference
runs on one dedicated thread (onnxruntime uses its own intra-op threads), never on the event
loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from pneumo_onnx.engine.errors import Overloaded
from pneumo_onnx.engine.runtime.awaiting import until


class Scorer(Protocol):
    def scores(self, x: np.ndarray) -> np.ndarray: ...


@dataclass
class _Item:
    scorer: Scorer
    tensor: np.ndarray
    future: asyncio.Future[float]
    queued_at: float = field(default_factory=time.perf_counter)


# Called once per batch with (batch size, queue waits in seconds): metrics hook.
BatchObserver = Callable[[int, list[float]], None]


class Batcher:
    """Collects single-image tensors into batches of at most `max_batch`, waiting at most
    `max_delay` seconds after the first item of a batch. Items for different models (after a
    hot reload) are never mixed in one batch."""

    def __init__(
        self,
        max_batch: int,
        max_delay: float,
        max_queue: int,
        observer: BatchObserver | None = None,
    ) -> None:
        if max_batch < 1 or max_queue < 1 or max_delay < 0:
            raise ValueError("max_batch and max_queue must be >= 1, max_delay >= 0")
        self.max_batch = max_batch
        self.max_delay = max_delay
        self.max_queue = max_queue
        self._observer = observer
        self._queue: asyncio.Queue[_Item] | None = None
        self._task: asyncio.Task[None] | None = None
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="pneumo-infer")
        self._closing = False
        self._held: _Item | None = None  # first item of the next batch (other model)

    @property
    def depth(self) -> int:
        """Items waiting to be scored."""
        return self._queue.qsize() if self._queue else 0

    def start(self) -> None:
        """Start the batching task on the running event loop."""
        self._queue = asyncio.Queue(self.max_queue)
        self._task = asyncio.get_running_loop().create_task(self._run(), name="pneumo-batcher")

    async def submit(self, scorer: Scorer, tensor: np.ndarray) -> float:
        """Queue one preprocessed image and wait for its score."""
        if self._queue is None or self._closing:
            raise Overloaded("the server is shutting down", retry_after=5)
        item = _Item(scorer, tensor, asyncio.get_running_loop().create_future())
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            raise Overloaded(
                f"server busy: {self.max_queue} images already waiting to be scored"
            ) from None
        return await item.future

    async def submit_all(self, scorer: Scorer, tensors: Sequence[np.ndarray]) -> list[float]:
        """`submit` each tensor, together: their scores in order (one is awaited where it is,
        without a task of its own)."""
        if len(tensors) == 1:
            return [await self.submit(scorer, tensors[0])]
        return list(await asyncio.gather(*(self.submit(scorer, x) for x in tensors)))

    async def close(self) -> None:
        """Refuse new items, score every queued one, then stop."""
        self._closing = True
        if self._queue is not None and self._task is not None:
            await self._queue.join()
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._pool.shutdown(wait=True)

    async def _run(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            started = time.perf_counter()
            try:
                scores = await loop.run_in_executor(
                    self._pool, batch[0].scorer.scores, np.stack([i.tensor for i in batch])
                )
            except Exception as e:  # e.g. InferenceError: every waiter gets it, the loop goes on
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(e)
            else:
                for item, score in zip(batch, scores, strict=True):
                    if not item.future.done():  # the client may have gone away
                        item.future.set_result(float(score))
            finally:
                for _ in batch:
                    self._queue.task_done()
            if self._observer is not None:
                self._observer(len(batch), [started - i.queued_at for i in batch])

    async def _collect(self) -> list[_Item]:
        assert self._queue is not None
        first = self._held or await self._queue.get()
        self._held = None
        batch = [first]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_delay
        while len(batch) < self.max_batch:
            try:
                item = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                if loop.time() >= deadline:
                    break
                try:
                    item = await until(deadline, self._queue.get)
                except TimeoutError:
                    break
            if item.scorer is not first.scorer:
                self._held = item
                break
            batch.append(item)
        return batch
