"""A real `pneumo serve` process on a free loopback port, for tests and benchmarks."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx

from benchmarks.memory import TreeMemory, descendants, status_kb


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """`python -m engine.cli serve ...` started in `cwd`, ready when /v2/health/ready says so."""

    def __init__(
        self,
        cwd: Path,
        *args: str,
        env: dict[str, str] | None = None,
        tls: bool = False,
        port_by_env: bool = False,
        ready_key: str | None = None,
    ) -> None:
        self.port = free_port()
        self.cwd = cwd
        port = {"PNEUMO_PORT": str(self.port)} if port_by_env else {}
        self.args = [*args] if port_by_env else ["--port", str(self.port), *args]
        self.env = {**os.environ, **(env or {}), **port}
        self.scheme = "https" if tls else "http"
        # The key readiness is asked with, for a server that protects its health routes.
        self.ready_headers = {"X-API-Key": ready_key} if ready_key else {}
        self.proc: subprocess.Popen[str] | None = None
        self.log = cwd / f"server-{self.port}.log"
        self._tree: TreeMemory | None = None

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0, verify: bool | ssl.SSLContext = True) -> ServerProcess:
        with self.log.open("w") as out:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "pneumo_onnx.engine.cli", "serve", *self.args],
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
                r = httpx.get(
                    f"{self.url}/v2/health/ready",
                    headers=self.ready_headers,
                    timeout=1.0,
                    verify=verify,
                )
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
        return [
            p
            for p in descendants(self.proc.pid)
            if "pneumo_onnx.engine.runtime.sandbox" in _cmdline(p)
        ]

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
        return status_kb(self.proc.pid, "VmHWM") / 1024

    def tree_peak_mb(self) -> float:
        """The peak of the RSS of the server and every process under it, added up, since the
        last reset_peak_rss (MB): sampled every few ms, and never below the sum of the peaks
        of the processes alive now. A worker killed in between counts as sampled."""
        assert self.proc is not None and self._tree is not None
        return self._tree.peak_mb()

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""
