"""Tasks for the sandbox tests to run in real worker processes (a worker imports them by name,
so they live in a module of their own, free of test-time side effects)."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from typing import Any

import numpy as np

from pneumo_onnx.engine.errors import ImageError
from pneumo_onnx.engine.runtime.sandbox import TaskContext


def echo(ctx: TaskContext, value: Any) -> Any:
    return value


def allocate(ctx: TaskContext, announced_mb: int, used_mb: int) -> int:
    """Ask for `announced_mb`, then fill `used_mb`: past the grant, a MemoryError."""
    ctx.need(announced_mb * 2**20)
    block = np.ones(used_mb * 2**20, np.uint8)
    return int(block[-1])


def allocate_before_asking(ctx: TaskContext, used_mb: int) -> int:
    block = np.ones(used_mb * 2**20, np.uint8)
    return int(block[-1])


def sleep(ctx: TaskContext, seconds: float) -> str:
    time.sleep(seconds)
    return "woke"


def crash(ctx: TaskContext) -> None:
    os.kill(os.getpid(), signal.SIGSEGV)


def refuse_bad(ctx: TaskContext, what: str) -> None:
    raise ImageError(f"{what} is not an image")


def write_file(ctx: TaskContext, path: str) -> str:
    with open(path, "w") as f:
        f.write("x" * 10)
    return "written"


def environment(ctx: TaskContext) -> dict[str, str]:
    return dict(os.environ)


def pid(ctx: TaskContext) -> int:
    return os.getpid()


def granted(ctx: TaskContext, mb: int, info: Any) -> str:
    ctx.need(mb * 2**20, info)
    return "granted"


def emit(ctx: TaskContext, n: int) -> None:
    for i in range(n):
        ctx.emit(i)


class Evil:
    """An answer whose unpickling would run code in the parent."""

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.system, ("echo pwned > /dev/null",))


def evil(ctx: TaskContext) -> Evil:
    return Evil()


def swallow_memory_errors(ctx: TaskContext) -> None:
    """Fill memory, and carry on past each MemoryError, as some parsers do per entry."""
    blocks = []
    while True:
        with contextlib.suppress(MemoryError):
            blocks.append(bytearray(2**20))


def lie_about_size(ctx: TaskContext, announced: int) -> None:
    """What a decoder exploited into running code could send: a frame announcing one buffer
    of `announced` bytes, then nothing (it exits)."""
    from pneumo_onnx.engine.runtime.sandbox.wire import FRAME

    os.write(ctx._replies.fileno(), FRAME.pack(0, 1) + announced.to_bytes(8, "little"))
    os._exit(0)


def half_a_frame(ctx: TaskContext) -> None:
    """A frame's head and part of its pickle, then silence: what a hung or hostile decoder
    could leave in the pipe."""
    from pneumo_onnx.engine.runtime.sandbox.wire import FRAME

    os.write(ctx._replies.fileno(), FRAME.pack(100, 0) + b"x" * 10)
    time.sleep(60)


def digest(ctx: TaskContext, data: bytes) -> tuple[str, int]:
    """The sha256 and size of the bytes the task was given."""
    import hashlib

    return hashlib.sha256(data).hexdigest(), len(data)


def tamper_with_input_area(ctx: TaskContext) -> dict[str, str]:
    """What a decoder exploited into running code could try against the input area it shares
    with its parent: write to it, map it writable, shrink it, also through the file opened
    again (/proc allows that). Each attempt's outcome."""
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if "pneumo-input" in os.readlink(f"/proc/self/fd/{name}"):
                return _tamper(int(name))
    return {}


def _tamper(fd: int) -> dict[str, str]:
    import mmap

    def reopened() -> int:
        return os.open(f"/proc/self/fd/{fd}", os.O_RDWR)

    attempts = {
        "write": lambda: os.pwrite(fd, b"x", 0),
        "map_writable": lambda: mmap.mmap(fd, 4096),
        "shrink": lambda: os.ftruncate(fd, 0),
        "write_reopened": lambda: os.pwrite(reopened(), b"x", 0),
        "map_reopened_writable": lambda: mmap.mmap(reopened(), 4096),
        "shrink_reopened": lambda: os.ftruncate(reopened(), 0),
    }
    outcomes = {}
    for attempt, act in attempts.items():
        try:
            act()
            outcomes[attempt] = "done"
        except (OSError, ValueError) as e:
            outcomes[attempt] = type(e).__name__
    return outcomes
