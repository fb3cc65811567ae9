"""PostgreSQL, for several servers that share one prediction log and one job queue (a
postgresql:// URL in `--database`). Imported only for such a URL: psycopg (the 'postgres'
extra) loads here, or the URL is refused naming the extra.

Each server keeps a few idle connections for the job store's short calls, one for the log's
writer, and one for its job runner's claims: a session-level advisory lock per job it scores.
The database releases those locks when the session ends, so the jobs of a server that dies
(its connection closed, or silent for about a minute: TCP keepalives) go to another runner.
Deleted rows are left to autovacuum.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pneumo_onnx.engine.errors import MissingExtraError
from pneumo_onnx.engine.serve.store.backend import (
    POSTGRES,
    Conn,
    Database,
    RunnerLease,
    display_name,
    location,
)

log = logging.getLogger(__name__)

CLAIM_NAMESPACE = 0x706E6A62  # "pnjb": the first key of a job's advisory lock
IDLE_CONNECTIONS = 4  # kept open for the job store's calls; more are opened when needed
CONNECT_SECONDS = 10
# A runner's session: the database notices a vanished server (a machine that lost power, a
# network cut) within about idle + interval * count seconds, and frees its jobs.
KEEPALIVES = {"tcp_keepalives_idle": 30, "tcp_keepalives_interval": 10, "tcp_keepalives_count": 3}


def _driver() -> Any:
    try:
        import psycopg
    except ImportError as e:
        raise MissingExtraError("postgres", "a postgresql:// database", e.name or "psycopg") from e
    return psycopg


class PostgresDatabase(Database):
    dialect = POSTGRES

    def __init__(self, url: str) -> None:
        self._psycopg = _driver()
        self.url = url
        self.target = url
        self.name = display_name(url)
        self.where = location(url)
        self.errors = (self._psycopg.Error,)
        self.bugs = (self._psycopg.IntegrityError, self._psycopg.ProgrammingError)
        self.unreachable = (self._psycopg.OperationalError,)
        self._idle: list[Conn] = []
        self._lock = threading.Lock()
        # A store dropped without close(): its idle connections closed, not left to the GC.
        weakref.finalize(self, _close_all, self._idle)

    def connect(self, *, read_only: bool = False, relaxed_sync: bool = False) -> Conn:
        options: dict[str, Any] = {"autocommit": True, "application_name": "pneumo"}
        if "connect_timeout" not in self.url:
            options["connect_timeout"] = CONNECT_SECONDS
        raw = self._psycopg.connect(self.url, **options)
        conn = Conn(raw, POSTGRES, self.errors)
        if read_only:
            try:
                raw.execute("SET default_transaction_read_only = on")
            except BaseException:
                conn.close()
                raise
        return conn

    @contextmanager
    def connection(self) -> Iterator[Conn]:
        with self._lock:
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            conn = self.connect()
        conn.changes = 0
        try:
            yield conn
        finally:
            idle = not conn.broken and conn.raw.info.transaction_status == _IDLE
            with self._lock:
                kept = idle and len(self._idle) < IDLE_CONNECTIONS
                if kept:
                    self._idle.append(conn)
            if not kept:
                conn.close()

    def runner_lease(self) -> RunnerLease:
        return AdvisoryLease(self)

    def close(self) -> None:
        with self._lock:
            idle = list(self._idle)
            self._idle.clear()
        _close_all(idle)


def _close_all(conns: list[Conn]) -> None:
    for conn in conns:
        conn.close()


_IDLE = 0  # psycopg.pq.TransactionStatus.IDLE: no transaction open on the connection


class AdvisoryLease:
    """A job belongs to the runner whose session holds its advisory lock (taken without
    waiting: a job another runner holds is skipped, as SKIP LOCKED skips a locked row)."""

    def __init__(self, database: PostgresDatabase) -> None:
        self._database = database
        self._conn: Conn | None = None
        self._down = False  # the last connection attempt failed (logged once)

    def acquire(self) -> bool:
        if self._conn is not None and not self._conn.broken:
            return True
        self.close()
        try:
            conn = self._database.connect()
            for name, value in KEEPALIVES.items():
                conn.execute(f"SET {name} = {value}")
        except self._database.errors as e:
            if not self._down:
                log.error("job runner: cannot reach %s (%s)", self._database.name, e)
            self._down = True
            return False
        if self._down:
            log.warning("job runner: %s reachable again", self._database.name)
        self._conn, self._down = conn, False
        return True

    def hold(self, job_id: str) -> bool:
        return self._ask(f"SELECT pg_try_advisory_lock({CLAIM_NAMESPACE}, hashtext(?))", job_id)

    def holds(self, job_id: str) -> bool:
        return self._ask("SELECT TRUE", None)  # a live session still holds its locks

    def release(self, job_id: str) -> None:
        self._ask(f"SELECT pg_advisory_unlock({CLAIM_NAMESPACE}, hashtext(?))", job_id)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()  # the database releases every lock of the session
            self._conn = None

    def _ask(self, sql: str, job_id: str | None) -> bool:
        """The answer of a one-value query on the lease's session; False once it is lost."""
        if self._conn is None:
            return False
        try:
            row = self._conn.execute(sql, () if job_id is None else (job_id,)).fetchone()
        except self._database.errors as e:
            log.error("job runner: lost its session on %s (%s)", self._database.name, e)
            self.close()
            return False
        return bool(row[0])
