"""Asynchronous batch jobs kept in a database (a SQLite file, or the PostgreSQL database that
several servers share), so that a restart loses no accepted job.

`JobStore.create` stores a job and its images, one at a time from any iterable (an upload is
never held whole in memory), in one transaction before the job id is returned; the job runner
(engine.serve.dataplane.job_runner) scores queued jobs in chunks, committing each chunk's results
together with the progress and dropping the scored images' bytes. An item is marked scored in
the same transaction that stores its result, so no result is ever written twice. An item is
counted as in hand before it is scored: one that was in hand during MAX_ATTEMPTS crashes of
the process is marked failed instead of crashing it again. Jobs belong to the key that created
them; finished ones expire, and deleted space goes back to the file system.

A job is created in one write transaction that holds the store's "jobs" lock before the
pending bytes are read, so concurrent uploads (to any server) cannot all pass
`max_pending_bytes`. With several servers on one database, each runs a job runner, and a job
is scored by the runner that holds it (`RunnerLease`). A store that cannot write (a full
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
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any

from pneumo_onnx.engine.contract import check_threshold
from pneumo_onnx.engine.errors import ConflictError, NotFoundError, Overloaded, UsageError
from pneumo_onnx.engine.runtime.results import ROW_COLUMNS, SCORED_FIELDS, Result, Row
from pneumo_onnx.engine.serve.store.backend import Conn, RunnerLease, Target
from pneumo_onnx.engine.serve.store.databases import open_database
from pneumo_onnx.engine.serve.store.record import iso_utc
from pneumo_onnx.engine.serve.store.schema import migrate, open_store

log = logging.getLogger(__name__)

CLAIM_CANDIDATES = 16  # unfinished jobs a runner looks at per claim (others may hold some)
MAX_ATTEMPTS = 3  # crashes of the process with an item in hand before that item is failed
PROBE_SECONDS = 5.0  # a failing store tries a write this often (job runner's pace)
CRASHED = (
    f"skipped: the server stopped unexpectedly {MAX_ATTEMPTS} times while scoring this image "
    "(it may crash the decoder or exhaust memory)"
)


class JobStore:
    """Jobs and their images in a SQLite file (a path) or a PostgreSQL database (a URL); safe
    to share between threads (one short connection per call), between a server and a
    restarted server, and (PostgreSQL) between servers."""

    def __init__(self, target: Target, max_pending_bytes: int | None = None) -> None:
        self.database = open_database(target)
        self.name = self.database.name
        self.max_pending_bytes = max_pending_bytes
        self._failing: str | None = None
        self._next_probe = 0.0
        self._create()

    def close(self) -> None:
        """Close the connections kept for the store's calls (PostgreSQL; SQLite keeps none)."""
        self.database.close()

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
        with self._db() as db, db.transaction(lock="jobs") as conn:  # then the total is ours
            pending = conn.execute(
                "SELECT CAST(COALESCE(SUM(bytes), 0) AS BIGINT) FROM jobs "
                "WHERE status IN ('queued', 'running')"
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
            with conn.transaction():
                self._job(conn, job_id, owner)
                conn.execute("DELETE FROM job_items WHERE job_id = ?", (job_id,))
                conn.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
            self.database.reclaim(conn)

    def expire(self, ttl_hours: float) -> int:
        """Delete finished and failed jobs last updated more than `ttl_hours` ago; the count."""
        cutoff = time.time() - ttl_hours * 3600.0
        with self._db() as conn:
            with conn.transaction():
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
                self.database.reclaim(conn)
        return len(ids)

    # --- for JobRunner -----------------------------------------------------------------------

    def runner_lease(self) -> RunnerLease:
        """Which jobs this process's runner may score (`backend.RunnerLease`)."""
        return self.database.runner_lease()

    def claim_next(self, lease: RunnerLease) -> tuple[str, float | None] | None:
        """The oldest unfinished job no other runner holds, interrupted (running) ones first,
        now held by `lease` and marked running."""
        with self._db() as conn:
            rows = conn.execute(
                "SELECT id, threshold FROM jobs WHERE status IN ('running', 'queued') "
                "ORDER BY status = 'running' DESC, created LIMIT ?",
                (CLAIM_CANDIDATES,),
            ).fetchall()
            for job_id, threshold in rows:
                if not lease.hold(job_id):
                    continue  # another server's runner scores it
                claimed = conn.execute(  # still unfinished now that it is ours?
                    "UPDATE jobs SET status = 'running', updated = ? "
                    "WHERE id = ? AND status IN ('running', 'queued')",
                    (time.time(), job_id),
                ).rowcount
                if claimed:
                    return job_id, threshold
                lease.release(job_id)
        return None

    def pending(self, job_id: str, limit: int) -> list[tuple[int, str, bytes]]:
        """Up to `limit` unscored items of a job, as (index, name, image bytes), in upload
        order, now counted as in hand (`release` them if they are not scored). An item that
        was in hand when the process died comes alone, so that a crash is pinned on one item;
        one in hand during MAX_ATTEMPTS crashes is first marked failed."""
        with self._db() as db, db.transaction() as conn:
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
                [(job_id, idx) for idx, _, _ in items],
            )
            return items

    def release(self, job_id: str, indexes: Iterable[int]) -> None:
        """Items taken by `pending` but not scored (the server was busy): not in hand."""
        with self._db() as db, db.transaction() as conn:
            conn.executemany(
                f"UPDATE job_items SET attempts = {conn.dialect.greatest}(attempts - 1, 0) "
                "WHERE job_id = ? AND idx = ?",
                [(job_id, idx) for idx in indexes],
            )

    def save(self, job_id: str, results: Sequence[tuple[int, Result]]) -> None:
        """Store a chunk's results and progress in one transaction; drop the scored bytes.

        Only items still unscored are written and counted, so a replayed chunk changes nothing.
        """
        with self._db() as db, db.transaction() as conn:
            done = errors = 0
            for idx, result in results:
                error = result.get("error")
                values = [result.get(f) for f in SCORED_FIELDS]
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
        with self._db() as db, db.transaction() as conn:
            conn.execute(
                "UPDATE jobs SET status = ?, error = ?, updated = ? WHERE id = ?",
                ("failed" if error else "done", error, time.time(), job_id),
            )
            if error:  # a failed job's images will never be scored
                conn.execute("UPDATE job_items SET image = NULL WHERE job_id = ?", (job_id,))
        with self._db() as conn:
            self.database.reclaim(conn)

    def probe(self) -> None:
        """While the store is failing, write one row now and then (every PROBE_SECONDS): the
        failure ends as soon as a write succeeds, whether or not a job arrives."""
        if self._failing is None or time.monotonic() < self._next_probe:
            return
        self._next_probe = time.monotonic() + PROBE_SECONDS
        with suppress(Overloaded), self._db() as conn:
            conn.execute(
                "INSERT INTO probe (id, at) VALUES (1, ?) "
                "ON CONFLICT (id) DO UPDATE SET at = excluded.at",
                (time.time(),),
            )

    # --- internals -----------------------------------------------------------------------------

    def _create(self) -> None:
        """The tables (for a new, older or deleted store); UsageError if it cannot be opened."""
        open_store(self.database, "jobs").close()

    @contextmanager
    def _db(self) -> Iterator[Conn]:
        """A connection; database failures (a full disk, an I/O error, a corrupt file, an
        unreachable server) become Overloaded (503), logged once per change of state. Only
        a successful write ends a failure: reads still work on a full disk, and counting
        them would log the same failure again and again."""
        db = self.database
        failures: tuple[type[BaseException], ...] = (*db.errors, OSError)
        wrote = False
        try:
            self._recreate_if_deleted()
            with db.connection() as conn:
                yield conn
                wrote = conn.changes > 0
        except db.bugs:
            raise  # our bug, not the store's state
        except failures as e:
            reason = f"{type(e).__name__}: {e}"
            if self._failing is None:
                log.error("job store %s: cannot read or write (%s)", self.name, reason)
            self._failing = reason
            raise Overloaded(f"the job store cannot be used now ({e}): try again later", 30) from e
        if self._failing is not None and wrote:
            log.warning("job store %s: working again", self.name)
            self._failing = None

    def _recreate_if_deleted(self) -> None:
        """A store whose file was deleted (or replaced) under it starts again, empty, and the
        log says so; SQLite would otherwise create a file without tables, or write on."""
        if not self.database.replaced():
            return
        log.error(
            "job store %s was deleted or replaced while the server ran: the jobs it held are "
            "lost; a new, empty store is in its place",
            self.name,
        )
        self.database.forget()
        with self.database.connection() as conn:
            migrate(self.database, conn, "jobs")

    def _job(self, conn: Conn, job_id: str, owner: str = "") -> dict[str, Any]:
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
    def _results(conn: Conn, job_id: str) -> list[Row]:
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
