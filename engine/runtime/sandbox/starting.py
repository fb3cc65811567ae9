"""How a decode worker's process starts: a fresh interpreter (`python -m
engine.runtime.sandbox`, importing pneumo_onnx from where its parent did), or a fork of its
parent where that is safe (`may_fork`), which has imported everything already and starts at
once; either way with only the descriptors it is given, and only the environment variables an
interpreter needs (`worker_env`)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TypeAlias

# Threads in a worker would each reserve memory (OpenBLAS buffers, malloc arenas): one each.
WORKER_ENV = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MALLOC_ARENA_MAX": "1"}
# What a worker keeps of its parent's environment: what an interpreter and the libraries it
# loads need. The rest (API and admin keys, a database's URL, a --workers process's config, a
# cloud's credentials) stays behind: a decoder exploited into running code finds none of it.
KEPT_VARIABLES = frozenset({"PATH", "LANG", "LANGUAGE", "TZ", "TMPDIR", "LD_LIBRARY_PATH"})
KEPT_PREFIXES = ("LC_", "PYTHON")


def worker_env(environ: Mapping[str, str]) -> dict[str, str]:
    """A worker's environment, from its parent's `environ`."""
    kept = {k: v for k, v in environ.items() if k in KEPT_VARIABLES or k.startswith(KEPT_PREFIXES)}
    return {**kept, **WORKER_ENV, "PYTHONPATH": _python_path()}


def spawned(argv: list[str], fds: tuple[int, ...]) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "pneumo_onnx.engine.runtime.sandbox", *argv]
    env = worker_env(os.environ)
    return subprocess.Popen(cmd, pass_fds=fds, env=env, stdin=subprocess.DEVNULL)


def forked(argv: list[str], keep: tuple[int, ...]) -> Forked:
    pid = os.fork()
    if pid:
        return Forked(pid)
    code = 1  # the child: become a worker, and never return into the parent's code
    try:
        low = 3
        for fd in sorted(keep):  # every descriptor but stdio and `keep` closes
            os.closerange(low, fd)
            low = fd + 1
        os.closerange(low, 1 << 16)
        kept = worker_env(os.environ)
        os.environ.clear()  # unset in the process's own environment too
        os.environ.update(kept)
        from pneumo_onnx.engine.runtime.sandbox.worker import main

        main(argv)
        code = 0
    finally:
        os._exit(code)


class Forked:
    """A forked worker as `subprocess.Popen` shows a spawned one: poll, wait, kill."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(str(self.pid), timeout or 0.0)
            time.sleep(0.005)
        assert self.returncode is not None
        return self.returncode

    def kill(self) -> None:
        if self.poll() is None:
            os.kill(self.pid, signal.SIGKILL)


Child: TypeAlias = subprocess.Popen[bytes] | Forked


def may_fork() -> bool:
    """Whether this process may start workers by forking: Linux, and no thread of Python's
    running (Python 3.12 and later also want no thread at all; a numpy import starts one)."""
    if not sys.platform.startswith("linux") or threading.active_count() > 1:
        return False
    if sys.version_info < (3, 12):
        return True
    try:
        return len(os.listdir("/proc/self/task")) == 1
    except OSError:
        return False


def _python_path() -> str:
    """The worker imports pneumo_onnx from where this process did."""
    import pneumo_onnx

    root = str(Path(pneumo_onnx.__file__).resolve().parents[1])
    rest = os.environ.get("PYTHONPATH", "")
    return os.pathsep.join([root, rest]) if rest else root
