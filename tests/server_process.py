"""A real `pneumo serve` process on a free loopback port, for tests and benchmarks."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """`python -m engine.cli serve ...` started in `cwd`, ready when /v2/health/ready says so."""

    def __init__(
        self, cwd: Path, *args: str, env: dict[str, str] | None = None, tls: bool = False
    ) -> None:
        self.port = free_port()
        self.cwd = cwd
        self.args = ["--port", str(self.port), *args]
        self.env = {**os.environ, **(env or {})}
        self.scheme = "https" if tls else "http"
        self.proc: subprocess.Popen[str] | None = None
        self.log = cwd / f"server-{self.port}.log"
        self._tree: TreeMemory | None = None

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0, verify: bool | ssl.SSLContext = True) -> ServerProcess:
        with self.log.open("w") as out:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "engine.cli", "serve", *self.args],
                cwd=self.cwd,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log.read_text()[-3000:]}")
            try:
                r = httpx.get(f"{self.url}/v2/health/ready", timeout=1.0, verify=verify)
                if r.status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.proc.kill()
        self.proc.wait()
        raise RuntimeError(f"server not ready in {timeout} s:\n{self.log.read_text()[-3000:]}")

    def workers(self) -> list[int]:
        """The pids of the server's decode worker processes."""
        assert self.proc is not None
        return [p for p in descendants(self.proc.pid) if "engine.runtime.sandbox" in _cmdline(p)]

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait: the exit status of a graceful shutdown."""
        if self._tree is not None:
            self._tree.stop()
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def reset_peak_rss(self) -> None:
        """Start a new peak-RSS window, for the server process (Linux: clear_refs 5 resets
        VmHWM to the current RSS) and for its whole tree (its decode workers included)."""
        assert self.proc is not None
        Path(f"/proc/{self.proc.pid}/clear_refs").write_text("5")
        if self._tree is not None:
            self._tree.stop()
        self._tree = TreeMemory(self.proc.pid).start()

    def peak_rss_mb(self) -> float:
        """The server process's peak RSS since start or the last reset_peak_rss (MB)."""
        assert self.proc is not None
        return _kb(self.proc.pid, "VmHWM") / 1024

    def tree_peak_mb(self) -> float:
        """The peak of the RSS of the server and every process under it, added up, since the
        last reset_peak_rss (MB): sampled every few ms, and never below the sum of the peaks
        of the processes alive now. A worker killed in between counts as sampled."""
        assert self.proc is not None and self._tree is not None
        return self._tree.peak_mb()

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def descendants(pid: int) -> list[int]:
    """Every process under `pid` (children, their children...), from /proc/PID/task/*/children."""
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        try:
            tasks = list(Path(f"/proc/{parent}/task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                children = [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
            found += children
            todo += children
    return found


def _kb(pid: int, field: str) -> int:
    """A VmXXX line of /proc/PID/status in KB (0 once the process is gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    line = next((x for x in status.splitlines() if x.startswith(f"{field}:")), None)
    return int(line.split()[1]) if line else 0


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


class TreeMemory:
    """The peak of the summed RSS of a process and its descendants, sampled on a thread."""

    def __init__(self, pid: int, interval: float = 0.01) -> None:
        self.pid = pid
        self.interval = interval
        self.peak_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> TreeMemory:
        for pid in descendants(self.pid):
            with contextlib.suppress(OSError):
                Path(f"/proc/{pid}/clear_refs").write_text("5")
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def peak_mb(self) -> float:
        tree = [self.pid, *descendants(self.pid)]
        return max(self.peak_kb, sum(_kb(p, "VmHWM") for p in tree)) / 1024

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            total = sum(_kb(p, "VmRSS") for p in [self.pid, *descendants(self.pid)])
            self.peak_kb = max(self.peak_kb, total)
