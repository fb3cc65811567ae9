"""Asynchronous batch jobs kept in SQLite, so that a restart loses no accepted job.

`JobStore.create` stores a job and every image's bytes in one transaction before the job id
is returned; `JobRunner` scores queued jobs in chunks on one background thread, committing
each chunk's results together with the progress and dropping the scored images' bytes. On
start it resumes whatever a previous process left queued or running; an item is marked scored
in the same transaction that stores its result, so no result is ever written twice.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import sqlite3
import threading
import time
import uuid
import zipfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any

try:
    import fcntl
except ImportError:  # Windows has no flock: one job runner per process, as configured
    fcntl = None  # type: ignore[assignment]

from engine.contract import check_threshold
from engine.errors import ConflictError, NotFoundError, PneumoError, UsageError
from engine.preprocess import IMAGE_SUFFIXES

log = logging.getLogger(__name__)

MAX_MEMBERS = 10_000
MAX_TOTAL_BYTES = 512 * 2**20
# X-rays barely compress (JPEG, PNG) or compress a few times (BMP, DICOM): a member that
# shrank more than 100x and is over 1 MB unpacked is a decompression bomb, not a scan.
MAX_RATIO = 100
RATIO_MIN_BYTES = 2**20
UPLOAD_SUFFIXES = IMAGE_SUFFIXES
RESULT_FIELDS = ("prediction", "confidence", "raw_score", "threshold")
CSV_COLUMNS = ("name", *RESULT_FIELDS, "error")

Score = Callable[[list[bytes], float | None], list[dict[str, Any]]]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    threshold REAL,
    total INTEGER NOT NULL,
    done INTEGER NOT NULL DEFAULT 0,
    errors INTEGER NOT NULL DEFAULT 0,
    error TEXT
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
    PRIMARY KEY (job_id, idx)
);
"""


