"""The server's decode stage: its worker processes (engine.runtime.sandbox), with whom the
event loop itself converses for the scoring path's images (`Sandbox.acall`: no thread per
image), a few threads for the blocking rest (pictures, large uploads' hashes, a grant that
waits for memory), admission to the workers (`admission`), and the rule that one request
decodes one image at a time while another worker exists, so that no single request (a job
chunk, a V2 batch of bombs) holds every decoder. Everything the scoring path decodes goes
through here: the server itself never parses an image."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np

from pneumo_onnx.engine.errors import ModelLoadError, Overloaded, PneumoError
from pneumo_onnx.engine.runtime import isolated
from pneumo_onnx.engine.runtime.decoders import client_name
from pneumo_onnx.engine.runtime.engine import Engine
from pneumo_onnx.engine.runtime.samples import sample_images
from pneumo_onnx.engine.runtime.sandbox import Limits, Sandbox, Task
from pneumo_onnx.engine.runtime.structure import peek_pixels
from pneumo_onnx.engine.serve.dataplane.admission import DecodeBudget, Ticket
from pneumo_onnx.engine.serve.dataplane.items import Item

T = TypeVar("T")
# What a decode worker of the server imports before its first task: the image decoders, and
# the parsers of large request bodies and archives.
SERVER_PRELOAD = (
    *isolated.PRELOAD,
    "pneumo_onnx.engine.serve.front.bodies",
    "pneumo_onnx.engine.serve.front.v2_wire",
    "pneumo_onnx.engine.serve.front.uploads",
    "pneumo_onnx.engine.serve.front.rpc.codec",
)


class Decoders:
    """The decode workers of one server process, started by `start` and stopped by `close`."""

    def __init__(self, workers: int, limits: Limits, budget: DecodeBudget) -> None:
        self.workers = workers
        self.limits = limits
        self.budget = budget
        self.per_request = max(1, workers - 1)
        self.sandbox: Sandbox | None = None
        # Threads for blocking work beside the loop: pictures and parses that wait on a
        # worker, large uploads' hashes, grants that wait for memory.
        self._threads = ThreadPoolExecutor(workers + 1, thread_name_prefix="pneumo-decode")

    def start(self) -> None:
        self.sandbox = Sandbox(self.workers, self.limits, SERVER_PRELOAD)

    async def check(self, engine: Engine) -> None:
        """One shipped sample through the workers: they started, and they work."""
        try:
            await self.run(isolated.tensor, self._live(), sample_images()[0], *_path(engine))
        except PneumoError as e:
            raise ModelLoadError(f"the image decoders do not work: {e.message}") from e

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`fn(*args, **kwargs)` on a decode thread (blocking work: hashing, drawing)."""
        call = functools.partial(fn, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self._threads, call)

    async def tensors(
        self, engine: Engine, items: Sequence[Item], todo: list[int], job: bool
    ) -> list[np.ndarray | BaseException]:
        """The model tensors of `items[todo]` (V2 tensors as they are), each one's error in
        its place; a refusal (400) or shedding (503) of the whole request is raised."""
        images = [i for i in todo if items[i].data is not None]
        slot = {i: k for k, i in enumerate(images)}
        peeked = [peek_pixels(items[i].data) for i in images]  # type: ignore[arg-type]
        ticket = self.budget.admit(peeked, self._live().queue_delay(), job)
        turns = asyncio.Semaphore(self.per_request) if len(images) > self.per_request else None
        try:
            tensors = await settled(
                [
                    self._tensor(engine, items[i], turns, ticket, slot[i])
                    if i in slot
                    else _ready(items[i].tensor)
                    for i in todo
                ]
            )
        finally:
            ticket.close()
        if ticket.refusal is not None:
            raise ticket.refusal
        overloaded = next((x for x in tensors if isinstance(x, Overloaded)), None)
        if overloaded is not None:
            raise overloaded
        return tensors

    async def picture(
        self, engine: Engine, data: bytes, side: int, name: str | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """An image's model tensor and its grey picture for people (long side >= `side`)."""
        label = client_name(name) if name else None
        return await self.run(
            isolated.picture, self._live(), data, *_path(engine), side, name=label
        )

    async def parse(self, size: int, task: Task, *args: Any) -> Any:
        """`task(ctx, *args)` in a worker, for a request body of `size` bytes too large to
        parse in the server; shed (503) while the workers are busy, as images are."""
        sandbox = self._live()
        delay = sandbox.queue_delay()
        if delay > self.budget.max_queue_delay:
            raise Overloaded(f"server busy: requests have waited {delay:.1f} s for a decoder")
        call = functools.partial(
            sandbox.call, task, *args, name="the request body", input_bytes=size
        )
        return await asyncio.get_running_loop().run_in_executor(None, call)

    def stream(self, task: Task, *args: Any, name: str, input_bytes: int) -> Any:
        """`Sandbox.stream` of the workers (from a thread: it blocks)."""
        return self._live().stream(task, *args, name=name, input_bytes=input_bytes)

    def close(self) -> None:
        self._threads.shutdown(wait=True)
        if self.sandbox is not None:
            self.sandbox.close()

    def _live(self) -> Sandbox:
        if self.sandbox is None:
            raise Overloaded("the server is starting: try again", retry_after=2)
        return self.sandbox

    async def _tensor(
        self,
        engine: Engine,
        item: Item,
        turns: asyncio.Semaphore | None,
        ticket: Ticket,
        index: int,
    ) -> np.ndarray:
        assert item.data is not None
        try:
            async with turns or contextlib.nullcontext():
                if ticket.refusal is not None:
                    raise ticket.refusal  # the request is refused: decode no more of it
                x, _ = await isolated.atensor(
                    self._live(),
                    item.data,
                    *_path(engine),
                    admit=functools.partial(ticket.header, index),
                    name=client_name(item.name) if item.name else None,
                    executor=self._threads,
                )
                return x
        finally:
            ticket.release(index)


async def settled(calls: Sequence[Awaitable[T]]) -> list[T | BaseException]:
    """Each call's result, or the exception it raised, in order, run together (`gather` with
    `return_exceptions`). One call (an upload) is awaited where it is: a task per image and
    the gathering future cost more on the event loop than the decode's own bookkeeping."""
    if len(calls) == 1:
        try:
            return [await calls[0]]
        except Exception as e:
            return [e]
    return await asyncio.gather(*calls, return_exceptions=True)


def _path(engine: Engine) -> tuple[Any, str]:
    """What a decode worker needs of the model: its contract and preprocessing path."""
    return engine.contract, engine.preprocessing


async def _ready(value: np.ndarray | None) -> np.ndarray:
    """A V2 tensor item: already the model's input, nothing to decode."""
    assert value is not None
    return value
