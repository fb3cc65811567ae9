"""The memory and CPU time of a process and everything under it (a server and its decode
workers), from /proc: the peak of their summed RSS, sampled on a thread, and their CPU
seconds, for tests and benchmarks."""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path


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


def status_kb(pid: int, field: str) -> int:
    """A VmXXX line of /proc/PID/status in KB (0 once the process is gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    line = next((x for x in status.splitlines() if x.startswith(f"{field}:")), None)
    return int(line.split()[1]) if line else 0


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and of its descendants alive now."""
    return cpu_seconds([pid, *descendants(pid)])


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of these processes (0 for one that is gone)."""
    import os

    ticks = 0
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


class TreeMemory:
    """The peak of the summed RSS of a process and its descendants since `start`, sampled
    every `interval` seconds: what they held at the same moment. (The sum of each one's own
    peak would add peaks of different moments: a decode in one worker, then one in another.)
    The process's own peak (VmHWM) is a floor."""

    def __init__(self, pid: int, interval: float = 0.005) -> None:
        self.pid = pid
        self.interval = interval
        self.peak_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> TreeMemory:
        with contextlib.suppress(OSError):
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")
        self._sample()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def peak_mb(self) -> float:
        self._sample()
        return max(self.peak_kb, status_kb(self.pid, "VmHWM")) / 1024

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def _sample(self) -> None:
        total = sum(status_kb(p, "VmRSS") for p in [self.pid, *descendants(self.pid)])
        self.peak_kb = max(self.peak_kb, total)
