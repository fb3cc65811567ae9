"""engine.serve.store.jobs: persistent batch jobs scored by the shipped model, restarts, uploads."""

from __future__ import annotations

import csv
import io
import time
import zipfile
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from pneumo_onnx import Engine
from pneumo_onnx.engine.errors import ConflictError, InferenceError, NotFoundError, UsageError
from pneumo_onnx.engine.runtime.results import ROW_COLUMNS, Result, to_row
from pneumo_onnx.engine.runtime.samples import sample_images
from pneumo_onnx.engine.serve.config import ServeConfig
from pneumo_onnx.engine.serve.dataplane.job_runner import JobRunner
from pneumo_onnx.engine.serve.front.uploads import UploadBudget, items_from_upload, safe_name
from pneumo_onnx.engine.serve.store.backend import Target
from pneumo_onnx.engine.serve.store.databases import open_database
from pneumo_onnx.engine.serve.store.jobs import JobStore

StoreTarget = Callable[[str], Target]  # the store_target fixture: SQLite or PostgreSQL


def unpack(filename: str, data: bytes, **budget: int) -> list[tuple[str, bytes]]:
    """The items of an upload, within the server's default budget but for `budget`."""
    served = ServeConfig()
    limits = {"max_total_bytes": served.max_job_bytes, "max_image_bytes": served.max_upload_bytes}
    return list(items_from_upload(filename, data, UploadBudget(**{**limits, **budget})))


CORRUPT = b"\xff\xd8\xff\xe0 this is not really a jpeg"


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine.load()


@pytest.fixture(scope="module")
def items() -> list[tuple[str, bytes]]:
    """The six shipped X-rays and one corrupt file, each with distinct bytes."""
    samples = [(f"{p.parent.name}/{p.name}", p.read_bytes()) for p in sample_images()]
    return [*samples[:3], ("broken.jpeg", CORRUPT), *samples[3:]]


Images = Sequence[tuple[str, bytes]]


def scorer(engine: Engine) -> Callable[[Images, float | None], list[Result]]:
    return lambda images, t: engine.predict_batch([b for _, b in images], threshold=t)


