"""The memory a sandbox grants its workers' decodes from one budget (`Limits.memory`): a
pregrant taken as a call starts where it is free, grants traded up for what a header announces,
served in the order they were asked for, and given back when the call ends."""

from __future__ import annotations

import asyncio
import functools
import threading
from collections import deque
from concurrent.futures import Executor

from pneumo_onnx.engine.runtime.sandbox.wire import Limits


class MemoryBudget:
    """What the calls of one sandbox hold of `limits.memory`; thread-safe."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._lock = threading.Condition()
        self._granted = 0
        self._queue: deque[object] = deque()  # grants waiting for room, in order

    def pregrant(self) -> int:
        """`Limits.pregrant` of the budget if it is free now and no grant waits, else
        nothing (no waiting)."""
        with self._lock:
            if self._queue or self._granted + self.limits.pregrant > self.limits.memory:
                return 0
            self._granted += self.limits.pregrant
            return self.limits.pregrant

    def grant(self, held: int, nbytes: int) -> int:
        """Trade the `held` pregrant for `nbytes`, waiting until they fit (alone they do).
        Grants are served in the order they were asked for: a large one is never passed by a
        stream of small ones."""
        turn = object()
        with self._lock:
            self._granted -= held
            self._queue.append(turn)
            self._lock.notify_all()
            self._lock.wait_for(
                lambda: self._queue[0] is turn and self._granted + nbytes <= self.limits.memory
            )
            self._queue.popleft()
            self._granted += nbytes
            self._lock.notify_all()
        return nbytes

    def grant_now(self, held: int, nbytes: int) -> int:
        """`grant` if `nbytes` fit the budget now and no grant waits (what is held then),
        else `held`, unchanged (never waits)."""
        with self._lock:
            if self._queue or self._granted - held + nbytes > self.limits.memory:
                return held
            self._granted += nbytes - held
            return nbytes

    async def granted_later(self, held: int, nbytes: int, executor: Executor | None) -> int:
        """`grant` on a thread of `executor`. Should the caller be cancelled meanwhile, the
        grant is given back as soon as the thread has it."""
        wait = asyncio.get_running_loop().run_in_executor(
            executor, functools.partial(self.grant, held, nbytes)
        )
        try:
            return await asyncio.shield(wait)
        except asyncio.CancelledError:
            wait.add_done_callback(self._give_back_later)
            raise

    def give_back(self, granted: int) -> None:
        """Memory a call held goes back to the budget (and to the grants waiting for it)."""
        if granted:
            with self._lock:
                self._granted -= granted
                self._lock.notify_all()

    def _give_back_later(self, grant: asyncio.Future[int]) -> None:
        if not grant.cancelled() and grant.exception() is None:
            self.give_back(grant.result())
