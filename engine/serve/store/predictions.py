"""The server's prediction log: one row per scored image (reports: `reports.py`), in a SQLite
file or in the PostgreSQL database that several servers share (`backend.py`).

Request threads never touch the database: `PredictionLog.record` only enqueues, and one background
thread commits batches (one transaction per batch of up to 500 rows or 50 ms). While the
writer is healthy a full queue makes `record` wait (backpressure) instead of dropping rows;
while it cannot write (a full disk), the queue holds what it can and further rows are counted
as lost rather than piling up in memory, the failure is logged once per change of state and
shown by `state()` (readiness reports it). `close_within(t)` writes everything still queued,
giving up after `t` seconds of failing writes and saying how many rows it could not write, so
a SIGTERM never hangs on a full disk. Rows older than the retention are deleted by the writer
(`retention`); with several servers on one database each deletes the same old rows, which is
harmless. A log file deleted or replaced under the server is noticed at the next batch,
logged, and recreated; a lost PostgreSQL connection is opened again, the batch retried
meanwhile.
Reports open their own read-only connection: WAL lets them read while the writer commits.

What a kill -9 can lose: rows are committed in batches, so at most the predictions answered in
the last BATCH_SECONDS (and at most BATCH_ROWS of them), plus, while the disk cannot be
written, the rows waiting in the queue (at most `max_queue`).
"""

from __future__ import annotations

import contextlib
import logging
import operator
import queue
import threading
import time
from dataclasses import fields
from typing import Any

from pneumo_onnx.engine.errors import PneumoError, UsageError
from pneumo_onnx.engine.serve.store.backend import Conn, Database, Target
from pneumo_onnx.engine.serve.store.databases import open_database
from pneumo_onnx.engine.serve.store.record import PredictionRecord
from pneumo_onnx.engine.serve.store.reports import drift_report, summarize
from pneumo_onnx.engine.serve.store.retention import prune
from pneumo_onnx.engine.serve.store.schema import check_columns, open_store

log = logging.getLogger(__name__)

BATCH_ROWS = 500
BATCH_SECONDS = 0.05
PRUNE_EVERY = 600.0  # seconds between two retention passes of the writer
PRUNE_RETRY = 5.0  # a pass paused by a large WAL goes on this much later


COLUMNS = tuple(f.name for f in fields(PredictionRecord))
_COLUMNS_OF = operator.attrgetter(*COLUMNS)
_IMAGE = COLUMNS.index("image")
_INSERT = "INSERT INTO predictions ({}) VALUES ({})".format(
    ", ".join(COLUMNS), ", ".join("?" * len(COLUMNS))
)
_STOP = object()  # queued by close(): the writer drains what is left, then exits


