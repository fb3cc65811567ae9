"""SQLite, the embedded default: one file per store in the state folder, in WAL mode, so that
reports read while the writer commits. What only a file needs lives here: its WAL kept under
WAL_LIMIT_BYTES, free pages given back after deletions, a file deleted or replaced under the
server noticed, and one job runner per store across processes (a lock file beside it)."""

from __future__ import annotations

import math
import os
import sqlite3
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows has no flock: one job runner per process, as configured
    fcntl = None  # type: ignore[assignment]

from pneumo_onnx.engine.errors import UsageError
from pneumo_onnx.engine.serve.store.backend import SQLITE, Conn, Database, RunnerLease

WAL_LIMIT_BYTES = 64 * 2**20  # the WAL file is truncated to this after each checkpoint
VACUUM_PAGES = 2048  # free pages given back per step (8 MB of 4 KB pages)
READER_CACHE_KB = 16 * 1024  # a report's SQLite page cache (and sort memory) at most
BUSY_SECONDS = 30.0  # how long a statement waits for another process's write lock


class SqliteDatabase(Database):
    dialect = SQLITE
    errors = (sqlite3.Error,)
    bugs = (sqlite3.IntegrityError, sqlite3.ProgrammingError)
    unreachable = (sqlite3.OperationalError,)

    def __init__(self, path: Path) -> None:
        self.path = path
        self.target = path
        self.name = self.where = path.name
        self._inode: int | None = None

    def connect(self, *, read_only: bool = False, relaxed_sync: bool = False) -> Conn:
        if read_only:  # never takes the writer's lock; works on a copy of a live log too
            raw = sqlite3.connect(
                self.path.resolve().as_uri() + "?mode=ro",
                uri=True,
                isolation_level=None,
                check_same_thread=False,
            )
        else:
            raw = sqlite3.connect(
                self.path, timeout=BUSY_SECONDS, isolation_level=None, check_same_thread=False
            )
        conn = Conn(raw, SQLITE, self.errors)
        try:
            if read_only:
                raw.execute(f"PRAGMA cache_size=-{READER_CACHE_KB}")  # the sorter spills past it
            else:
                raw.execute(f"PRAGMA journal_size_limit={WAL_LIMIT_BYTES}")
            if relaxed_sync:  # in WAL mode a process crash loses nothing committed
                raw.execute("PRAGMA synchronous=NORMAL")
            # SQLite's own ln() exists only in builds with SQLITE_ENABLE_MATH_FUNCTIONS, and a
            # process that loaded another libsqlite3 (Ray's, TensorFlow's) may get one without.
            raw.create_function("pneumo_ln", 1, math.log, deterministic=True)
        except BaseException:
            conn.close()
            raise
        return conn

    def exists(self) -> bool:
        return self.path.is_file()

    def prepare(self, conn: Conn) -> None:
        """Free pages go back to the file system on `reclaim` (incremental vacuum: only takes
        effect on a new, empty file), and the journal is a WAL."""
        conn.raw.execute("PRAGMA auto_vacuum=INCREMENTAL")
        mode = conn.raw.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode != "wal":
            raise UsageError(f"{self.name}: SQLite refused WAL mode ({mode})")

    def remember(self) -> None:
        self._inode = self.path.stat().st_ino

    def replaced(self) -> bool:
        """SQLite would write on into a deleted file's inode (every row lost), or create a
        new file without tables."""
        try:
            inode: int | None = self.path.stat().st_ino
        except FileNotFoundError:
            inode = None
        return inode != self._inode

    def forget(self) -> None:
        if not self.path.exists():  # the old file's journal must not meet a new file
            for stale in ("-wal", "-shm"):
                self.path.with_name(self.path.name + stale).unlink(missing_ok=True)

    def busy(self, conn: Conn) -> bool:
        """Checkpoint what readers allow; True if the WAL file is over WAL_LIMIT_BYTES and
        still holds frames a reader keeps from being copied back (it would grow with each
        write). Once every frame is copied back, the next write starts the WAL over."""
        _, frames, copied = conn.raw.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        wal = self.path.with_name(self.path.name + "-wal")
        try:
            return bool(frames > copied and wal.stat().st_size > WAL_LIMIT_BYTES)
        except FileNotFoundError:
            return False

    def reclaim(self, conn: Conn) -> bool:
        """Free pages (files created with `prepare`), VACUUM_PAGES at a time, and the WAL,
        checkpointed and truncated. Stops (False) while the WAL is over WAL_LIMIT_BYTES:
        moving pages writes them to the WAL, and while a reader holds it SQLite cannot reset
        it."""
        raw = conn.raw
        incremental = raw.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # older files: no
        while incremental and raw.execute("PRAGMA freelist_count").fetchone()[0] > 0:
            if self.busy(conn):
                return False
            # executescript steps the pragma to its end: execute() would free one page per call.
            raw.executescript(f"PRAGMA incremental_vacuum({VACUUM_PAGES});")
        raw.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return True

    def runner_lease(self) -> RunnerLease:
        return FileLease(self.path.with_name(self.path.name + ".runner"))


class FileLease:
    """One runner per job store across processes (`pneumo serve --workers N`, or two servers
    sharing a state folder): an exclusive flock that the OS releases when its holder exits,
    so a standby runner takes over the jobs of a worker that died. The holder takes any job."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> bool:
        if self._fd is not None or fcntl is None:
            return True
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def hold(self, job_id: str) -> bool:
        return True

    def holds(self, job_id: str) -> bool:
        return True

    def release(self, job_id: str) -> None:
        pass

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing releases the lock
            self._fd = None
