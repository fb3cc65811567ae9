"""Which database a store's target names: a SQLite file (a path) or a PostgreSQL database (a
postgresql:// URL). Apart from `backend.py` so that the two backends, which build on it,
are imported only from here, and psycopg only for a URL."""

from __future__ import annotations

from pathlib import Path

from pneumo_onnx.engine.serve.store.backend import Database, Target, is_postgres


def open_database(target: Target) -> Database:
    """The database behind `target`; nothing is connected yet."""
    if is_postgres(target):
        from pneumo_onnx.engine.serve.store.postgres_backend import PostgresDatabase

        return PostgresDatabase(str(target))
    from pneumo_onnx.engine.serve.store.sqlite_backend import SqliteDatabase

    return SqliteDatabase(Path(target))
