"""The worker side of a sandbox: `python -m engine.runtime.sandbox`, started by `Sandbox`
with two pipes (and the input area it shares with its parent, `shared`). It imports what its
tasks need, confines itself (its data segment, no core files, no file writes, death with its
parent), then runs one task at a time, each within the memory its parent granted
(`TaskContext`)."""

from __future__ import annotations

import functools
import os
import signal
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from pneumo_onnx.engine.runtime.sandbox.shared import WorkerArea
from pneumo_onnx.engine.runtime.sandbox.wire import data_bytes, pack, receive, send

MB = 2**20
TRIM_ABOVE = 16 * MB  # a worker holding this much more than at rest hands it back
KEEP_BUFFERS = 16 * MB  # allocations up to this come from (and go back to) the heap
RESTING_SLACK = 64 * MB  # a worker that stays this far above its resting size is replaced


class Refused(Exception):
    """The parent refused a grant (the caller's admission said no): the task stops."""


class TaskContext:
    """What a task running in a worker can ask of its parent."""

    def __init__(
        self, requests: Connection, replies: Connection, allowance: int, pregranted: int
    ) -> None:
        self._requests = requests
        self._replies = replies
        self.phase = "header"
        self.allowed = 0
        self.pregranted = pregranted
        self.admitted: object = None  # `info` of a need met by the pregrant: admitted after
        self._allow(allowance + pregranted)

    def need(self, nbytes: int, info: object = None) -> None:
        """Ask for `nbytes` more memory (what the decode a header announces needs), with
        `info` for the caller's admission check; returns once granted (raises Refused). A
        need within the call's pregrant is met at once (and admitted with the result)."""
        self.phase = "decode"
        if nbytes <= self.pregranted:
            self.admitted = info
            return
        send(self._replies, ("need", (nbytes, info)))
        if receive(self._requests) != "grant":
            raise Refused
        self._allow(self.allowed - self.pregranted + nbytes)

    def emit(self, item: object) -> None:
        """Hand one result of a streaming task to the parent (waits while it is handled)."""
        send(self._replies, ("item", item))
        if receive(self._requests) != "next":
            raise Refused

    def _allow(self, allowed: int) -> None:
        """Allow `allowed` bytes above the memory in use now, and not one more."""
        import resource

        self.allowed = allowed
        hard = resource.getrlimit(resource.RLIMIT_DATA)[1]
        resource.setrlimit(resource.RLIMIT_DATA, (min(data_bytes() + allowed, hard), hard))


def _serve(
    requests: Connection, replies: Connection, allowance: int, area: WorkerArea | None
) -> None:
    """The worker's loop: one task at a time until the parent closes the pipe."""
    from pneumo_onnx.engine.runtime.memory import trim

    resting = data_bytes()
    while True:
        try:
            _, task, args, input_bytes, pregranted = receive(requests)
        except EOFError:
            return
        if area is not None:
            args = area.taken(args)
        ctx = TaskContext(requests, replies, allowance + 2 * input_bytes, pregranted)
        reply = _run(ctx, task, args)
        del task, args
        _unlimit()
        # Memory goes back before the answer does: the parent gives the task's grant to the
        # next decode as soon as it has the answer. After large tasks only: trimming after
        # each would cost the next one its page faults.
        if data_bytes() > resting + TRIM_ABOVE:
            trim()
        try:
            send(replies, reply)
        except MemoryError:  # the answer itself is too large for what is left
            send(replies, ("memory", {"phase": ctx.phase, "allowed": ctx.allowed}))
        del reply
        if data_bytes() > resting + RESTING_SLACK:
            return  # what it holds no longer goes back: the parent starts a fresh worker


def _run(ctx: TaskContext, task: Any, args: tuple[Any, ...]) -> tuple[str, Any]:
    """The task's answer as a message. A task that ran out of memory still holds it, in the
    frames its exception refers to: the limit is lifted before anything else is allocated,
    and the frames are let go before the answer is made."""
    try:
        return ("ok", (task(ctx, *args), ctx.admitted))
    except Refused:
        return ("refused", None)
    except MemoryError:
        _unlimit()
    except BaseException as e:  # the task's own errors, and any parser's failure
        _unlimit()
        if not (isinstance(e, OSError) and "out of memory" in str(e)):  # Pillow's codecs' way
            return ("error", pack(e))
    return ("memory", {"phase": ctx.phase, "allowed": ctx.allowed})


def _unlimit() -> None:
    """Lift the task's soft limit to the worker's hard one. Its call is made in advance
    (`_confine`), so this allocates nothing: it works when the last allocation failed."""
    _UNLIMIT()


_UNLIMIT: Callable[[], None] = lambda: None  # noqa: E731 (set by _confine)


def _confine(extra: int) -> None:
    """The worker's hard limits: its data segment (`extra` above what it holds now), no core
    files, no file writes; and it dies with its parent."""
    import resource

    global _UNLIMIT
    hard = data_bytes() + extra + RESTING_SLACK
    resource.setrlimit(resource.RLIMIT_DATA, (hard, hard))
    _UNLIMIT = functools.partial(resource.setrlimit, resource.RLIMIT_DATA, (hard, hard))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG (Linux)
        # One image's buffers are reused by the next instead of being mapped, faulted in and
        # handed back each time (half the page faults of a batch); the worker hands memory
        # back itself after large tasks (`trim`), and its limit counts the heap as it grows.
        libc.mallopt(-3, KEEP_BUFFERS)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 2 * KEEP_BUFFERS)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


def main(argv: list[str]) -> None:
    """The worker's life: the pipes' descriptors, its hard limit, its allowance per task and
    the modules to import are its arguments."""
    import importlib
    import logging

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    # What goes wrong in a task is the parent's to report: libraries that log the failures
    # they raise (pydicom logs each decoder's traceback) print nothing here, also in a worker
    # forked from a process whose logging prints.
    logging.getLogger().handlers[:] = [logging.NullHandler()]
    requests = Connection(int(argv[0]), writable=False)
    replies = Connection(int(argv[1]), readable=False)
    for module in filter(None, argv[4].split(",")):
        importlib.import_module(module)
    area = WorkerArea.opened(argv[5])
    _confine(int(argv[2]))
    parent = os.getppid()
    if parent == 1:  # the parent died before the death signal was armed
        return
    send(replies, ("ready", None))
    _serve(requests, replies, int(argv[3]), area)
