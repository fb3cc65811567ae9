"""The seam between the stores and their database: SQLite files (the embedded default, one per
store in the state folder) or one PostgreSQL database that several servers share.

The stores (`predictions`, `reports`, `jobs`) hold one copy of each behaviour and speak to a
`Database` through a `Conn`: SQL written once with `?` placeholders and the `Dialect`'s few
words where the two differ (types, LEAST/MIN, LN, row locks), transactions that take the
store's write lock (SQLite: BEGIN IMMEDIATE; PostgreSQL: a transaction-scoped advisory lock
where the caller names one), and the upkeep only one of them needs (SQLite's WAL and free
pages, a file deleted under the server; PostgreSQL's autovacuum needs nothing from us).
psycopg is imported only when a postgresql:// URL is given (the 'postgres' extra).
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

from pneumo_onnx.engine.errors import MissingExtraError

POSTGRES_SCHEMES = ("postgresql://", "postgres://")
LOCK_NAMESPACE = 0x706E6C6B  # "pnlk": the first key of our transaction-scoped advisory locks
Target = str | Path  # a SQLite file, or a postgresql:// URL


def is_postgres(target: Target) -> bool:
    return isinstance(target, str) and target.startswith(POSTGRES_SCHEMES)


def database_problem(url: str) -> str | None:
    """Why `url` cannot be the server's shared database (None: it can), checked before the
    server starts: a postgresql:// URL, and the driver installed. Said after the setting's
    name ("--database must be ...")."""
    if not is_postgres(url):
        return (
            "must be a postgresql://user@host:port/dbname URL, got "
            f"{display_name(url)!r} (without it: SQLite files in --state-dir)"
        )
    try:
        importlib.import_module("psycopg")
    except ImportError as e:
        missing = e.name or "psycopg"
        return "is " + MissingExtraError("postgres", "a postgresql:// database", missing).message
    return None


def display_name(target: Target) -> str:
    """What messages and reports call the database: a file's name (never the server's path),
    or a URL's database name (never its user, password or host)."""
    if not is_postgres(target):
        return Path(target).name
    parts = urlsplit(str(target))
    return f"postgresql:///{unquote(parts.path.lstrip('/')) or parts.username or ''}"


def location(target: Target) -> str:
    """What startup errors name: a file's name, or a URL's host, port and database (never
    its user or password)."""
    if not is_postgres(target):
        return Path(target).name
    parts = urlsplit(str(target))
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:  # a port that is not a number: the driver says so
        port = ""
    return f"{parts.hostname or 'localhost'}{port}/{unquote(parts.path.lstrip('/'))}"


def scrub(target: Target, error: BaseException) -> str:
    """A driver's message, first line only, without the URL's password should it quote it."""
    text = (str(error).strip().splitlines() or [type(error).__name__])[0]
    password = urlsplit(str(target)).password if is_postgres(target) else None
    return text.replace(password, "***") if password else text


@dataclass(frozen=True)
class Dialect:
    """The words of SQL that differ between the two databases."""

    name: str
    placeholder: str  # how the driver spells a parameter; the stores write `?`
    real: str  # 8-byte floats (PostgreSQL's REAL has 4)
    bigint: str
    blob: str
    row_id: str  # an integer key the database assigns
    least: str  # of two values (SQLite's two-argument MIN)
    greatest: str
    ln: str
    begin: str  # a write transaction
    lock: str | None  # takes a named lock till the transaction ends (None: `begin` did)
    skip_locked: str  # after a SELECT: rows another writer is deleting are left to it
    columns: str  # the column names of table `?`

    def sql(self, text: str) -> str:
        return text if self.placeholder == "?" else text.replace("?", self.placeholder)

    def ddl(self, text: str) -> str:
        return text.format(real=self.real, bigint=self.bigint, blob=self.blob, row_id=self.row_id)

    def integer(self, expr: str) -> str:
        """`expr` truncated toward zero to an integer, the same on both (PostgreSQL's CAST
        rounds, SQLite's truncates)."""
        if self.name == "sqlite":
            return f"CAST({expr} AS INTEGER)"
        return f"CAST(TRUNC({expr}) AS BIGINT)"


SQLITE = Dialect(
    name="sqlite",
    placeholder="?",
    real="REAL",
    bigint="INTEGER",
    blob="BLOB",
    row_id="INTEGER PRIMARY KEY",
    least="MIN",
    greatest="MAX",
    ln="pneumo_ln",  # SQLite's ln() exists only in some builds: ours is registered instead
    begin="BEGIN IMMEDIATE",  # the write lock at once: one writer at a time, no upgrade race
    lock=None,
    skip_locked="",
    columns="SELECT name FROM pragma_table_info(?)",
)
POSTGRES = Dialect(
    name="postgresql",
    placeholder="%s",
    real="DOUBLE PRECISION",
    bigint="BIGINT",
    blob="BYTEA",
    row_id="BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
    least="LEAST",
    greatest="GREATEST",
    ln="LN",
    begin="BEGIN",
    lock=f"SELECT pg_advisory_xact_lock({LOCK_NAMESPACE}, hashtext(?))",
    skip_locked=" FOR UPDATE SKIP LOCKED",
    columns="SELECT column_name FROM information_schema.columns "
    "WHERE table_schema = current_schema() AND table_name = ?",
)


