"""The parent side of a sandbox: `Sandbox`, a pool of worker processes, the memory it grants
them from one budget, the deadlines it kills them at, and their replacements (the design:
engine.runtime.sandbox)."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from concurrent.futures import Executor
from contextlib import closing
from typing import Any

from pneumo_onnx.engine.errors import ImageError, PneumoError
from pneumo_onnx.engine.runtime.sandbox.budget import MemoryBudget
from pneumo_onnx.engine.runtime.sandbox.process import WorkerProcess
from pneumo_onnx.engine.runtime.sandbox.starting import may_fork
from pneumo_onnx.engine.runtime.sandbox.turns import Turns
from pneumo_onnx.engine.runtime.sandbox.wire import (
    MB,
    Limits,
    memory_error,
    unpack,
)

log = logging.getLogger(__name__)

Task = Callable[..., Any]
Admit = Callable[[Any], None]


class Sandbox:
    """`workers` worker processes; `call` runs one task in one of them and returns its result
    (or raises the task's PneumoError, or the ImageError of a breached limit). Thread-safe:
    a call waits for a free worker. Close it (or use `with`) to stop the workers.

    `preload`: modules each worker imports before its first task (what its tasks need).
    `fork`: start the first workers as copies of this process, here and now (they start at
    once, having imported everything already), where that is safe (`may_fork`); workers
    that replace them later are fresh interpreters.
    """

    def __init__(
        self,
        workers: int,
        limits: Limits | None = None,
        preload: Sequence[str] = (),
        fork: bool = False,
    ) -> None:
        if workers < 1:
            raise PneumoError(f"a sandbox needs at least one worker, got {workers}")
        self.size = workers
        self.limits = limits or Limits()
        self.preload = tuple(preload)
        self._budget = MemoryBudget(self.limits)
        self._turns = Turns(self._replace)
        self._failures = 0  # starts that failed in a row
        self.replaced = 0  # workers killed or lost, and replaced
        self._starts: queue.Queue[bool] = queue.Queue()
        forked = 0
        if fork and may_fork():  # before any thread of ours exists
            for _ in range(workers):
                self._turns.release(WorkerProcess.start(self.limits, self.preload, fork=True))
                forked += 1
        threading.Thread(target=self._starter, name="pneumo-sandbox", daemon=True).start()
        for _ in range(workers - forked):
            self._start_in_background()

    # --- calls ----------------------------------------------------------------------------

    def call(
        self,
        task: Task,
        *args: Any,
        name: str = "input",
        input_bytes: int = 0,
        admit: Admit | None = None,
    ) -> Any:
        """`task(ctx, *args)` in a worker: its return value. `name` is what error messages
        call the input; `input_bytes` its size (the allowance grows by twice that); `admit`
        sees the `info` of each grant first and may raise to refuse it."""
        with closing(self._converse(task, args, name, input_bytes, admit)) as talk:
            for kind, value in talk:
                if kind == "ok":
                    return value
        raise AssertionError("a worker ended a call without an answer")

    async def acall(
        self,
        task: Task,
        *args: Any,
        name: str = "input",
        input_bytes: int = 0,
        admit: Admit | None = None,
        executor: Executor | None = None,
    ) -> Any:
        """`call` from the event loop, which holds the whole conversation: it waits for a
        worker, writes to it and reads from it with its other sockets, with no thread to wake
        nor a GIL to hand over (they cost more CPU than the conversation itself). Only a
        grant that must wait for the memory budget waits on a thread of `executor`."""
        if input_bytes > self.limits.max_input:
            raise _too_large(name, input_bytes, self.limits.max_input)
        worker = await self._turns.acheckout()
        granted = self._budget.pregrant()
        healthy = False
        seconds = self.limits.seconds
        try:
            deadline = time.monotonic() + seconds
            call = worker.call(task, args, input_bytes, granted)
            await worker.asend(call, deadline, name, seconds)
            while True:
                kind, value = await worker.areceive(deadline, name, seconds)
                if kind == "need":
                    nbytes, info = value
                    refusal = self._refusal(nbytes, info, admit, name)
                    if refusal is not None:
                        worker.send("refuse")
                        await worker.areceive(time.monotonic() + seconds, name, seconds)
                        healthy = True
                        raise refusal
                    granted = self._budget.grant_now(granted, nbytes)
                    if granted < nbytes:  # the budget is taken: wait for it on a thread
                        held, granted = granted, 0  # the thread trades it for the grant
                        granted = await self._budget.granted_later(held, nbytes, executor)
                    worker.send("grant")
                    deadline = time.monotonic() + seconds
                elif kind == "item":
                    raise ImageError(f"{name} could not be decoded: the decoder answered nonsense")
                else:
                    healthy = True
                    return _answer(kind, value, admit, name)
        finally:
            self._budget.give_back(granted)
            self._checkin(worker, healthy)

    def stream(
        self, task: Task, *args: Any, name: str = "input", input_bytes: int = 0
    ) -> Iterator[Any]:
        """The items `task(ctx, *args)` emits, as it emits them (the worker waits while the
        caller handles each). The worker is held until the iterator ends or is closed."""
        with closing(self._converse(task, args, name, input_bytes, None)) as talk:
            for kind, value in talk:
                if kind == "item":
                    yield value

    def queue_delay(self) -> float:
        """How long the oldest call still waiting for a worker has waited (s)."""
        return self._turns.queue_delay()

    def close(self) -> None:
        """Stop the idle workers now, the busy ones when their call ends; the calls waiting
        for a worker are told the decoders are shutting down."""
        self._turns.close()
        self._starts.put(False)

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- internals ------------------------------------------------------------------------

    def _converse(
        self, task: Task, args: tuple[Any, ...], name: str, input_bytes: int, admit: Admit | None
    ) -> Generator[tuple[str, Any], None, None]:
        """One call, message by message: ('item', x) for each emitted item, then ('ok', x)."""
        if input_bytes > self.limits.max_input:
            raise _too_large(name, input_bytes, self.limits.max_input)
        worker = self._turns.checkout()
        granted = self._budget.pregrant()
        healthy = False  # the worker answered its last message and may take the next call
        seconds = self.limits.seconds
        try:
            worker.send(worker.call(task, args, input_bytes, granted))
            deadline = time.monotonic() + seconds
            while True:
                kind, value = worker.receive(deadline, name, seconds)
                if kind == "need":
                    nbytes, info = value
                    refusal = self._refusal(nbytes, info, admit, name)
                    if refusal is not None:
                        worker.send("refuse")
                        worker.receive(time.monotonic() + seconds, name, seconds)
                        healthy = True
                        raise refusal
                    granted = self._budget.grant(granted, nbytes)
                    worker.send("grant")
                    deadline = time.monotonic() + seconds  # the decode has its own deadline
                elif kind == "item":
                    yield kind, value
                    worker.send("next")
                    deadline = time.monotonic() + seconds
                else:
                    healthy = True
                    yield kind, _answer(kind, value, admit, name)
                    return
        finally:
            self._budget.give_back(granted)
            self._checkin(worker, healthy)

    def _refusal(
        self, nbytes: int, info: object, admit: Admit | None, name: str
    ) -> PneumoError | None:
        """Why a need of `nbytes` is refused (the caller's admission check, or the budget
        itself), or None."""
        if admit is not None:
            try:
                admit(info)
            except PneumoError as e:
                return e
        if nbytes > self.limits.memory:
            return ImageError(
                f"{name} would take about {nbytes / MB:.0f} MB to decode, over the "
                f"{self.limits.memory // MB} MB limit: send it smaller or as 8-bit grayscale"
            )
        return None

    def _checkin(self, worker: WorkerProcess, healthy: bool) -> None:
        if self._turns.closed:
            worker.stop()
        elif healthy and worker.alive():
            self._turns.release(worker)
        else:
            worker.kill()
            self._replace(worker)

    def _replace(self, worker: WorkerProcess) -> None:
        """A worker killed, or found dead: a new one is started in the background."""
        self.replaced += 1
        self._start_in_background()

    def _start_in_background(self) -> None:
        """Ask the starter thread for a new worker: its slot is idle once it is ready."""
        self._starts.put(True)

    def _starter(self) -> None:
        """Starts every worker. One long-lived thread: a worker dies with the thread that
        started it (PR_SET_PDEATHSIG follows the thread), so not with a short-lived one."""
        while self._starts.get():
            while not self._turns.closed:
                try:
                    worker = WorkerProcess.start(self.limits, self.preload)
                except PneumoError as e:
                    self._failures += 1
                    log.error("decode worker not started (%d in a row): %s", self._failures, e)
                    time.sleep(min(30.0, 0.5 * 2**self._failures))
                    continue
                self._failures = 0
                self._turns.release(worker)  # stopped, should the sandbox have closed meanwhile
                break


def _answer(kind: str, value: Any, admit: Admit | None, name: str) -> Any:
    """A call's last message as its result, or the error it says."""
    if kind == "error":
        raise unpack(value)
    if kind == "memory":
        raise memory_error(name, value)
    result, admitted = value
    if admit is not None and admitted is not None:
        admit(admitted)  # decoded within the pregrant: admitted afterwards
    return result


def _too_large(name: str, size: int, limit: int) -> ImageError:
    return ImageError(
        f"{name} is {size / MB:.1f} MB, over the {limit / MB:g} MB limit for one input"
    )
