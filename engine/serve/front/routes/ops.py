"""Operations routes: asynchronous batch jobs, monitoring summaries and Prometheus metrics.
Thin: the work is in `engine.serve.store` and the job runner, run on a thread (SQLite never
runs on the event loop)."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, File, Form, Query, Request, UploadFile
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from pneumo_onnx.engine.errors import Overloaded, UsageError
from pneumo_onnx.engine.serve.front.bodies import form_threshold
from pneumo_onnx.engine.serve.front.inputs import off_loop
from pneumo_onnx.engine.serve.front.security import access
from pneumo_onnx.engine.serve.front.uploads import (
    UploadBudget,
    is_archive,
    items_from_upload,
    safe_name,
    unpack_task,
)
from pneumo_onnx.engine.serve.state import key_id, server
from pneumo_onnx.engine.serve.store.reports import drift_report, summarize

router = APIRouter()
T = TypeVar("T")
MAX_HOURS = 24.0 * 366
# Reports scan the log in SQL with bounded memory, but each takes a core for a while on a large
# log: at most this many at once, the next ones are shed (503) rather than queued.
REPORTS = threading.BoundedSemaphore(2)


def _hours(value: float, name: str) -> float:
    if not (math.isfinite(value) and 0 < value <= MAX_HOURS):
        raise UsageError(f"{name} must be a number of hours in (0, {MAX_HOURS:g}], got {value}")
    return value


@router.post("/jobs", tags=["jobs"], status_code=202, dependencies=access("user"))
async def create_job(
    request: Request,
    images: Annotated[
        list[UploadFile] | None,
        File(description="X-ray files and/or zip archives of them (field repeated)"),
    ] = None,
    threshold: Annotated[str | None, Form(description="threshold in [0, 1]")] = None,
) -> JSONResponse:
    """Accept a batch at once; it is scored in the background and survives restarts."""
    if not images:
        raise UsageError("no images provided: send files (or zips) as multipart field 'images'")
    t = form_threshold(threshold)  # None: the model's own, resolved when the job runs
    state = server(request)
    budget = UploadBudget(
        max_total_bytes=state.config.max_job_bytes,
        max_image_bytes=state.config.max_upload_bytes,
    )

    decoders = state.service.decoders

    def items() -> Iterator[tuple[str, bytes]]:  # one image in memory at a time
        for upload in images:
            filename = upload.filename or "upload"
            head = upload.file.read(4)
            upload.file.seek(0)
            if not is_archive(filename, head):
                yield from items_from_upload(filename, upload.file, budget)
                continue
            data = upload.file.read()
            label = safe_name(filename) or "upload"
            members = decoders.stream(
                unpack_task, filename, data, budget, name=label, input_bytes=len(data)
            )
            for name, blob in members:  # unpacked in a worker, counted here too
                budget.take(f"{label}: {name}", len(blob))
                yield name, blob

    job_id = await off_loop(state.jobs.create, items(), t, key_id(request), on="pool")
    state.runner.wake()
    return JSONResponse(
        {"job_id": job_id, "status": "queued", "total": budget.images, "url": f"/jobs/{job_id}"},
        status_code=202,
        headers={"Location": f"/jobs/{job_id}"},
    )


@router.get("/jobs/{job_id}", tags=["jobs"], dependencies=access("user"))
async def job_status(
    request: Request,
    job_id: str,
    format: Annotated[str, Query(pattern="^(json|csv)$", description="json or csv")] = "json",
) -> Response:
    """Status and progress; per-image results once done (`?format=csv` for a CSV file). Only
    the key that created a job sees it."""
    jobs = server(request).jobs
    if format == "csv":
        text = await off_loop(jobs.results_csv, job_id, key_id(request), on="pool")
        return PlainTextResponse(
            text,
            media_type="text/csv",
            headers={"Content-Disposition": f'attachment; filename="{job_id[:40]}.csv"'},
        )
    return JSONResponse(await off_loop(jobs.get, job_id, key_id(request), on="pool"))


@router.delete("/jobs/{job_id}", tags=["jobs"], dependencies=access("user"))
async def delete_job(request: Request, job_id: str) -> dict[str, str]:
    """Forget a job now, its images and results with it (jobs also expire: `--job-ttl`)."""
    await off_loop(server(request).jobs.delete, job_id, key_id(request), on="pool")
    return {"job_id": job_id, "status": "deleted"}


async def _report(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    def run() -> T:
        if not REPORTS.acquire(blocking=False):
            raise Overloaded("two monitoring reports are already running: try again shortly", 2)
        try:
            return fn(*args, **kwargs)
        finally:
            REPORTS.release()

    return await off_loop(run, on="pool")


@router.get("/monitoring/summary", tags=["monitoring"], dependencies=access("user"))
async def monitoring_summary(
    request: Request,
    hours: Annotated[float, Query(description="window length")] = 24.0,
) -> dict[str, Any]:
    """Counts, class rates, confidence distribution and latency percentiles."""
    target = server(request).prediction_log.target
    return await _report(summarize, target, _hours(hours, "hours"))


@router.get("/monitoring/drift", tags=["monitoring"], dependencies=access("user"))
async def monitoring_drift(
    request: Request,
    recent_hours: Annotated[float, Query()] = 24.0,
    reference_hours: Annotated[float, Query()] = 168.0,
) -> dict[str, Any]:
    """Recent window against a reference window: class-rate change and score PSI."""
    return await _report(
        drift_report,
        server(request).prediction_log.target,
        recent_hours=_hours(recent_hours, "recent_hours"),
        reference_hours=_hours(reference_hours, "reference_hours"),
    )


@router.get("/metrics", include_in_schema=False, dependencies=access("metrics"))
async def prometheus(request: Request) -> Response:
    state = server(request)
    state.metrics.queue_depth.set(state.service.batcher.depth)
    return Response(state.metrics.render(), media_type=state.metrics.content_type)