class PredictionLog:
    """Thread-safe, non-blocking (until the queue is full) prediction log: a SQLite file (a
    path) or a PostgreSQL database (a postgresql:// URL).

    Use as a context manager or call `close()` on shutdown: rows still queued when the process
    exits without `close()` are lost (the writer is a daemon thread so it never blocks exit).
    """

    def __init__(
        self,
        target: Target,
        *,
        store_images: bool = False,
        max_queue: int = 10_000,
        retention_days: float = 0.0,
    ) -> None:
        if max_queue < 1:
            raise UsageError(f"max_queue must be at least 1, got {max_queue}")
        self.target = target
        self._db = open_database(target)
        self.name = self._db.name  # what messages call it: never a path or a password
        self.store_images = store_images
        self.retention_days = retention_days
        conn = _open_writer(self._db)
        self._queue: queue.Queue[object] = queue.Queue(maxsize=max_queue)
        self._urgent = threading.Event()  # a flush, a close or a full batch is queued
        self._state = threading.Lock()
        self._closed = False
        self._putting = 0  # record()/flush() calls between their closed check and their put
        self._written = 0
        self._lost = 0  # rows dropped while the writer could not write, or left at shutdown
        self._failure: str | None = None
        self._give_up_at: float | None = None  # set by close_within: stop retrying then
        self._next_prune = 0.0
        self._thread = threading.Thread(
            target=self._run, args=(conn,), name="pneumo-prediction-log", daemon=True
        )
        self._thread.start()

    # --- writing (any thread) --------------------------------------------------------------

    def record(self, rec: PredictionRecord) -> None:
        """Queue one record; blocks while the queue is full and the writer healthy, drops
        (and counts) it while the writer cannot write. Raises UsageError once closed."""
        self._put(self._row(rec), drop_when_failing=True)

    def offer(self, rec: PredictionRecord) -> bool:
        """Queue one record if the queue has room now (never waits: the event loop may call
        it); False if it has none, and the caller hands it to `record` on a thread."""
        row = self._row(rec)
        with self._state:
            if self._closed or not self._thread.is_alive():
                return False  # `record` says why
            try:
                self._queue.put_nowait(row)
            except queue.Full:
                return False
        self._queued(row)
        return True

    def _row(self, rec: PredictionRecord) -> tuple[Any, ...]:
        row = _COLUMNS_OF(rec)  # one C call (dataclasses.astuple deep-copies: slow)
        if row[_IMAGE] is not None and not self.store_images:
            return (*row[:_IMAGE], None, *row[_IMAGE + 1 :])
        return row

    @property
    def failure(self) -> str | None:
        """Why the writer cannot write now (None while healthy)."""
        return self._failure

    def close_within(self, timeout: float | None) -> int:
        """Write what is queued, retrying failed writes for at most `timeout` seconds, then
        stop. Returns the rows that could not be written (0: everything is on disk)."""
        with self._state:
            if self._give_up_at is None and timeout is not None:
                self._give_up_at = time.monotonic() + timeout
        with contextlib.suppress(PneumoError):  # still alive after the grace period: counted
            self.close(None if timeout is None else timeout + 5.0)
        with self._state:
            return self._lost + (self._queue.qsize() if self._thread.is_alive() else 0)

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
                raise PneumoError(f"prediction log {self.name}: the writer stopped (see the log)")
            if deadline is not None and time.monotonic() >= deadline:
                raise PneumoError(f"prediction log {self.name}: not flushed after {timeout} s")

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
                f"prediction log {self.name}: {self._queue.qsize()} rows still unwritten after "
                f"{timeout} s ({self._failure or 'the writer is busy'})"
            )

    def stats(self) -> dict[str, Any]:
        """For a health endpoint: rows written so far, rows queued, the last write failure."""
        with self._state:
            stats = {
                "written": self._written,
                "queued": self._queue.qsize(),
                "closed": self._closed,
                "failure": self._failure,
            }
            if self._lost:
                stats["lost"] = self._lost
            return stats

    def __enter__(self) -> PredictionLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- reading ---------------------------------------------------------------------------

    def summary(self, hours: float = 24.0, now: float | None = None) -> dict[str, Any]:
        """`summarize` on this log (rows may lag `record` by one batch: `flush()` first)."""
        return summarize(self.target, hours=hours, now=now)

    def drift(self, **kwargs: Any) -> dict[str, Any]:
        """`drift_report` on this log; same keyword arguments."""
        return drift_report(self.target, **kwargs)

    # --- internals -------------------------------------------------------------------------

    def _put(self, item: object, drop_when_failing: bool = False) -> None:
        with self._state:
            if self._closed:
                raise UsageError(f"prediction log {self.name} is closed")
            if not self._thread.is_alive():
                raise PneumoError(f"prediction log {self.name}: the writer stopped (see the log)")
            self._putting += 1
        try:
            self._put_checked(item, drop_when_failing)
        finally:
            with self._state:
                self._putting -= 1

    def _put_checked(self, item: object, drop_when_failing: bool = False) -> None:
        while True:  # a writer that died would otherwise leave a full queue blocking forever
            try:
                self._queue.put(item, timeout=0.2 if drop_when_failing else 1.0)
                self._queued(item)
                return
            except queue.Full:
                if not self._thread.is_alive():
                    raise PneumoError(f"prediction log {self.name}: the writer stopped") from None
                if drop_when_failing and self._failure is not None:
                    with self._state:
                        self._lost += 1
                    return

    def _queued(self, item: object) -> None:
        """Wake the writer early for what must not wait out a batch's time."""
        if not isinstance(item, tuple) or self._queue.qsize() >= BATCH_ROWS:
            self._urgent.set()

    def _run(self, conn: Conn) -> None:
        stopping = False
        try:
            while True:
                rows, markers, stop = self._collect()
                if rows:
                    conn = self._same_file(conn)
                    conn, written = self._write(conn, rows)
                    if not written:
                        self._give_up(len(rows), markers)
                        return
                for marker in markers:
                    marker.set()
                stopping = stopping or stop
                if stopping:
                    with self._state:
                        if self._putting == 0 and self._queue.empty():
                            return
                elif self.retention_days > 0 and time.monotonic() >= self._next_prune:
                    paused = prune(self._db, conn, self.retention_days, self.name)
                    self._next_prune = time.monotonic() + (PRUNE_RETRY if paused else PRUNE_EVERY)
        except Exception:
            log.exception("prediction log %s: the writer failed", self.name)
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
            if self._queue.empty():
                remaining = deadline - time.monotonic()
                if stop or remaining <= 0:
                    break
                # Records do not wake the writer one by one (a thread switch each, in a server
                # scoring hundreds a second): it waits out the batch's time, woken early by a
                # flush, a close or a full batch only.
                self._urgent.wait(remaining)
                self._urgent.clear()
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
        return rows, markers, stop

    def _write(self, conn: Conn, rows: list[tuple]) -> tuple[Conn, bool]:
        """Commit `rows`, retrying while it fails (disk full, locked by another process, the
        database server unreachable): the writer's connection, and False once close_within's
        deadline passed without success."""
        delay = 0.05
        while True:
            try:
                conn = self._db.revive(conn)
                with conn.transaction():  # one transaction per batch
                    conn.executemany(_INSERT, rows)
                break
            except self._db.errors as e:
                failure = f"{type(e).__name__}: {e}"
                if self._failure is None:  # logged once per change of state, not per retry
                    log.error(
                        "prediction log %s: cannot write (%s); keeping up to %d rows and "
                        "retrying, further rows are lost until it can write again",
                        self.name,
                        failure,
                        self._queue.maxsize,
                    )
                with self._state:
                    self._failure = failure
                    give_up = self._give_up_at is not None and time.monotonic() >= self._give_up_at
                if give_up:
                    return conn, False
                time.sleep(delay)
                delay = min(1.0, delay * 2)
        with self._state:
            self._written += len(rows)
            recovered, self._failure = self._failure is not None, None
        if recovered:
            log.warning(
                "prediction log %s: writing again (%d rows lost meanwhile)",
                self.name,
                self._lost,
            )
        return conn, True

    def _give_up(self, in_hand: int, markers: list[threading.Event]) -> None:
        """Shutdown while the writer cannot write: count what is left as lost, then stop."""
        left = 0
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, threading.Event):
                markers.append(item)
            elif item is not _STOP:
                left += 1
        with self._state:
            self._lost += in_hand + left
        for marker in markers:
            marker.set()

    def _same_file(self, conn: Conn) -> Conn:
        """The writer's connection, to a new file if the log's was deleted or replaced (SQLite
        would write on into the deleted inode, and every row would be lost)."""
        if not self._db.replaced():
            return conn
        log.error(
            "prediction log %s was deleted or replaced while the server ran: the rows it held "
            "are gone from it; a new log is in its place",
            self.name,
        )
        conn.close()
        self._db.forget()
        return _open_writer(self._db)


def _open_writer(db: Database) -> Conn:
    conn = open_store(db, "predictions", relaxed_sync=True)
    try:
        check_columns(conn, db.name, COLUMNS)
    except BaseException:
        conn.close()
        raise
    return conn


__all__ = ["PredictionLog", "PredictionRecord", "drift_report", "summarize"]