class Cursor(Protocol):
    """What both drivers' cursors give back."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Conn:
    """One connection of either driver, in autocommit mode: statements outside `transaction`
    commit alone. Counts the rows its INSERT, UPDATE and DELETE statements changed."""

    def __init__(self, raw: Any, dialect: Dialect, errors: tuple[type[BaseException], ...]) -> None:
        self.raw = raw
        self.dialect = dialect
        self.errors = errors
        self.changes = 0

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        text = self.dialect.sql(sql)
        cursor: Cursor = self.raw.execute(text, params) if params else self.raw.execute(text)
        if _changes_rows(sql):
            self.changes += max(cursor.rowcount, 0)
        return cursor

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        cursor = self.raw.cursor()
        try:
            cursor.executemany(self.dialect.sql(sql), rows)
            self.changes += max(cursor.rowcount, 0)
        finally:
            cursor.close()

    @contextmanager
    def transaction(self, lock: str | None = None) -> Iterator[Conn]:
        """A write transaction, committed at the end of the block, rolled back on an error.
        With `lock`, writers that name the same lock run one at a time (SQLite: always)."""
        self.raw.execute(self.dialect.begin)
        try:
            if lock is not None and self.dialect.lock is not None:
                self.execute(self.dialect.lock, (lock,))
            yield self
            self.raw.execute("COMMIT")
        except BaseException:
            with suppress(*self.errors):  # a broken connection: the database rolls it back
                self.raw.execute("ROLLBACK")
            raise

    def columns(self, table: str) -> set[str]:
        return {row[0] for row in self.execute(self.dialect.columns, (table,))}

    @property
    def broken(self) -> bool:
        """The connection is lost (PostgreSQL; a SQLite connection never is)."""
        return bool(getattr(self.raw, "broken", False) or getattr(self.raw, "closed", False))

    def close(self) -> None:
        with suppress(*self.errors):
            self.raw.close()


def _changes_rows(sql: str) -> bool:
    return sql.lstrip()[:6].upper() in ("INSERT", "UPDATE", "DELETE")


class RunnerLease(Protocol):
    """Which jobs this process's job runner may score. SQLite: one runner per store across
    processes (a lock file), and that runner takes any job. PostgreSQL: every server runs
    one, and a job belongs to the runner holding its advisory lock; a runner that dies
    loses its connection, and with it its jobs, to the others."""

    def acquire(self) -> bool:
        """May this runner take jobs now (False: another runs them, stand by)."""
        ...

    def hold(self, job_id: str) -> bool:
        """Claim `job_id` for this runner; False if another runner holds it."""
        ...

    def holds(self, job_id: str) -> bool:
        """Is `job_id` still ours (False once the claim was lost with the connection)."""
        ...

    def release(self, job_id: str) -> None: ...

    def close(self) -> None: ...


class Database(ABC):
    """A store's database: connections and the upkeep its kind needs."""

    dialect: Dialect
    target: Target  # what `open_database` was given (reports open the same)
    name: str  # `display_name(target)`
    where: str  # `location(target)`
    errors: tuple[type[BaseException], ...]  # everything the driver raises
    bugs: tuple[type[BaseException], ...]  # our mistakes: never a store's state
    unreachable: tuple[type[BaseException], ...]  # cannot open or reach it (not: wrong content)

    @abstractmethod
    def connect(self, *, read_only: bool = False, relaxed_sync: bool = False) -> Conn:
        """A new connection, the caller's to close. `relaxed_sync`: a commit may be lost to
        a power cut, never to a process crash (SQLite: synchronous=NORMAL in WAL mode)."""

    @contextmanager
    def connection(self) -> Iterator[Conn]:
        """A connection for one call (PostgreSQL: from a small pool)."""
        conn = self.connect()
        try:
            yield conn
        finally:
            conn.close()

    def exists(self) -> bool:
        """False when there is certainly nothing to read (a SQLite file that is missing)."""
        return True

    def prepare(self, conn: Conn) -> None:  # noqa: B027 (a hook: SQLite's alone)
        """Settings taken before the first table of a new database is created."""

    def remember(self) -> None:  # noqa: B027 (a hook: SQLite's alone)
        """The tables are created: what `replaced` compares against."""

    def replaced(self) -> bool:
        """Was the database deleted or replaced under us since `remember`?"""
        return False

    def forget(self) -> None:  # noqa: B027 (a hook: SQLite's alone)
        """Drop what belonged to a deleted database before it is created again."""

    def revive(self, conn: Conn) -> Conn:
        """`conn`, or a new connection if it was lost."""
        if not conn.broken:
            return conn
        conn.close()
        return self.connect()

    def busy(self, conn: Conn) -> bool:
        """Should a long deletion pause now (SQLite: readers hold a large WAL)?"""
        return False

    def reclaim(self, conn: Conn) -> bool:
        """Give the space of deleted rows back; False if it had to stop early."""
        return True

    @abstractmethod
    def runner_lease(self) -> RunnerLease: ...

    def close(self) -> None:  # noqa: B027 (a hook: PostgreSQL's pool alone)
        """Close pooled connections."""
