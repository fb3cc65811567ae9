"""The server's prediction log: one SQLite row per scored image (reports: `reports.py`).

Request threads never touch SQLite: `PredictionLog.record` only enqueues, and one background
thread commits batches (one transaction per batch of up to 500 rows or 50 ms). A full queue
makes `record` wait (backpressure) instead of dropping rows; `close()` writes everything still
queued, so a SIGTERM loses nothing. Reports open their own read-only connection: WAL lets them
read while the writer commits. The database is plain SQLite, readable by any tool.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import sqlite3
import threading
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from engine.errors import PneumoError, UsageError
from engine.serve.store import schema
from engine.serve.store.reports import drift_report, summarize

log = logging.getLogger(__name__)

BATCH_ROWS = 500
BATCH_SECONDS = 0.05


@dataclass(frozen=True)
class PredictionRecord:
    """One scored (or failed) image. `score`/`label`/`threshold` are None when `error` is set."""

    time: float  # unix seconds
    request_id: str
    route: str
    model_name: str
    model_version: str
    score: float | None
    label: str | None
    threshold: float | None
    latency_ms: float
    image_sha256: str
    image: bytes | None = None  # stored only by a log opened with store_images=True
    error: str | None = None

    @classmethod
    def from_result(
        cls,
        result: dict[str, Any],
        *,
        image: bytes,
        request_id: str,
        route: str,
        model_name: str,
        model_version: str,
        latency_ms: float,
        at: float | None = None,
    ) -> PredictionRecord:
        """A record from one `Engine.predict_batch` result dict and the image bytes it scored."""
        return cls(
            time=time.time() if at is None else at,
            request_id=request_id,
            route=route,
            model_name=model_name,
            model_version=model_version,
            score=result.get("raw_score"),
            label=result.get("prediction"),
            threshold=result.get("threshold"),
            latency_ms=latency_ms,
            image_sha256=hashlib.sha256(image).hexdigest(),
            image=image,
            error=result.get("error"),
        )


COLUMNS = tuple(f.name for f in fields(PredictionRecord))
_INSERT = "INSERT INTO predictions ({}) VALUES ({})".format(
    ", ".join(COLUMNS), ", ".join("?" * len(COLUMNS))
)
_STOP = object()  # queued by close(): the writer drains what is left, then exits


class PredictionLog:
    """Thread-safe, non-blocking (until the queue is full) prediction log in one SQLite file.

    Use as a context manager or call `close()` on shutdown: rows still queued when the process
    exits without `close()` are lost (the writer is a daemon thread so it never blocks exit).
    """

    def __init__(
        self, path: str | Path, *, store_images: bool = False, max_queue: int = 10_000
    ) -> None:
        if max_queue < 1:
            raise UsageError(f"max_queue must be at least 1, got {max_queue}")
        self.path = Path(path)
        self.store_images = store_images
        conn = _open_writer(self.path)
        self._queue: queue.Queue[object] = queue.Queue(maxsize=max_queue)
        self._state = threading.Lock()
        self._closed = False
        self._putting = 0  # record()/flush() calls between their closed check and their put
        self._written = 0
        self._failure: str | None = None
        self._thread = threading.Thread(
            target=self._run, args=(conn,), name="pneumo-prediction-log", daemon=True
        )
        self._thread.start()

    # --- writing (any thread) --------------------------------------------------------------

    def record(self, rec: PredictionRecord) -> None:
        """Queue one record; blocks while the queue is full. Raises UsageError once closed."""
        row = tuple(getattr(rec, c) for c in COLUMNS)  # dataclasses.astuple deep-copies: slow
        if not self.store_images:
            row = (*row[:-2], None, row[-1])
        self._put(row)

    def flush(self, timeout: float | None = None) -> None:
        """Return once every record queued before this call is committed."""
        marker = threading.Event()
        try:
            self._put(marker)
        except UsageError:  # closed: close() writes everything before its thread ends
            self._thread.join(timeout)
            return
        deadline = None if timeout is None else time.monotonic() + timeout
        while not marker.wait(0.5 if deadline is None else min(0.5, deadline - time.monotonic())):
            if not self._thread.is_alive():
                raise PneumoError(f"prediction log {self.path}: the writer stopped (see the log)")
            if deadline is not None and time.monotonic() >= deadline:
                raise PneumoError(f"prediction log {self.path}: not flushed after {timeout} s")

    def close(self, timeout: float | None = None) -> None:
        """Write every queued record, then stop the writer. Idempotent."""
        with self._state:
            first, self._closed = not self._closed, True
            if first:
                self._putting += 1
        if first:
            try:
                self._put_checked(_STOP)
            finally:
                with self._state:
                    self._putting -= 1
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise PneumoError(
                f"prediction log {self.path}: {self._queue.qsize()} rows still unwritten after "
                f"{timeout} s ({self._failure or 'the writer is busy'})"
            )

    def stats(self) -> dict[str, Any]:
        """For a health endpoint: rows written so far, rows queued, the last write failure."""
        with self._state:
            return {
                "written": self._written,
                "queued": self._queue.qsize(),
                "closed": self._closed,
                "failure": self._failure,
            }

    def __enter__(self) -> PredictionLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- reading ---------------------------------------------------------------------------

    def summary(self, hours: float = 24.0, now: float | None = None) -> dict[str, Any]:
        """`summarize` on this log (rows may lag `record` by one batch: `flush()` first)."""
        return summarize(self.path, hours=hours, now=now)

    def drift(self, **kwargs: Any) -> dict[str, Any]:
        """`drift_report` on this log; same keyword arguments."""
        return drift_report(self.path, **kwargs)

    # --- internals -------------------------------------------------------------------------

    def _put(self, item: object) -> None:
        with self._state:
            if self._closed:
                raise UsageError(f"prediction log {self.path} is closed")
            if not self._thread.is_alive():
                raise PneumoError(f"prediction log {self.path}: the writer stopped (see the log)")
            self._putting += 1
        try:
            self._put_checked(item)
        finally:
            with self._state:
                self._putting -= 1

    def _put_checked(self, item: object) -> None:
        while True:  # a writer that died would otherwise leave a full queue blocking forever
            try:
                self._queue.put(item, timeout=1.0)
                return
            except queue.Full:
                if not self._thread.is_alive():
                    raise PneumoError(f"prediction log {self.path}: the writer stopped") from None

    def _run(self, conn: sqlite3.Connection) -> None:
        stopping = False
        try:
            while True:
                rows, markers, stop = self._collect()
                if rows:
                    self._write(conn, rows)
                for marker in markers:
                    marker.set()
                stopping = stopping or stop
                if stopping:
                    with self._state:
                        if self._putting == 0 and self._queue.empty():
                            return
        except Exception:
            log.exception("prediction log %s: the writer failed", self.path)
            raise
        finally:
            conn.close()

    def _collect(self) -> tuple[list[tuple], list[threading.Event], bool]:
        """Up to BATCH_ROWS rows, gathered for at most BATCH_SECONDS after the first one.

        A flush marker ends the batch at once, so `flush()` waits for no timer.
        """
        rows: list[tuple] = []
        markers: list[threading.Event] = []
        stop = False
        try:
            item = self._queue.get(timeout=BATCH_SECONDS)
        except queue.Empty:
            return rows, markers, stop
        deadline = time.monotonic() + BATCH_SECONDS
        while True:
            if item is _STOP:
                stop = True
            elif isinstance(item, threading.Event):
                markers.append(item)
                break
            else:
                rows.append(item)  # type: ignore[arg-type]
                if len(rows) >= BATCH_ROWS:
                    break
            remaining = deadline - time.monotonic()
            try:
                if stop or remaining <= 0:
                    item = self._queue.get_nowait()
                else:
                    item = self._queue.get(timeout=remaining)
            except queue.Empty:
                break
        return rows, markers, stop

    def _write(self, conn: sqlite3.Connection, rows: list[tuple]) -> None:
        delay = 0.05
        while True:
            try:
                with conn:  # one transaction per batch
                    conn.executemany(_INSERT, rows)
                break
            except sqlite3.Error as e:  # disk full, locked by another process: keep the rows
                log.error(
                    "prediction log %s: cannot write %d rows (%s); retrying in %.2f s",
                    self.path,
                    len(rows),
                    e,
                    delay,
                )
                with self._state:
                    self._failure = f"{type(e).__name__}: {e}"
                time.sleep(delay)
                delay = min(1.0, delay * 2)
        with self._state:
            self._written += len(rows)
            self._failure = None


def _open_writer(path: Path) -> sqlite3.Connection:
    try:
        conn = sqlite3.connect(path, timeout=30.0, check_same_thread=False)
    except sqlite3.Error as e:
        raise UsageError(f"cannot open prediction log {path.name}: {e}") from e
    try:
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode != "wal":
            raise UsageError(f"prediction log {path.name}: SQLite refused WAL mode ({mode})")
        # NORMAL in WAL: a process crash loses nothing committed; only a power cut can.
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.executescript(schema.PREDICTIONS)
        schema.check_columns(conn, path, COLUMNS)
    except sqlite3.Error as e:
        conn.close()
        raise UsageError(f"cannot open prediction log {path.name}: {e}") from e
    except UsageError:
        conn.close()
        raise
    return conn


__all__ = ["PredictionLog", "PredictionRecord", "drift_report", "summarize"]
