"""Asynchronous batch jobs kept in SQLite, so that a restart loses no accepted job.

`JobStore.create` stores a job and its images, one at a time from any iterable (an upload is
never held whole in memory), in one transaction before the job id is returned; the job runner
(engine.serve.dataplane.job_runner) scores queued jobs in chunks, committing each chunk's results
together with the progress and dropping the scored images' bytes. An item is marked scored in
the same transaction that stores its result, so no result is ever written twice. An item is
counted as in hand before it is scored: one that was in hand during MAX_ATTEMPTS crashes of
the process is marked failed instead of crashing it again. Jobs belong to the key that created
them; finished ones expire, and deleted space goes back to the file system.

A job is created in one write transaction taken before the store's pending bytes are read, so
concurrent uploads cannot all pass `max_pending_bytes`. A store that cannot write (a full
disk, a corrupt or deleted file) answers Overloaded (503) and says why in `failure` (readiness
reports it), logged once per change of state; `probe` (the job runner calls it) writes a row
now and then meanwhile, so that the store recovers by itself once the disk has room again. A
deleted file is recreated, empty, and said so. Results come back in the one row schema
(engine.runtime.results.ROW_COLUMNS).
"""

from __future__ import annotations

import csv
import io
import logging
import sqlite3
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from pneumo_onnx.engine.contract import check_threshold
from pneumo_onnx.engine.errors import ConflictError, NotFoundError, Overloaded, UsageError
from pneumo_onnx.engine.runtime.results import ROW_COLUMNS, Result, Row
from pneumo_onnx.engine.serve.store import schema
from pneumo_onnx.engine.serve.store.record import iso_utc

log = logging.getLogger(__name__)

RESULT_FIELDS = ("prediction", "confidence", "raw_score", "threshold")
MAX_ATTEMPTS = 3  # crashes of the process with an item in hand before that item is failed
PROBE_SECONDS = 5.0  # a failing store tries a write this often (job runner's pace)
CRASHED = (
    f"skipped: the server stopped unexpectedly {MAX_ATTEMPTS} times while scoring this image "
    "(it may crash the decoder or exhaust memory)"
)


