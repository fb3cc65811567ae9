"""Asynchronous batch jobs kept in SQLite, so that a restart loses no accepted job.

`JobStore.create` stores a job and every image's bytes in one transaction before the job id
is returned; the job runner (engine.serve.job_runner) scores queued jobs in chunks, committing
each chunk's results together with the progress and dropping the scored images' bytes. An item
is marked scored in the same transaction that stores its result, so no result is ever written
twice. Results come back in the one row schema (engine.runtime.results.ROW_COLUMNS).
"""

from __future__ import annotations

import csv
import io
import sqlite3
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from engine.contract import check_threshold
from engine.errors import ConflictError, NotFoundError, UsageError
from engine.runtime.results import ROW_COLUMNS, Result, Row
from engine.serve.store import schema

RESULT_FIELDS = ("prediction", "confidence", "raw_score", "threshold")


class JobStore:
    """Jobs and their images in one SQLite file; safe to share between threads (one short
    connection per call) and between a server and a restarted server."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            with self._db() as conn:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.executescript(schema.JOBS)
        except sqlite3.Error as e:
            raise UsageError(f"cannot open job store {self.path.name}: {e}") from e

    def create(self, items: Sequence[tuple[str, bytes]], threshold: float | None = None) -> str:
        """Store a job and its images; returns its id (32 hex digits) once it is durable."""
        if not items:
            raise UsageError("a job needs at least one image, got none")
        for item in items:
            if not (
                isinstance(item, tuple)
                and len(item) == 2
                and isinstance(item[0], str)
                and isinstance(item[1], bytes | bytearray)
            ):
                raise UsageError(f"expected (name, image bytes) pairs, got {type(item).__name__}")
        if threshold is not None:
            threshold = check_threshold(threshold)
        job_id = uuid.uuid4().hex
        now = time.time()
        with self._db() as conn, conn:
            conn.execute(
                "INSERT INTO jobs (id, status, created, updated, threshold, total) "
                "VALUES (?, 'queued', ?, ?, ?, ?)",
                (job_id, now, now, threshold, len(items)),
            )
            conn.executemany(
                "INSERT INTO job_items (job_id, idx, name, image) VALUES (?, ?, ?, ?)",
                ((job_id, i, name, bytes(blob)) for i, (name, blob) in enumerate(items)),
            )
        return job_id

    def get(self, job_id: str) -> dict[str, Any]:
        """Status and progress; `results` once done, `error` if the job failed."""
        with self._db() as conn:
            job = self._job(conn, job_id)
            if job["status"] == "done":
                job["results"] = self._results(conn, job_id)
        return job

    def results(self, job_id: str) -> list[Row]:
        """Per-image results in upload order; ConflictError until the job is done."""
        with self._db() as conn:
            self._require_done(self._job(conn, job_id))
            return self._results(conn, job_id)

    def results_csv(self, job_id: str) -> str:
        """The results as CSV, in the one row schema."""
        out = io.StringIO()
        writer = csv.DictWriter(out, ROW_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.results(job_id))
        return out.getvalue()

    # --- for JobRunner -----------------------------------------------------------------------

    def claim_next(self) -> tuple[str, float | None] | None:
        """The oldest unfinished job, interrupted (running) ones first, now marked running."""
        with self._db() as conn, conn:
            row = conn.execute(
                "SELECT id, threshold FROM jobs WHERE status IN ('running', 'queued') "
                "ORDER BY status = 'running' DESC, created LIMIT 1"
            ).fetchone()
            if row is None:
                return None
            conn.execute(
                "UPDATE jobs SET status = 'running', updated = ? WHERE id = ?",
                (time.time(), row[0]),
            )
            return row[0], row[1]

    def pending(self, job_id: str, limit: int) -> list[tuple[int, str, bytes]]:
        """Up to `limit` unscored items of a job, as (index, name, image bytes), in upload
        order."""
        with self._db() as conn:
            return conn.execute(
                "SELECT idx, name, image FROM job_items WHERE job_id = ? AND scored = 0 "
                "ORDER BY idx LIMIT ?",
                (job_id, limit),
            ).fetchall()

    def save(self, job_id: str, results: Sequence[tuple[int, Result]]) -> None:
        """Store a chunk's results and progress in one transaction; drop the scored bytes.

        Only items still unscored are written and counted, so a replayed chunk changes nothing.
        """
        with self._db() as conn, conn:
            done = errors = 0
            for idx, result in results:
                error = result.get("error")
                values = [result.get(f) for f in RESULT_FIELDS]
                cursor = conn.execute(
                    "UPDATE job_items SET scored = 1, image = NULL, prediction = ?, "
                    "confidence = ?, raw_score = ?, threshold = ?, error = ? "
                    "WHERE job_id = ? AND idx = ? AND scored = 0",
                    (*values, error, job_id, idx),
                )
                done += cursor.rowcount
                errors += cursor.rowcount if error else 0
            conn.execute(
                "UPDATE jobs SET done = done + ?, errors = errors + ?, updated = ? WHERE id = ?",
                (done, errors, time.time(), job_id),
            )

    def finish(self, job_id: str, error: str | None = None) -> None:
        """Mark a job done, or failed with `error` (a message meant for the client)."""
        with self._db() as conn, conn:
            conn.execute(
                "UPDATE jobs SET status = ?, error = ?, updated = ? WHERE id = ?",
                ("failed" if error else "done", error, time.time(), job_id),
            )

    # --- internals -----------------------------------------------------------------------------

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        conn = sqlite3.connect(self.path, timeout=30.0)
        try:
            yield conn
        finally:
            conn.close()

    def _job(self, conn: sqlite3.Connection, job_id: str) -> dict[str, Any]:
        row = conn.execute(
            "SELECT id, status, created, updated, threshold, total, done, errors, error "
            "FROM jobs WHERE id = ?",
            (job_id,),
        ).fetchone()
        if row is None:
            raise NotFoundError(f"no job with id {job_id!r}")
        keys = ("id", "status", "created", "updated", "threshold", "total", "done", "errors")
        job = dict(zip(keys, row[:8], strict=True))
        job["progress"] = job["done"] / job["total"] if job["total"] else 1.0
        if row[8] is not None:
            job["error"] = row[8]
        return job

    @staticmethod
    def _require_done(job: dict[str, Any]) -> None:
        if job["status"] == "failed":
            raise ConflictError(f"job {job['id']} failed: {job.get('error')}")
        if job["status"] != "done":
            raise ConflictError(
                f"job {job['id']} is {job['status']} ({job['done']} of {job['total']} scored): "
                "results are ready when its status is done"
            )

    @staticmethod
    def _results(conn: sqlite3.Connection, job_id: str) -> list[Row]:
        rows = conn.execute(
            "SELECT name, prediction, confidence, raw_score, threshold, error FROM job_items "
            "WHERE job_id = ? ORDER BY idx",
            (job_id,),
        ).fetchall()
        return [
            Row(
                image_path=name,
                prediction=prediction,
                confidence=confidence,
                raw_score=raw_score,
                threshold=threshold,
                error=error,
            )
            for name, prediction, confidence, raw_score, threshold, error in rows
        ]
