"""A decode worker as its parent sees it: a process and the two pipes to it. It is started
with its limits, sent calls, listened to within deadlines (and watched for being stuck at its
memory limit), and killed."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from multiprocessing.connection import Connection
from typing import Any

from pneumo_onnx.engine.errors import ImageError, PneumoError
from pneumo_onnx.engine.runtime.sandbox.shared import AREA_BYTES, InputArea
from pneumo_onnx.engine.runtime.sandbox.starting import Child, forked, spawned
from pneumo_onnx.engine.runtime.sandbox.wire import (
    READ_CHUNK,
    AllowListUnpickler,
    Limits,
    frame_reader,
    framed,
    out_of_band,
    receive,
    send,
    unpickled,
    write_some,
)

START_SECONDS = 60.0  # a worker not ready by then is broken (a missing module, no memory)
PIPE_BYTES = 2**20
WATCH_SECONDS = 0.25  # a call waited on longer than this has its worker's memory watched
STUCK_SECONDS = 1.0  # a worker at its memory limit this long is stuck there: killed
LIMIT_SLACK = 4 * 2**20


class WorkerProcess:
    """One worker process and the two pipes to it (parent side)."""

    def __init__(
        self, proc: Child, to: Connection, back: Connection, area: InputArea | None = None
    ) -> None:
        self.proc = proc
        self._to = to
        self._back = back
        self._area = area  # where an upload crosses (`shared`); None: the pipe carries all

    @classmethod
    def start(cls, limits: Limits, preload: Sequence[str], fork: bool = False) -> WorkerProcess:
        """A new worker, ready: a fresh interpreter (`python -m engine.runtime.sandbox`), or
        with `fork` (the caller made sure this process may fork) a copy of this one, which
        has imported everything already and starts at once."""
        to_r, to_w = os.pipe()
        back_r, back_w = os.pipe()
        for fd in (to_w, back_w):
            _widen(fd)
        argv = [str(to_r), str(back_w), str(limits.per_worker), str(limits.allowance)]
        argv.append(",".join(preload))
        # A forked worker would share every area mapped here so far, other workers' too: it
        # gets none, and takes its inputs through the pipe.
        area = None if fork else InputArea.made(min(AREA_BYTES, limits.max_input))
        argv.append(f"{area.child_fd}:{area.size}" if area is not None else "-")
        keep = (to_r, back_w) if area is None else (to_r, back_w, area.child_fd)
        try:
            proc = forked(argv, keep=keep) if fork else spawned(argv, keep)
        except OSError as e:
            for fd in (to_w, back_r):
                os.close(fd)
            if area is not None:
                area.close()
            raise PneumoError(f"cannot start a decode worker: {e}") from e
        finally:
            for fd in (to_r, back_w):
                with contextlib.suppress(OSError):
                    os.close(fd)
            if area is not None:
                area.child_closed()
        worker = cls(
            proc, Connection(to_w, readable=False), Connection(back_r, writable=False), area
        )
        try:
            ready = worker.receive(time.monotonic() + START_SECONDS, "start", START_SECONDS)
        except ImageError as e:
            worker.kill()
            raise PneumoError(e.message) from None
        if ready != ("ready", None):
            worker.kill()
            raise PneumoError(f"it answered {str(ready)[:80]} instead of ready")
        return worker

    def alive(self) -> bool:
        return self.proc.poll() is None

    def call(self, task: Any, args: tuple[Any, ...], input_bytes: int, granted: int) -> object:
        """The message that asks this worker to run `task(ctx, *args)`: an upload through its
        shared input area where it fits (`shared`), large bytes otherwise out of band."""
        area = self._area
        carried = area.carried(args) if area is not None else out_of_band(args)
        return ("call", task, carried, input_bytes, granted)

    def send(self, message: object) -> None:
        try:
            send(self._to, message)
        except OSError as e:  # the worker died while we wrote (BrokenPipeError)
            raise ImageError(f"the image decoder stopped ({self._death()})") from e

    def receive(self, deadline: float, name: str, seconds: float) -> tuple[str, Any]:
        """The worker's next message. The worker is killed past `deadline`, or once it has
        stayed at its memory limit for STUCK_SECONDS: a library that catches MemoryError and
        tries again (Pillow's TIFF reader does, per strip) would spin there until then."""
        stuck_since: float | None = None
        while not self._back.poll(min(WATCH_SECONDS, max(0.0, deadline - time.monotonic()))):
            stuck_since = self._watch(deadline, stuck_since, name, seconds)
        return self._read(name)

    async def asend(self, message: object, deadline: float, name: str, seconds: float) -> None:
        """`send` on the running event loop: what the pipe does not take at once is written
        as the worker reads it (a worker that stops reading meets `deadline`)."""
        fd = self._to.fileno()
        parts = framed(message)
        os.set_blocking(fd, False)
        try:
            while parts:
                try:
                    write_some(fd, parts)
                except BlockingIOError:
                    await self._ready(fd, deadline, name, seconds, write=True)
        except OSError as e:  # the worker died while we wrote (BrokenPipeError)
            raise ImageError(f"the image decoder stopped ({self._death()})") from e
        finally:
            if not self._to.closed:
                os.set_blocking(fd, True)

    async def areceive(self, deadline: float, name: str, seconds: float) -> tuple[str, Any]:
        """`receive` on the running event loop: the pipe is waited for with the loop's other
        sockets (no thread to wake, nor a GIL to hand over), watched as `receive` watches,
        and read as its bytes arrive: a worker that sends half a message and stops holds
        no one (it meets its deadline)."""
        fd = self._back.fileno()
        stuck: float | None = None
        frame = frame_reader()
        chunks: list[bytes] = []
        wanted, got = next(frame), 0
        # A worker answers in milliseconds, never as soon as it was written to: the pipe is
        # waited for before it is first read (that read would only find it empty).
        readable = False
        with self._reading(name):
            os.set_blocking(fd, False)
            try:
                while True:
                    if got < wanted:
                        data = _read_some(fd, min(wanted - got, READ_CHUNK)) if readable else None
                        if data is None:
                            readable = await self._ready(fd, deadline, name, seconds)
                            if not readable:
                                stuck = self._watch(deadline, stuck, name, seconds)
                            continue
                        if not data:
                            raise EOFError
                        chunks.append(data)
                        got += len(data)
                        if got < wanted:
                            continue
                    part = b"".join(chunks)
                    chunks.clear()
                    got = 0
                    try:
                        wanted = frame.send(part)
                    except StopIteration as done:
                        message = unpickled(done.value, AllowListUnpickler)
                        break
            finally:
                if not self._back.closed:  # killed meanwhile: its descriptor may be reused
                    os.set_blocking(fd, True)
        return self._checked(message, name)

    async def _ready(
        self, fd: int, deadline: float, name: str, seconds: float, write: bool = False
    ) -> bool:
        """Wait until the pipe can be read (or written), at most WATCH_SECONDS: whether it
        can. Past `deadline` the worker is killed (ImageError)."""
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[bool] = loop.create_future()
        add, remove = (
            (loop.add_writer, loop.remove_writer)
            if write
            else (loop.add_reader, loop.remove_reader)
        )
        add(fd, _settle, ready, True)
        wait = min(WATCH_SECONDS, max(0.0, deadline - time.monotonic()))
        timer = loop.call_later(wait, _settle, ready, False)
        try:
            done = await ready
        finally:
            remove(fd)
            timer.cancel()
        if not done and time.monotonic() >= deadline:
            self.kill()
            raise ImageError(f"{name} took more than {seconds:g} s to decode: refused")
        return done

    def _watch(
        self, deadline: float, stuck_since: float | None, name: str, seconds: float
    ) -> float | None:
        """One look at a worker that has not answered yet: killed (ImageError) past its
        deadline or stuck at its memory limit; else since when it has been at that limit."""
        now = time.monotonic()
        if now >= deadline:
            self.kill()
            raise ImageError(f"{name} took more than {seconds:g} s to decode: refused")
        if not self._at_limit():
            return None
        if stuck_since is None:
            return now
        if now - stuck_since >= STUCK_SECONDS:
            self.kill()
            raise ImageError(
                f"{name} needs more memory to decode than it may use (its decoder stayed "
                "at its memory limit): refused"
            )
        return stuck_since

    def _read(self, name: str) -> tuple[str, Any]:
        """The message waiting in the pipe, checked."""
        with self._reading(name):
            message = receive(self._back, AllowListUnpickler)
        return self._checked(message, name)

    @contextlib.contextmanager
    def _reading(self, name: str) -> Iterator[None]:
        """What a failed read means, in the caller's words."""
        try:
            yield
        except (EOFError, OSError):
            raise ImageError(
                f"{name} could not be decoded: the decoder stopped ({self._death()})"
            ) from None
        except pickle.UnpicklingError as e:
            self.kill()
            raise ImageError(f"{name} could not be decoded: the decoder answered {e}") from None

    def _checked(self, message: object, name: str) -> tuple[str, Any]:
        if not (isinstance(message, tuple) and len(message) == 2 and isinstance(message[0], str)):
            self.kill()
            raise ImageError(f"{name} could not be decoded: the decoder answered nonsense")
        return message

    def _at_limit(self) -> bool:
        """Whether the worker's data segment is within LIMIT_SLACK of its soft limit (Linux;
        elsewhere never)."""
        try:
            with open(f"/proc/{self.proc.pid}/statm", "rb") as f:
                data = int(f.read().split()[5]) * os.sysconf("SC_PAGE_SIZE")
            with open(f"/proc/{self.proc.pid}/limits") as f:
                line = next(x for x in f if x.startswith("Max data size"))
            soft = line.split()[3]
        except (OSError, StopIteration, IndexError, ValueError):
            return False
        return soft.isdigit() and data >= int(soft) - LIMIT_SLACK

    def stop(self) -> None:
        """Ask the worker to exit (its pipe closes), then make sure it has."""
        self._to.close()
        try:
            self.proc.wait(2.0)
        except subprocess.TimeoutExpired:
            self.kill()
        if not self._back.closed:
            self._back.close()
        self._close_area()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for conn in (self._to, self._back):
            if not conn.closed:
                conn.close()
        self._close_area()

    def _close_area(self) -> None:
        if self._area is not None:
            self._area.close()
            self._area = None

    def _death(self) -> str:
        """How the worker ended, in words."""
        try:
            code = self.proc.wait(2.0)
        except subprocess.TimeoutExpired:
            self.kill()
            code = self.proc.wait()
        if code < 0:
            try:
                return f"killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"killed by signal {-code}"
        return f"exit status {code}"


def _read_some(fd: int, size: int) -> bytes | None:
    """Up to `size` bytes there are in a non-blocking pipe (b"": it closed); None: none yet."""
    try:
        return os.read(fd, size)
    except BlockingIOError:
        return None


def _settle(future: asyncio.Future[bool], value: bool) -> None:
    if not future.done():
        future.set_result(value)


def _widen(fd: int) -> None:
    """A pipe that holds a whole X-ray (1 MB, the default most a user may ask) instead of
    64 KB: a message then crosses in one write, not in a dozen hand-offs between processes."""
    try:
        import fcntl

        fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), PIPE_BYTES)
    except (ImportError, OSError):
        pass  # not Linux, or a lower pipe-max-size: smaller pipes work too, a little slower