class JobStore:
    """Jobs and their images in one SQLite file; safe to share between threads (one short
    connection per call) and between a server and a restarted server."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            with self._db() as conn:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.executescript(_SCHEMA)
        except sqlite3.Error as e:
            raise UsageError(f"cannot open job store {self.path}: {e}") from e

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

    def results(self, job_id: str) -> list[dict[str, Any]]:
        """Per-image results in upload order; ConflictError until the job is done."""
        with self._db() as conn:
            self._require_done(self._job(conn, job_id))
            return self._results(conn, job_id)

    def results_csv(self, job_id: str) -> str:
        """The results as CSV: name, prediction, confidence, raw_score, threshold, error."""
        out = io.StringIO()
        writer = csv.DictWriter(out, CSV_COLUMNS, lineterminator="\n")
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

    def pending(self, job_id: str, limit: int) -> list[tuple[int, bytes]]:
        """Up to `limit` unscored items of a job, as (index, image bytes), in upload order."""
        with self._db() as conn:
            return conn.execute(
                "SELECT idx, image FROM job_items WHERE job_id = ? AND scored = 0 "
                "ORDER BY idx LIMIT ?",
                (job_id, limit),
            ).fetchall()

    def save(self, job_id: str, results: Sequence[tuple[int, dict[str, Any]]]) -> None:
        """Store a chunk's results and progress in one transaction; drop the scored bytes.

        Only items still unscored are written and counted, so a replayed chunk changes nothing.
        """
        with self._db() as conn, conn:
            done = errors = 0
            for idx, result in results:
                error = result.get("error")
                values = (
                    [None] * len(RESULT_FIELDS) if error else [result[f] for f in RESULT_FIELDS]
                )
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
    def _results(conn: sqlite3.Connection, job_id: str) -> list[dict[str, Any]]:
        rows = conn.execute(
            "SELECT name, prediction, confidence, raw_score, threshold, error FROM job_items "
            "WHERE job_id = ? ORDER BY idx",
            (job_id,),
        ).fetchall()
        out: list[dict[str, Any]] = []
        for name, *values, error in rows:
            if error is not None:
                out.append({"name": name, "error": error})
            else:
                out.append({"name": name, **dict(zip(RESULT_FIELDS, values, strict=True))})
        return out


class JobRunner:
    """One background thread that scores stored jobs, oldest first, `chunk` images at a time.

    `score(images, threshold)` returns one dict per image, in order: the Engine result fields
    or {'error': message}; e.g. `lambda blobs, t: engine.predict_batch(blobs, threshold=t)`.
    If `score` itself raises, the job is marked failed (a bad image never does that).
    """

    def __init__(
        self, store: JobStore, score: Score, chunk: int = 32, poll_seconds: float = 1.0
    ) -> None:
        if chunk < 1:
            raise UsageError(f"chunk must be at least 1, got {chunk}")
        self.store = store
        self.score = score
        self.chunk = chunk
        self.poll_seconds = poll_seconds
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> JobRunner:
        """Start the thread; it first resumes jobs a previous process left unfinished."""
        if self._thread is not None:
            raise UsageError("this job runner was already started")
        self._thread = threading.Thread(target=self._run, name="pneumo-jobs", daemon=True)
        self._thread.start()
        return self

    def wake(self) -> None:
        """A job was just created: look now instead of at the next poll."""
        self._wake.set()

    def request_stop(self) -> None:
        """Ask the thread to stop after the current chunk, without waiting (signal handlers)."""
        self._stop.set()
        self._wake.set()

    def stop(self, timeout: float | None = None) -> None:
        """Finish the current chunk, then stop; the job stays resumable. Idempotent."""
        self.request_stop()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        with _RunnerLock(self.store.path.with_name(self.store.path.name + ".runner")) as lock:
            self._loop(lock)

    def _loop(self, lock: _RunnerLock) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            if not lock.acquire():  # another process runs this store's jobs: stand by
                self._wake.wait(self.poll_seconds)
                continue
            try:
                job = self.store.claim_next()
                if job is not None:
                    self._work(*job)
                    continue
            except sqlite3.Error:  # the store is unreachable for now: keep the thread alive
                log.exception("job store %s: cannot read jobs; retrying", self.store.path)
            self._wake.wait(self.poll_seconds)

    def _work(self, job_id: str, threshold: float | None) -> None:
        while not self._stop.is_set():
            items = self.store.pending(job_id, self.chunk)
            if not items:
                self.store.finish(job_id)
                log.info("job %s done", job_id)
                return
            try:
                results = self.score([blob for _, blob in items], threshold)
                if len(results) != len(items):
                    raise PneumoError(f"scored {len(results)} results for {len(items)} images")
                for r in results:
                    if "error" not in r and any(f not in r for f in RESULT_FIELDS):
                        raise PneumoError(f"a result lacks {RESULT_FIELDS}: {sorted(r)}")
            except PneumoError as e:
                log.error("job %s failed: %s", job_id, e.message)
                self.store.finish(job_id, error=e.message)
                return
            except Exception:  # a bug in scoring: fail this job, keep serving the others
                log.exception("job %s failed", job_id)
                self.store.finish(job_id, error="internal error while scoring (see server log)")
                return
            self.store.save(job_id, [(idx, r) for (idx, _), r in zip(items, results, strict=True)])


class _RunnerLock:
    """One runner per job store across processes (`pneumo serve --workers N`, or two servers
    sharing a state folder): an exclusive flock that the OS releases when its holder exits,
    so a standby runner takes over the jobs of a worker that died."""

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

    def __enter__(self) -> _RunnerLock:
        return self

    def __exit__(self, *_: object) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing releases the lock
            self._fd = None


def items_from_upload(
    filename: str,
    data: bytes,
    *,
    max_members: int = MAX_MEMBERS,
    max_total_bytes: int = MAX_TOTAL_BYTES,
) -> list[tuple[str, bytes]]:
    """An uploaded file as job items: the images of a .zip archive, or the one image.

    Archive members that are folders, macOS metadata or not image files are skipped; names
    keep their folders but lose any '..', drive or leading '/'. Refused with a UsageError:
    an empty upload, a corrupt or encrypted archive, more than `max_members` entries, more
    than `max_total_bytes` unpacked, or a member compressed over MAX_RATIO times (a bomb).
    """
    label = safe_name(filename) or "upload"
    if not data:
        raise UsageError(f"expected an image or a .zip archive, got 0 bytes from {label}")
    if not (filename.lower().endswith(".zip") or data[:4] in (b"PK\x03\x04", b"PK\x05\x06")):
        return [(label, data)]
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError) as e:
        raise UsageError(f"{label} is not a readable zip archive: {e}") from e
    with archive:
        infos = archive.infolist()
        if len(infos) > max_members:
            raise UsageError(
                f"{label} has {len(infos)} entries; at most {max_members} are accepted"
            )
        members = [i for i in infos if _is_image_member(i)]
        if not members:
            raise UsageError(
                f"{label} holds no images (expected {', '.join(sorted(UPLOAD_SUFFIXES))} files)"
            )
        _check_sizes(label, members, max_total_bytes)
        items, total = [], 0
        for info in members:
            try:
                with archive.open(info) as f:
                    blob = f.read(max_total_bytes - total + 1)
            except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError) as e:
                raise UsageError(f"{label}: cannot read {info.filename!r}: {e}") from e
            total += len(blob)
            if total > max_total_bytes:  # the headers lied about the sizes
                raise UsageError(f"{label} unpacks to more than {_mb(max_total_bytes)}")
            items.append((safe_name(info.filename), blob))
    return items


def safe_name(name: str) -> str:
    """A member or file name with no way out of a folder: no '..', drive, or leading '/'."""
    parts = PurePosixPath(name.replace("\\", "/")).parts
    kept = [p for p in parts if p not in ("", ".", "..", "/") and not p.endswith(":")]
    return "/".join(kept)


def _is_image_member(info: zipfile.ZipInfo) -> bool:
    if info.is_dir():
        return False
    parts = safe_name(info.filename).split("/")
    if "__MACOSX" in parts or parts[-1].startswith("."):
        return False
    return PurePosixPath(parts[-1]).suffix.lower() in UPLOAD_SUFFIXES


def _check_sizes(label: str, members: list[zipfile.ZipInfo], max_total_bytes: int) -> None:
    for info in members:
        if info.flag_bits & 0x1:
            raise UsageError(f"{label}: {info.filename!r} is encrypted; upload it unencrypted")
        if info.file_size > RATIO_MIN_BYTES and info.file_size > MAX_RATIO * max(
            info.compress_size, 1
        ):
            raise UsageError(
                f"{label}: {info.filename!r} expands {info.file_size // max(info.compress_size, 1)}"
                f" times ({_mb(info.compress_size)} -> {_mb(info.file_size)}): refused as a "
                "zip bomb"
            )
    declared = sum(i.file_size for i in members)
    if declared > max_total_bytes:
        raise UsageError(
            f"{label} unpacks to {_mb(declared)}, more than the {_mb(max_total_bytes)} accepted"
        )


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f} MB" if n >= 2**20 else f"{n:,} bytes"
