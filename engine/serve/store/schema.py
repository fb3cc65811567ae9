"""The SQL of the server's two databases, and the check that a file holds the tables we read.

`predictions.db`: one row per scored image (`predictions`). `jobs.db`: accepted batch jobs
(`jobs`) and their images and results (`job_items`). Plain SQLite: readable by any tool.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path

from pneumo_onnx.engine.errors import UsageError

PREDICTIONS = """
CREATE TABLE IF NOT EXISTS predictions (
    id INTEGER PRIMARY KEY,
    time REAL NOT NULL,
    request_id TEXT NOT NULL,
    route TEXT NOT NULL,
    model_name TEXT NOT NULL,
    model_version TEXT NOT NULL,
    score REAL,
    label TEXT,
    threshold REAL,
    latency_ms REAL NOT NULL,
    image_sha256 TEXT NOT NULL,
    source TEXT NOT NULL DEFAULT 'interactive',
    image BLOB,
    error TEXT
);
CREATE INDEX IF NOT EXISTS predictions_time ON predictions (time);
"""
JOBS = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    threshold REAL,
    total INTEGER NOT NULL,
    done INTEGER NOT NULL DEFAULT 0,
    errors INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    owner TEXT NOT NULL DEFAULT '',
    bytes INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status, created);
CREATE TABLE IF NOT EXISTS job_items (
    job_id TEXT NOT NULL REFERENCES jobs (id),
    idx INTEGER NOT NULL,
    name TEXT NOT NULL,
    image BLOB,
    scored INTEGER NOT NULL DEFAULT 0,
    prediction TEXT,
    confidence REAL,
    raw_score REAL,
    threshold REAL,
    error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (job_id, idx)
);
CREATE TABLE IF NOT EXISTS probe (id INTEGER PRIMARY KEY, at REAL NOT NULL);
"""
# Columns added since the first layout: (table, column, definition), added to older files.
JOB_COLUMNS = (
    ("jobs", "owner", "TEXT NOT NULL DEFAULT ''"),
    ("jobs", "bytes", "INTEGER NOT NULL DEFAULT 0"),
    ("job_items", "attempts", "INTEGER NOT NULL DEFAULT 0"),
)
PREDICTION_COLUMNS = (("predictions", "source", "TEXT NOT NULL DEFAULT 'interactive'"),)
WAL_LIMIT_BYTES = 64 * 2**20  # the WAL file is truncated to this after each checkpoint
VACUUM_PAGES = 2048  # free pages given back per step (8 MB of 4 KB pages)
# What the reports read: a log written by an older or newer writer only needs these.
READ_COLUMNS = (
    "time",
    "model_name",
    "model_version",
    "score",
    "label",
    "threshold",
    "latency_ms",
    "error",
)


def prepare(conn: sqlite3.Connection) -> None:
    """Before the first table of a new file: free pages go back to the file system on
    `reclaim` (incremental vacuum), and the WAL never stays larger than WAL_LIMIT_BYTES."""
    conn.execute("PRAGMA auto_vacuum=INCREMENTAL")  # only takes effect on a new, empty file
    conn.execute(f"PRAGMA journal_size_limit={WAL_LIMIT_BYTES}")


def reclaim(conn: sqlite3.Connection, path: Path | None = None) -> bool:
    """Give the space of deleted rows back to the file system: free pages (files created with
    `prepare`), VACUUM_PAGES at a time, and the WAL, checkpointed and truncated. With the
    database's `path`, stops (False) while the WAL is over WAL_LIMIT_BYTES: moving pages
    writes them to the WAL, and while a reader holds it SQLite cannot reset it."""
    incremental = conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # older files: no
    while incremental and conn.execute("PRAGMA freelist_count").fetchone()[0] > 0:
        if path is not None and wal_too_large(conn, path):
            return False
        # executescript steps the pragma to its end: execute() would free one page per call.
        conn.executescript(f"PRAGMA incremental_vacuum({VACUUM_PAGES});")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return True


def wal_too_large(conn: sqlite3.Connection, path: Path) -> bool:
    """Checkpoint what readers allow; True if the WAL file is over WAL_LIMIT_BYTES and still
    holds frames a reader keeps from being copied back (it would grow with each write). Once
    every frame is copied back, the next write starts the WAL over and truncates it."""
    _, frames, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    wal = path.with_name(path.name + "-wal")
    try:
        return frames > copied and wal.stat().st_size > WAL_LIMIT_BYTES
    except FileNotFoundError:
        return False


def add_columns(conn: sqlite3.Connection, columns: Sequence[tuple[str, str, str]]) -> None:
    """Bring a file written by an older layout up to date (columns with defaults only)."""
    for table, column, definition in columns:
        have = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
        if column not in have:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")


def check_columns(
    conn: sqlite3.Connection, path: Path, columns: Sequence[str] = READ_COLUMNS
) -> None:
    """Refuse a database that is not a prediction log (or an older layout of one)."""
    have = {row[1] for row in conn.execute("PRAGMA table_info(predictions)")}
    if not have:
        raise UsageError(f"{path.name} is not a pneumo prediction log: no 'predictions' table")
    missing = sorted(set(columns) - have)
    if missing:
        raise UsageError(f"{path.name} is not a pneumo prediction log: no columns {missing}")