def wait_for(store: JobStore, job_id: str, status: str, timeout: float = 20.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = store.get(job_id)
        if job["status"] == status:
            return job
        time.sleep(0.01)
    raise AssertionError(f"job {job_id} still {store.get(job_id)['status']} after {timeout} s")


def stored_images(path: Target) -> int:
    conn = open_database(path).connect()
    try:
        return conn.execute("SELECT COUNT(*) FROM job_items WHERE image IS NOT NULL").fetchone()[0]
    finally:
        conn.close()


def test_job_scores_every_image_with_the_shipped_model(
    store_target: StoreTarget, engine: Engine, items: list[tuple[str, bytes]]
) -> None:
    store = JobStore(store_target("jobs.db"))
    job_id = store.create(items, threshold=None)
    assert len(job_id) == 32 and int(job_id, 16) >= 0
    queued = store.get(job_id)
    assert (queued["status"], queued["total"], queued["done"], queued["progress"]) == (
        "queued",
        7,
        0,
        0.0,
    )
    assert "results" not in queued and stored_images(store_target("jobs.db")) == 7
    runner = JobRunner(store, scorer(engine), chunk=3, ttl_hours=0).start()
    runner.wake()
    try:
        job = wait_for(store, job_id, "done")
    finally:
        runner.stop()
    assert not runner.alive
    assert (job["total"], job["done"], job["errors"], job["progress"]) == (7, 7, 1, 1.0)
    expected = engine.predict_batch([blob for _, blob in items])
    assert [r["image_path"] for r in job["results"]] == [name for name, _ in items]
    for result, want, (name, _) in zip(job["results"], expected, items, strict=True):
        assert result == to_row(name, want)  # the one row schema
    assert "truncated or corrupt" in job["results"][3]["error"]
    assert {r["prediction"] for r in job["results"] if not r["error"]} == {"NORMAL", "PNEUMONIA"}
    assert stored_images(store_target("jobs.db")) == 0  # bytes dropped once scored

    table = list(csv.DictReader(io.StringIO(store.results_csv(job_id))))
    assert tuple(table[0]) == ROW_COLUMNS
    assert [r["image_path"] for r in table] == [name for name, _ in items]
    assert float(table[0]["raw_score"]) == expected[0]["raw_score"]
    assert table[3]["prediction"] == "" and table[3]["error"] == expected[3]["error"]


def test_threshold_is_passed_to_the_scorer(
    store_target: StoreTarget, engine: Engine, items: list[tuple[str, bytes]]
) -> None:
    store = JobStore(store_target("jobs.db"))
    job_id = store.create(items[:2], threshold=0.999)
    runner = JobRunner(store, scorer(engine), chunk=8, ttl_hours=0, poll_seconds=0.01).start()
    try:
        job = wait_for(store, job_id, "done")
    finally:
        runner.stop()
    assert [r["threshold"] for r in job["results"]] == [0.999, 0.999]
    assert job["threshold"] == 0.999


def test_job_survives_a_restart_and_scores_each_image_once(
    store_target: StoreTarget, engine: Engine, items: list[tuple[str, bytes]]
) -> None:
    path = store_target("jobs.db")
    calls: Counter[bytes] = Counter()
    first: JobRunner

    def first_score(images: Images, t: float | None) -> list[Result]:
        blobs = [b for _, b in images]
        calls.update(blobs)
        if sum(calls.values()) >= 4:  # second chunk: the "server" gets SIGTERM meanwhile
            first.request_stop()
        return engine.predict_batch(blobs, threshold=t)

    store = JobStore(path)
    job_id = store.create(items)
    first = JobRunner(store, first_score, chunk=2, ttl_hours=0, poll_seconds=0.01).start()
    deadline = time.monotonic() + 20
    while first.alive and time.monotonic() < deadline:  # it stops by itself after chunk 2
        time.sleep(0.01)
    assert not first.alive
    interrupted = store.get(job_id)
    assert (interrupted["status"], interrupted["done"]) == ("running", 4)
    assert stored_images(path) == 3

    def second_score(images: Images, t: float | None) -> list[Result]:
        blobs = [b for _, b in images]
        calls.update(blobs)
        return engine.predict_batch(blobs, threshold=t)

    restarted = JobStore(path)  # a new process: new store and runner on the same file
    second = JobRunner(restarted, second_score, chunk=2, ttl_hours=0, poll_seconds=0.01).start()
    try:
        job = wait_for(restarted, job_id, "done")
    finally:
        second.stop()
    assert calls == Counter(blob for _, blob in items)  # every image scored exactly once
    assert (job["done"], job["errors"]) == (7, 1)
    assert [r["image_path"] for r in job["results"]] == [name for name, _ in items]


def test_one_runner_per_store_the_other_stands_by(
    tmp_path: Path, engine: Engine, items: list[tuple[str, bytes]]
) -> None:
    """Two servers (or --workers 2) on one state folder: one runs the jobs, the other takes
    over when it stops; no image is scored twice."""
    path = tmp_path / "jobs.db"
    calls: dict[str, Counter[bytes]] = {"a": Counter(), "b": Counter()}

    def counting(who: str) -> Callable[[Images, float | None], list[Result]]:
        def score(images: Images, t: float | None) -> list[Result]:
            blobs = [b for _, b in images]
            calls[who].update(blobs)
            return engine.predict_batch(blobs, threshold=t)

        return score

    a = JobRunner(JobStore(path), counting("a"), chunk=2, ttl_hours=0, poll_seconds=0.01).start()
    time.sleep(0.2)  # a holds the lock
    b = JobRunner(JobStore(path), counting("b"), chunk=2, ttl_hours=0, poll_seconds=0.01).start()
    try:
        first = JobStore(path).create(items)
        wait_for(JobStore(path), first, "done")
        assert sum(calls["a"].values()) == len(items) and not calls["b"]
        a.stop()
        second = JobStore(path).create(items[:3])
        wait_for(JobStore(path), second, "done")
        assert sum(calls["b"].values()) == 3
    finally:
        a.stop()
        b.stop()


def test_a_failing_scorer_fails_the_job_and_the_runner_goes_on(
    store_target: StoreTarget, engine: Engine, items: list[tuple[str, bytes]]
) -> None:
    store = JobStore(store_target("jobs.db"))
    doomed = store.create(items[:2])
    fine = store.create(items[2:4])

    def score(images: Images, t: float | None) -> list[Result]:
        blobs = [b for _, b in images]
        if blobs[0] == items[0][1]:
            raise InferenceError("onnxruntime refused the batch")
        return engine.predict_batch(blobs, threshold=t)

    runner = JobRunner(store, score, chunk=2, ttl_hours=0, poll_seconds=0.01).start()
    try:
        failed = wait_for(store, doomed, "failed")
        wait_for(store, fine, "done")
    finally:
        runner.stop()
    assert failed["error"] == "onnxruntime refused the batch" and "results" not in failed
    with pytest.raises(ConflictError, match="failed: onnxruntime refused the batch"):
        store.results_csv(doomed)


def test_store_errors(tmp_path: Path, items: list[tuple[str, bytes]]) -> None:
    store = JobStore(tmp_path / "jobs.db")
    with pytest.raises(NotFoundError, match="no job with id 'nope'"):
        store.get("nope")
    with pytest.raises(NotFoundError):
        store.results_csv("nope")
    job_id = store.create(items[:1])
    with pytest.raises(ConflictError, match=r"is queued \(0 of 1 scored\)"):
        store.results(job_id)
    with pytest.raises(UsageError, match="at least one image"):
        store.create([])
    with pytest.raises(UsageError, match="threshold must be"):
        store.create(items[:1], threshold=1.5)
    with pytest.raises(UsageError, match="threshold must be"):
        store.create(items[:1], threshold=float("nan"))
    with pytest.raises(UsageError, match="expected \\(name, image bytes\\) pairs"):
        store.create(["a.jpeg"])  # type: ignore[list-item]
    with pytest.raises(UsageError, match="chunk must be"):
        JobRunner(store, lambda b, t: [], chunk=0, ttl_hours=0)
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not sqlite at all" * 100)
    with pytest.raises(UsageError, match="cannot open job store"):
        JobStore(junk)


# --- uploads ------------------------------------------------------------------------------------


def zip_bytes(members: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", method) as z:
        for name, data in members.items():
            if name.endswith("/"):
                z.writestr(zipfile.ZipInfo(name), b"")
            else:
                z.writestr(name, data)
    return out.getvalue()


def test_zip_upload_keeps_images_and_safe_names(items: list[tuple[str, bytes]]) -> None:
    jpeg = items[0][1]
    data = zip_bytes(
        {
            "scans/": b"",
            "scans/a.jpeg": jpeg,
            "scans/deep/b.PNG": b"png bytes",
            "__MACOSX/scans/._a.jpeg": b"apple double",
            "scans/.hidden.jpeg": b"dotfile",
            "scans/readme.txt": b"not an image",
            "../../etc/evil.jpeg": b"traversal",
            "/abs/root.jpg": b"absolute",
            "C:\\windows\\x.dcm": b"dicom",
        }
    )
    got = unpack("upload.zip", data)
    assert got == [
        ("scans/a.jpeg", jpeg),
        ("scans/deep/b.PNG", b"png bytes"),
        ("etc/evil.jpeg", b"traversal"),
        ("abs/root.jpg", b"absolute"),
        ("windows/x.dcm", b"dicom"),
    ]
    # zip detected by its bytes even under another name
    assert unpack("archive.bin", data)[0] == ("scans/a.jpeg", jpeg)


def test_single_image_upload() -> None:
    assert unpack("../../x-ray.jpeg", b"\xff\xd8data") == [("x-ray.jpeg", b"\xff\xd8data")]
    assert safe_name("a/../../b/./c.png") == "a/b/c.png"


def test_zip_bomb_is_refused() -> None:
    bomb = zip_bytes({"bomb.png": bytes(20 * 2**20)})  # 20 MB of zeros in ~20 kB
    assert len(bomb) < 100_000
    with pytest.raises(UsageError, match="refused as a zip bomb"):
        unpack("bomb.zip", bomb)


@pytest.mark.parametrize(
    ("data", "kwargs", "message"),
    [
        (b"", {}, "got 0 bytes from x.zip"),
        (b"PK\x03\x04" + b"garbage" * 10, {}, "x.zip is not a readable zip archive"),
        (zip_bytes({"a.jpeg": b"x" * 5000})[:-30], {}, "x.zip is not a readable zip archive"),
        (zip_bytes({"a.txt": b"text"}), {}, "x.zip holds no images"),
        (
            zip_bytes({f"{i}.jpeg": b"x" for i in range(5)}),
            {"max_images": 3},
            "has 5 entries; at most 3",
        ),
        (
            zip_bytes({"a.jpeg": b"x" * 4000, "b.jpeg": b"y" * 4000}),
            {"max_total_bytes": 6000},
            "unpacks to 8,000 bytes, more than the 6,000 bytes",
        ),
    ],
    ids=["empty", "corrupt", "truncated", "no-images", "too-many", "too-big"],
)
def test_bad_uploads(data: bytes, kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        unpack("x.zip", data, **kwargs)


def test_zip_member_with_a_bad_checksum_is_refused() -> None:
    data = bytearray(zip_bytes({"a.jpeg": b"original bytes here"}, zipfile.ZIP_STORED))
    at = bytes(data).index(b"original")
    data[at] ^= 0xFF  # the stored bytes no longer match the CRC in the header
    with pytest.raises(UsageError, match=r"cannot read 'a.jpeg'.*CRC"):
        unpack("x.zip", bytes(data))


def test_a_replayed_chunk_is_stored_once(
    store_target: StoreTarget, items: list[tuple[str, bytes]]
) -> None:
    """A process killed between scoring and commit scores that chunk again: no double count."""
    store = JobStore(store_target("jobs.db"))
    job_id = store.create(items[:3])
    lease = store.runner_lease()
    assert lease.acquire()
    assert store.claim_next(lease) == (job_id, None)
    assert [idx for idx, _, _ in store.pending(job_id, 10)] == [0, 1, 2]
    first = [
        (0, {"prediction": "NORMAL", "confidence": 0.9, "raw_score": 0.1, "threshold": 0.5}),
        (1, {"error": "cannot decode"}),
    ]
    store.save(job_id, first)
    store.save(job_id, [(0, {**first[0][1], "raw_score": 0.2}), *first[1:]])  # the replay
    job = store.get(job_id)
    assert (job["status"], job["done"], job["errors"]) == ("running", 2, 1)
    assert [idx for idx, _, _ in store.pending(job_id, 10)] == [2]
    store.save(job_id, [(2, {"error": "cannot decode"})])
    store.finish(job_id)
    results = store.get(job_id)["results"]
    assert results[0]["raw_score"] == 0.1 and results[1] == to_row(
        items[1][0], {"error": "cannot decode"}
    )
    lease.release(job_id)
    assert store.claim_next(lease) is None
    lease.close()
