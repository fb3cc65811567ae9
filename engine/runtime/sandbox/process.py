"""A decode worker as its parent sees it: a process and the two pipes to it. It is started
with its limits, sent calls, listened to within deadlines (and watched for being stuck at its
memory limit), and killed."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from contextlib import suppress
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from engine.errors import ImageError, PneumoError
from engine.runtime.sandbox.wire import AllowListUnpickler, Limits, receive, send

START_SECONDS = 60.0  # a worker not ready by then is broken (a missing module, no memory)
PIPE_BYTES = 2**20
WATCH_SECONDS = 0.25  # a call waited on longer than this has its worker's memory watched
STUCK_SECONDS = 1.0  # a worker at its memory limit this long is stuck there: killed
LIMIT_SLACK = 4 * 2**20
# Threads in a worker would each reserve memory (OpenBLAS buffers, malloc arenas): one each.
WORKER_ENV = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MALLOC_ARENA_MAX": "1"}


class WorkerProcess:
    """One worker process and the two pipes to it (parent side)."""

    def __init__(self, proc: subprocess.Popen[bytes], to: Connection, back: Connection) -> None:
        self.proc = proc
        self._to = to
        self._back = back

    @classmethod
    def start(cls, limits: Limits, preload: Sequence[str]) -> WorkerProcess:
        to_r, to_w = os.pipe()
        back_r, back_w = os.pipe()
        for fd in (to_w, back_w):
            _widen(fd)
        env = {**os.environ, **WORKER_ENV, "PYTHONPATH": _python_path()}
        hard = limits.per_worker
        cmd = [sys.executable, "-m", "engine.runtime.sandbox", str(to_r), str(back_w)]
        cmd += [str(hard), str(limits.allowance), ",".join(preload)]
        try:
            proc = subprocess.Popen(cmd, pass_fds=(to_r, back_w), env=env, stdin=subprocess.DEVNULL)
        except OSError as e:
            for fd in (to_r, to_w, back_r, back_w):
                os.close(fd)
            raise PneumoError(f"cannot start {sys.executable}: {e}") from e
        finally:
            for fd in (to_r, back_w):
                with suppress(OSError):
                    os.close(fd)
        worker = cls(proc, Connection(to_w, readable=False), Connection(back_r, writable=False))
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
            now = time.monotonic()
            if now >= deadline:
                self.kill()
                raise ImageError(f"{name} took more than {seconds:g} s to decode: refused")
            if not self._at_limit():
                stuck_since = None
            elif stuck_since is None:
                stuck_since = now
            elif now - stuck_since >= STUCK_SECONDS:
                self.kill()
                raise ImageError(
                    f"{name} needs more memory to decode than it may use (its decoder stayed "
                    "at its memory limit): refused"
                )
        try:
            message = receive(self._back, AllowListUnpickler)
        except (EOFError, OSError):
            raise ImageError(
                f"{name} could not be decoded: the decoder stopped ({self._death()})"
            ) from None
        except pickle.UnpicklingError as e:
            self.kill()
            raise ImageError(f"{name} could not be decoded: the decoder answered {e}") from None
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

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for conn in (self._to, self._back):
            if not conn.closed:
                conn.close()

    def _death(self) -> str:
        """How the worker ended, in words."""
        try:
            code = self.proc.wait(2.0)
        except subprocess.TimeoutExpired:
            self.kill()
            code = self.proc.returncode
        if code < 0:
            try:
                return f"killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"killed by signal {-code}"
        return f"exit status {code}"


def _widen(fd: int) -> None:
    """A pipe that holds a whole X-ray (1 MB, the default most a user may ask) instead of
    64 KB: a message then crosses in one write, not in a dozen hand-offs between processes."""
    try:
        import fcntl

        fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), PIPE_BYTES)
    except (ImportError, OSError):
        pass  # not Linux, or a lower pipe-max-size: smaller pipes work too, a little slower


def _python_path() -> str:
    """The worker imports engine from where this process did."""
    root = str(Path(__file__).resolve().parents[2])
    rest = os.environ.get("PYTHONPATH", "")
    return os.pathsep.join([root, rest]) if rest else root
