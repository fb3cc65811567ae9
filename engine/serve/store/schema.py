"""The tables of the server's state, written once for both databases, and the versioned
migrations that create them and bring older ones up to date.

The prediction log (`predictions`: one row per scored image) and the job store (`jobs`, and
their images and results in `job_items`) are each a "store": with SQLite, one file each
(`predictions.db`, `jobs.db`, plain SQLite readable by any tool); with PostgreSQL, tables of
one database that several servers share. `pneumo_schema` holds each store's version. Every
server migrates at startup inside one transaction that holds the "schema" lock (SQLite: the
write lock; PostgreSQL: an advisory lock), so two servers starting at once migrate once.
Migrations only add tables and columns with defaults: a server one version behind still
reads and writes a migrated database (a rolling upgrade).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from pneumo_onnx.engine.errors import UsageError
from pneumo_onnx.engine.serve.store.backend import Conn, Database, scrub

PREDICTIONS = (
    """CREATE TABLE IF NOT EXISTS predictions (
    id {row_id},
    time {real} NOT NULL,
    request_id TEXT NOT NULL,
    route TEXT NOT NULL,
    model_name TEXT NOT NULL,
    model_version TEXT NOT NULL,
    score {real},
    label TEXT,
    threshold {real},
    latency_ms {real} NOT NULL,
    image_sha256 TEXT NOT NULL,
    image {blob},
    error TEXT
)""",
    "CREATE INDEX IF NOT EXISTS predictions_time ON predictions (time)",
)
JOBS = (
    """CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    created {real} NOT NULL,
    updated {real} NOT NULL,
    threshold {real},
    total INTEGER NOT NULL,
    done INTEGER NOT NULL DEFAULT 0,
    errors INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    owner TEXT NOT NULL DEFAULT '',
    bytes {bigint} NOT NULL DEFAULT 0
)""",
    "CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status, created)",
    """CREATE TABLE IF NOT EXISTS job_items (
    job_id TEXT NOT NULL REFERENCES jobs (id),
    idx INTEGER NOT NULL,
    name TEXT NOT NULL,
    image {blob},
    scored INTEGER NOT NULL DEFAULT 0,
    prediction TEXT,
    confidence {real},
    raw_score {real},
    threshold {real},
    error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (job_id, idx)
)""",
    "CREATE TABLE IF NOT EXISTS probe (id INTEGER PRIMARY KEY, at {real} NOT NULL)",
)
# Columns added to the job store before it was versioned: (table, column, definition), added
# to SQLite files written by those layouts.
JOB_COLUMNS = (
    ("jobs", "owner", "TEXT NOT NULL DEFAULT ''"),
    ("jobs", "bytes", "{bigint} NOT NULL DEFAULT 0"),
    ("job_items", "attempts", "INTEGER NOT NULL DEFAULT 0"),
)
# Columns the prediction log gained after version 1 (version 2: who asked, a client or a batch
# job; rows written before it, or by a server one version behind, were requests).
PREDICTION_SOURCE = (("predictions", "source", "TEXT NOT NULL DEFAULT 'interactive'"),)
# Version 3: for audit, who called (an API key's fingerprint, else the client's address) and,
# for a DICOM image, the UIDs of its study, series and instance.
PREDICTION_AUDIT = (
    ("predictions", "caller", "TEXT NOT NULL DEFAULT ''"),
    ("predictions", "study_uid", "TEXT"),
    ("predictions", "series_uid", "TEXT"),
    ("predictions", "sop_uid", "TEXT"),
)
VERSIONS = """CREATE TABLE IF NOT EXISTS pneumo_schema (
    store TEXT PRIMARY KEY,
    version INTEGER NOT NULL
)"""
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
WHAT = {"predictions": "prediction log", "jobs": "job store"}


def _create(statements: Sequence[str]) -> Callable[[Conn], None]:
    def step(conn: Conn) -> None:
        for sql in statements:
            conn.execute(conn.dialect.ddl(sql))

    return step


def _predictions_v2(conn: Conn) -> None:
    add_columns(conn, PREDICTION_SOURCE)


def _predictions_v3(conn: Conn) -> None:
    add_columns(conn, PREDICTION_AUDIT)


def _jobs_v1(conn: Conn) -> None:
    _create(JOBS)(conn)
    add_columns(conn, JOB_COLUMNS)  # files from before versioning may lack some


# Each store's migrations, in order: version N is the first N steps applied. Step 1 creates
# the first versioned layout (IF NOT EXISTS: a file from before versioning keeps its tables);
# later steps add to it.
MIGRATIONS: dict[str, tuple[Callable[[Conn], None], ...]] = {
    "predictions": (_create(PREDICTIONS), _predictions_v2, _predictions_v3),
    "jobs": (_jobs_v1,),
}


def open_store(db: Database, store: str, *, relaxed_sync: bool = False) -> Conn:
    """A writer's connection to `db` with `store`'s tables created or migrated. UsageError
    (exit 2 at startup) naming the database, never its password, if that fails."""
    try:
        conn = db.connect(relaxed_sync=relaxed_sync)
    except db.errors as e:
        raise UsageError(f"cannot open {WHAT[store]} {db.where}: {scrub(db.target, e)}") from e
    try:
        migrate(db, conn, store)
    except db.errors as e:
        conn.close()
        raise UsageError(f"cannot open {WHAT[store]} {db.where}: {scrub(db.target, e)}") from e
    except BaseException:
        conn.close()
        raise
    return conn


def migrate(db: Database, conn: Conn, store: str) -> int:
    """Bring `store`'s tables to the newest version, once however many servers start at
    once; returns the version the database had."""
    db.prepare(conn)  # SQLite: the journal mode, outside any transaction
    steps = MIGRATIONS[store]
    with conn.transaction(lock="schema"):
        conn.execute(VERSIONS)
        row = conn.execute("SELECT version FROM pneumo_schema WHERE store = ?", (store,)).fetchone()
        have = int(row[0]) if row else 0
        for step in steps[have:]:
            step(conn)
        if have < len(steps):
            conn.execute(
                "INSERT INTO pneumo_schema (store, version) VALUES (?, ?) "
                "ON CONFLICT (store) DO UPDATE SET version = excluded.version",
                (store, len(steps)),
            )
    db.remember()
    return have


def add_columns(conn: Conn, columns: Sequence[tuple[str, str, str]]) -> None:
    """Bring tables written by an older layout up to date (columns with defaults only)."""
    for table, column, definition in columns:
        if column not in conn.columns(table):
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {conn.dialect.ddl(definition)}")


def check_columns(conn: Conn, name: str, columns: Sequence[str] = READ_COLUMNS) -> None:
    """Refuse a database that is not a prediction log (or an older layout of one)."""
    have = conn.columns("predictions")
    if not have:
        raise UsageError(f"{name} is not a pneumo prediction log: no 'predictions' table")
    missing = sorted(set(columns) - have)
    if missing:
        raise UsageError(f"{name} is not a pneumo prediction log: no columns {missing}")
