"""The one background thread that scores stored batch jobs, oldest first, a chunk at a time,
through the server's scoring path. Which jobs it may take is the store's `RunnerLease`: with
SQLite, one runner per store across processes (a lock file), with a standby that takes over
when the holder exits; with PostgreSQL, every server's runner, each job held by one (an
advisory lock that the database frees when its server dies). It also expires finished jobs."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence

from pneumo_onnx.engine.errors import Overloaded, PneumoError, UsageError
from pneumo_onnx.engine.runtime.results import SCORED_FIELDS, Result
from pneumo_onnx.engine.serve.store.backend import RunnerLease
from pneumo_onnx.engine.serve.store.jobs import JobStore

log = logging.getLogger(__name__)

# (images as (name, bytes), threshold) -> one result per image, in order.
Score = Callable[[Sequence[tuple[str, bytes]], float | None], list[Result]]
RETRY_SECONDS = 0.5  # a chunk refused because the server is busy waits this long, then retries
EXPIRE_EVERY = 60.0  # seconds between two passes over finished jobs to expire


class JobRunner:
    """One background thread that scores stored jobs, oldest first, `chunk` images at a time.

    `score(images, threshold)` returns one result per (name, bytes) image, in order (the
    server's `ScoringService.score_job`; in tests, `engine.predict_batch` over the bytes). If
    `score` itself raises, the job is marked failed (a bad image never does that); a busy
    server (Overloaded) only delays the chunk.
    """

    def __init__(
        self,
        store: JobStore,
        score: Score,
        chunk: int,  # images scored at once: the server's --max-batch
        *,
        ttl_hours: float,  # the server's --job-ttl (0: kept until deleted)
        poll_seconds: float = 1.0,
    ) -> None:
        if chunk < 1:
            raise UsageError(f"chunk must be at least 1, got {chunk}")
        self.store = store
        self.score = score
        self.chunk = chunk
        self.poll_seconds = poll_seconds
        self.ttl_hours = ttl_hours
        self._next_expiry = 0.0
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
        lease = self.store.runner_lease()
        try:
            self._loop(lease)
        finally:
            lease.close()

    def _loop(self, lease: RunnerLease) -> None:
        # The store cannot be used now (it logged why).
        errors: tuple[type[BaseException], ...] = (*self.store.database.errors, Overloaded)
        while not self._stop.is_set():
            self._wake.clear()
            if not lease.acquire():  # another process runs this store's jobs: stand by
                self._wake.wait(self.poll_seconds)
                continue
            try:
                self.store.probe()
                self._expire()
                job = self.store.claim_next(lease)
                if job is not None:
                    try:
                        self._work(lease, *job)
                    finally:
                        lease.release(job[0])
                    continue
            except errors:
                pass
            self._wake.wait(self.poll_seconds)

    def _expire(self) -> None:
        if self.ttl_hours <= 0 or time.monotonic() < self._next_expiry:
            return
        self._next_expiry = time.monotonic() + min(EXPIRE_EVERY, self.ttl_hours * 1800.0)
        expired = self.store.expire(self.ttl_hours)
        if expired:
            log.info("%d finished jobs older than %g hours deleted", expired, self.ttl_hours)

    def _work(self, lease: RunnerLease, job_id: str, threshold: float | None) -> None:
        while not self._stop.is_set():
            if not lease.holds(job_id):  # our session was lost: another runner may take it
                log.warning("job %s: this runner lost its hold, leaving it to another", job_id)
                return
            items = self.store.pending(job_id, self.chunk)
            if not items:
                self.store.finish(job_id)
                log.info("job %s done", job_id)
                return
            try:
                results = self.score([(name, blob) for _, name, blob in items], threshold)
                if len(results) != len(items):
                    raise PneumoError(f"scored {len(results)} results for {len(items)} images")
                for r in results:
                    if "error" not in r and any(f not in r for f in SCORED_FIELDS):
                        raise PneumoError(f"a result lacks {SCORED_FIELDS}: {sorted(r)}")
            except Overloaded:  # live requests come first: wait, then try the chunk again
                self.store.release(job_id, [idx for idx, _, _ in items])
                self._stop.wait(RETRY_SECONDS)
                continue
            except PneumoError as e:
                log.error("job %s failed: %s", job_id, e.message)
                self.store.finish(job_id, error=e.message)
                return
            except Exception:  # a bug in scoring: fail this job, keep serving the others
                log.exception("job %s failed", job_id)
                self.store.finish(job_id, error="internal error while scoring (see server log)")
                return
            indexed = [(idx, r) for (idx, _, _), r in zip(items, results, strict=True)]
            self.store.save(job_id, indexed)
