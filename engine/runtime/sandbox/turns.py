"""Who gets a sandbox's next free worker: its idle workers, and the calls waiting for one (a
thread's, or a coroutine's on its event loop), served in the order they came, so that neither
kind of caller can starve the other."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, TypeAlias

from pneumo_onnx.engine.errors import Overloaded
from pneumo_onnx.engine.runtime.sandbox.process import START_SECONDS, WorkerProcess

# A call waiting for a worker: a thread's, or a coroutine's
Waiting: TypeAlias = "concurrent.futures.Future[WorkerProcess] | asyncio.Future[WorkerProcess]"
Loop: TypeAlias = "asyncio.AbstractEventLoop | None"  # the coroutine's loop; None: a thread


class Turns:
    """The idle workers and the waiting calls of one sandbox. `lost(worker)` is told of a
    worker found dead while idle (the sandbox replaces it)."""

    def __init__(self, lost: Callable[[WorkerProcess], None]) -> None:
        self._lock = threading.RLock()
        self._idle: deque[WorkerProcess] = deque()  # only while no call waits
        self._waiters: deque[tuple[Loop, Waiting]] = deque()
        self._waiting: dict[int, float] = {}  # each waiting call -> since when
        self._lost = lost
        self.closed = False

    def checkout(self) -> WorkerProcess:
        """A worker for this thread: an idle one, or the next one free."""
        while True:
            with self._lock:
                worker = self._take_idle()
                if worker is not None:
                    return worker
                waiting: concurrent.futures.Future[WorkerProcess] = concurrent.futures.Future()
                self._wait(None, waiting)
            try:
                worker = waiting.result(timeout=START_SECONDS)
            except concurrent.futures.TimeoutError:
                with self._lock:
                    if waiting.cancel():  # none came: it will not come now
                        raise _none_available() from None
                worker = waiting.result()  # one came just now
            finally:
                self._done_waiting(None, waiting)
            if self._usable(worker):
                return worker

    async def acheckout(self) -> WorkerProcess:
        """`checkout` for a coroutine: it waits on its event loop, not on a thread."""
        loop = asyncio.get_running_loop()
        while True:
            with self._lock:
                worker = self._take_idle()
                if worker is not None:
                    return worker
                waiting: asyncio.Future[WorkerProcess] = loop.create_future()
                self._wait(loop, waiting)
            try:
                worker = await asyncio.wait_for(waiting, START_SECONDS)
            except TimeoutError:
                raise _none_available() from None
            finally:
                self._done_waiting(loop, waiting)
            if self._usable(worker):
                return worker

    def release(self, worker: WorkerProcess) -> None:
        """A free worker goes to the call that has waited longest, else to the idle ones;
        once closed, it is stopped."""
        with self._lock:
            while self._waiters and not self.closed:
                loop, waiting = self._waiters.popleft()
                if _settle(loop, waiting, worker=worker, passed_on=self.release):
                    return
            if not self.closed:
                self._idle.append(worker)
                return
        worker.stop()

    def queue_delay(self) -> float:
        """How long the oldest call still waiting for a worker has waited (s)."""
        with self._lock:
            oldest = min(self._waiting.values(), default=None)
        return 0.0 if oldest is None else time.monotonic() - oldest

    def close(self) -> None:
        """Tell the waiting calls the decoders are shutting down; stop the idle workers."""
        with self._lock:
            self.closed = True
            waiters, idle = list(self._waiters), list(self._idle)
            self._waiters.clear()
            self._idle.clear()
        for loop, waiting in waiters:
            _settle(loop, waiting, error=_shutting_down())
        for worker in idle:
            worker.stop()

    def _take_idle(self) -> WorkerProcess | None:
        """(Under the lock.) An idle worker that is alive, or None; Overloaded once closed."""
        if self.closed:
            raise _shutting_down()
        while self._idle:
            worker = self._idle.popleft()
            if self._usable(worker):
                return worker
        return None

    def _wait(self, loop: Loop, waiting: Waiting) -> None:
        """(Under the lock.) Queue a call for the next free worker."""
        self._waiters.append((loop, waiting))
        self._waiting[id(waiting)] = time.monotonic()

    def _done_waiting(self, loop: Loop, waiting: Waiting) -> None:
        with self._lock:
            self._waiting.pop(id(waiting), None)
            if waiting.done() and not waiting.cancelled():
                return  # served (`release` took it from the queue) or failed by close()
            with contextlib.suppress(ValueError):
                self._waiters.remove((loop, waiting))

    def _usable(self, worker: WorkerProcess) -> bool:
        """A worker handed out is alive; one killed from outside while idle is `lost`."""
        if worker.alive():
            return True
        self._lost(worker)
        return False


def _settle(
    loop: Loop,
    waiting: Any,
    worker: WorkerProcess | None = None,
    error: BaseException | None = None,
    passed_on: Callable[[WorkerProcess], None] | None = None,
) -> bool:
    """Hand a waiting call its worker (or `error`): False if it no longer waits (it timed
    out, or its event loop is gone). A coroutine's worker arrives through its loop, where a
    call that gave up meanwhile has it `passed_on` to the next."""
    if loop is None:
        if not waiting.set_running_or_notify_cancel():
            return False
        if error is not None:
            waiting.set_exception(error)
        else:
            waiting.set_result(worker)
        return True
    if waiting.done():
        return False
    if _running_loop() is loop:  # released on the waiter's own loop: no wake-up to send
        if error is not None:
            waiting.set_exception(error)
        else:
            waiting.set_result(worker)
        return True

    def on_loop() -> None:
        if waiting.done():  # gave up (timed out, cancelled) since
            if worker is not None and passed_on is not None:
                passed_on(worker)
        elif error is not None:
            waiting.set_exception(error)
        else:
            waiting.set_result(worker)

    try:
        loop.call_soon_threadsafe(on_loop)
    except RuntimeError:  # its loop is closed
        return False
    return True


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _none_available() -> Overloaded:
    return Overloaded("no image decoder is available: try again", 5)


def _shutting_down() -> Overloaded:
    return Overloaded("the decoders are shutting down", retry_after=5)