class JobStore:
    """Jobs and their images in one SQLite file; safe to share between threads (one short
    connection per call) and between a server and a restarted server."""

    def __init__(self, path: str | Path, max_pending_bytes: int | None = None) -> None:
        self.path = Path(path)
        self.max_pending_bytes = max_pending_bytes
        self._failing: str | None = None
        self._next_probe = 0.0
        try:
            self._inode = self._create()
        except sqlite3.Error as e:
            raise UsageError(f"cannot open job store {self.path.name}: {e}") from e

    @property
    def failure(self) -> str | None:
        """Why the store cannot write now (None while healthy)."""
        return self._failing

    def create(
        self,
        items: Iterable[tuple[str, bytes]],
        threshold: float | None = None,
        owner: str = "",
    ) -> str:
        """Store a job and its images, taken one at a time from `items`; returns its id (32
        hex digits) once it is durable. Overloaded when the images of unfinished jobs would
        exceed `max_pending_bytes`."""
        if threshold is not None:
            threshold = check_threshold(threshold)
        job_id = uuid.uuid4().hex
        now = time.time()
        with self._db() as conn, conn:
            conn.execute("BEGIN IMMEDIATE")  # the write lock first: then the total is ours
            pending = conn.execute(
                "SELECT COALESCE(SUM(bytes), 0) FROM jobs WHERE status IN ('queued', 'running')"
            ).fetchone()[0]
            conn.execute(
                "INSERT INTO jobs (id, status, created, updated, threshold, total, owner) "
                "VALUES (?, 'queued', ?, ?, ?, 0, ?)",
                (job_id, now, now, threshold, owner),
            )
            count = size = 0
            for item in items:
                if not (
                    isinstance(item, tuple)
                    and len(item) == 2
                    and isinstance(item[0], str)
                    and isinstance(item[1], bytes | bytearray)
                ):
                    raise UsageError(
                        f"expected (name, image bytes) pairs, got {type(item).__name__}"
                    )
                size += len(item[1])
                if self.max_pending_bytes is not None and pending + size > self.max_pending_bytes:
                    raise Overloaded(
                        f"the job store is full ({pending / 2**20:.0f} MB of images waiting "
                        f"to be scored, at most {self.max_pending_bytes / 2**20:.0f} MB): "
                        "try again when jobs have finished",
                        retry_after=30,
                    )
                conn.execute(
                    "INSERT INTO job_items (job_id, idx, name, image) VALUES (?, ?, ?, ?)",
                    (job_id, count, item[0], bytes(item[1])),
                )
                count += 1
            if not count:
                raise UsageError("a job needs at least one image, got none")
            conn.execute("UPDATE jobs SET total = ?, bytes = ? WHERE id = ?", (count, size, job_id))
        return job_id

    def get(self, job_id: str, owner: str = "") -> dict[str, Any]:
        """Status and progress; `results` once done, `error` if the job failed."""
        with self._db() as conn:
            job = self._job(conn, job_id, owner)
            if job["status"] == "done":
                job["results"] = self._results(conn, job_id)
        return job

    def results(self, job_id: str, owner: str = "") -> list[Row]:
        """Per-image results in upload order; ConflictError until the job is done."""
        with self._db() as conn:
            self._require_done(self._job(conn, job_id, owner))
            return self._results(conn, job_id)

    def results_csv(self, job_id: str, owner: str = "") -> str:
        """The results as CSV, in the one row schema."""
        out = io.StringIO()
        writer = csv.DictWriter(out, ROW_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.results(job_id, owner))
        return out.getvalue()

    def delete(self, job_id: str, owner: str = "") -> None:
        """Forget a job, its images and results (a running one stops after its chunk)."""
        with self._db() as conn:
            with conn:
                self._job(conn, job_id, owner)
                conn.execute("DELETE FROM job_items WHERE job_id = ?", (job_id,))
                conn.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
            schema.reclaim(conn)

    def expire(self, ttl_hours: float) -> int:
        """Delete finished and failed jobs last updated more than `ttl_hours` ago; the count."""
        cutoff = time.time() - ttl_hours * 3600.0
        with self._db() as conn:
            with conn:
                ids = [
                    r[0]
                    for r in conn.execute(
                        "SELECT id FROM jobs WHERE status IN ('done', 'failed') AND updated < ?",
                        (cutoff,),
                    )
                ]
                for job_id in ids:
                    conn.execute("DELETE FROM job_items WHERE job_id = ?", (job_id,))
                    conn.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
            if ids:
                schema.reclaim(conn)
        return len(ids)

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
        order, now counted as in hand (`release` them if they are not scored). An item that
        was in hand when the process died comes alone, so that a crash is pinned on one item;
        one in hand during MAX_ATTEMPTS crashes is first marked failed."""
        with self._db() as conn, conn:
            crashed = conn.execute(
                "UPDATE job_items SET scored = 1, image = NULL, error = ? "
                "WHERE job_id = ? AND scored = 0 AND attempts >= ?",
                (CRASHED, job_id, MAX_ATTEMPTS),
            ).rowcount
            if crashed:
                log.error(
                    "job %s: %d image(s) failed after %d crashes", job_id, crashed, MAX_ATTEMPTS
                )
                conn.execute(
                    "UPDATE jobs SET done = done + ?, errors = errors + ? WHERE id = ?",
                    (crashed, crashed, job_id),
                )
            suspect = conn.execute(
                "SELECT idx, name, image FROM job_items WHERE job_id = ? AND scored = 0 "
                "AND attempts > 0 ORDER BY idx LIMIT 1",
                (job_id,),
            ).fetchall()
            items = (
                suspect
                or conn.execute(
                    "SELECT idx, name, image FROM job_items WHERE job_id = ? AND scored = 0 "
                    "ORDER BY idx LIMIT ?",
                    (job_id, limit),
                ).fetchall()
            )
            conn.executemany(
                "UPDATE job_items SET attempts = attempts + 1 WHERE job_id = ? AND idx = ?",
                ((job_id, idx) for idx, _, _ in items),
            )
            return items

    def release(self, job_id: str, indexes: Iterable[int]) -> None:
        """Items taken by `pending` but not scored (the server was busy): not in hand."""
        with self._db() as conn, conn:
            conn.executemany(
                "UPDATE job_items SET attempts = MAX(attempts - 1, 0) WHERE job_id = ? AND idx = ?",
                ((job_id, idx) for idx in indexes),
            )

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
            if error:  # a failed job's images will never be scored
                conn.execute("UPDATE job_items SET image = NULL WHERE job_id = ?", (job_id,))
        with self._db() as conn:
            schema.reclaim(conn)

    def probe(self) -> None:
        """While the store is failing, write one row now and then (every PROBE_SECONDS): the
        failure ends as soon as a write succeeds, whether or not a job arrives."""
        if self._failing is None or time.monotonic() < self._next_probe:
            return
        self._next_probe = time.monotonic() + PROBE_SECONDS
        with suppress(Overloaded), self._db() as conn, conn:
            conn.execute("INSERT OR REPLACE INTO probe (id, at) VALUES (1, ?)", (time.time(),))

    # --- internals -----------------------------------------------------------------------------

    def _create(self) -> int:
        """The file and its tables (for a new, older or deleted file): its inode."""
        with self._raw() as conn:
            schema.prepare(conn)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(schema.JOBS)
            schema.add_columns(conn, schema.JOB_COLUMNS)
        return self.path.stat().st_ino

    @contextmanager
    def _raw(self) -> Iterator[sqlite3.Connection]:
        conn = sqlite3.connect(self.path, timeout=30.0)
        try:
            conn.execute(f"PRAGMA journal_size_limit={schema.WAL_LIMIT_BYTES}")
            yield conn
        finally:
            conn.close()

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        """A connection; SQLite failures (a full disk, an I/O error, a corrupt file) become
        Overloaded (503), logged once per change of state. Only a successful write ends a
        failure: reads still work on a full disk, and counting them would log the same
        failure again and again."""
        wrote = False
        try:
            self._recreate_if_deleted()
            with self._raw() as conn:
                yield conn
                wrote = conn.total_changes > 0
        except (sqlite3.IntegrityError, sqlite3.ProgrammingError):
            raise  # our bug, not the store's state
        except (sqlite3.DatabaseError, OSError) as e:  # OperationalError, "not a database"
            reason = f"{type(e).__name__}: {e}"
            if self._failing is None:
                log.error("job store %s: cannot read or write (%s)", self.path.name, reason)
            self._failing = reason
            raise Overloaded(f"the job store cannot be used now ({e}): try again later", 30) from e
        if self._failing is not None and wrote:
            log.warning("job store %s: working again", self.path.name)
            self._failing = None

    def _recreate_if_deleted(self) -> None:
        """A store whose file was deleted (or replaced) under it starts again, empty, and the
        log says so; SQLite would otherwise create a file without tables, or write on."""
        try:
            inode = self.path.stat().st_ino
        except FileNotFoundError:
            inode = None
        if inode == self._inode:
            return
        log.error(
            "job store %s was deleted or replaced while the server ran: the jobs it held are "
            "lost; a new, empty store is in its place",
            self.path.name,
        )
        if inode is None:
            for stale in ("-wal", "-shm"):  # the old file's journal must not meet a new file
                self.path.with_name(self.path.name + stale).unlink(missing_ok=True)
        self._inode = self._create()

    def _job(self, conn: sqlite3.Connection, job_id: str, owner: str = "") -> dict[str, Any]:
        row = conn.execute(
            "SELECT id, status, created, updated, threshold, total, done, errors, error "
            "FROM jobs WHERE id = ? AND owner = ?",
            (job_id, owner),
        ).fetchone()
        if row is None:  # another key's job is as invisible as one that does not exist
            raise NotFoundError(f"no job with id {job_id[:40]!r}")
        keys = ("job_id", "status", "created", "updated", "threshold", "total", "done", "errors")
        job = dict(zip(keys, row[:8], strict=True))
        job["created"], job["updated"] = iso_utc(job["created"]), iso_utc(job["updated"])
        job["progress"] = job["done"] / job["total"] if job["total"] else 1.0
        if row[8] is not None:
            job["error"] = row[8]
        return job

    @staticmethod
    def _require_done(job: dict[str, Any]) -> None:
        if job["status"] == "failed":
            raise ConflictError(f"job {job['job_id']} failed: {job.get('error')}")
        if job["status"] != "done":
            raise ConflictError(
                f"job {job['job_id']} is {job['status']} ({job['done']} of {job['total']} scored): "
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
