"""Operations routes: asynchronous batch jobs, monitoring summaries and Prometheus metrics.
Thin: the work is in `engine.serve.store` and the job runner, run on a thread (SQLite never
runs on the event loop)."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, File, Form, Query, Request, UploadFile
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from engine.errors import UsageError
from engine.serve.inputs import form_threshold
from engine.serve.state import server
from engine.serve.store.reports import drift_report, summarize
from engine.serve.store.uploads import items_from_upload

router = APIRouter()
T = TypeVar("T")
MAX_HOURS = 24.0 * 366


async def _off_loop(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    return await asyncio.get_running_loop().run_in_executor(None, lambda: fn(*args, **kwargs))


def _hours(value: float, name: str) -> float:
    if not (math.isfinite(value) and 0 < value <= MAX_HOURS):
        raise UsageError(f"{name} must be a number of hours in (0, {MAX_HOURS:g}], got {value}")
    return value


@router.post("/jobs", tags=["jobs"], status_code=202)
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
    items: list[tuple[str, bytes]] = []
    for upload in images:
        data = await upload.read()
        items += await _off_loop(items_from_upload, upload.filename or "upload", data)
    state = server(request)
    job_id = await _off_loop(state.jobs.create, items, t)
    state.runner.wake()
    return JSONResponse(
        {"job_id": job_id, "status": "queued", "total": len(items), "url": f"/jobs/{job_id}"},
        status_code=202,
        headers={"Location": f"/jobs/{job_id}"},
    )


@router.get("/jobs/{job_id}", tags=["jobs"])
async def job_status(
    request: Request,
    job_id: str,
    format: Annotated[str, Query(pattern="^(json|csv)$", description="json or csv")] = "json",
) -> Response:
    """Status and progress; per-image results once done (`?format=csv` for a CSV file)."""
    jobs = server(request).jobs
    if format == "csv":
        text = await _off_loop(jobs.results_csv, job_id)
        return PlainTextResponse(
            text,
            media_type="text/csv",
            headers={"Content-Disposition": f'attachment; filename="{job_id}.csv"'},
        )
    return JSONResponse(await _off_loop(jobs.get, job_id))


@router.get("/monitoring/summary", tags=["monitoring"])
async def monitoring_summary(
    request: Request,
    hours: Annotated[float, Query(description="window length")] = 24.0,
) -> dict[str, Any]:
    """Counts, class rates, confidence distribution and latency percentiles."""
    path = server(request).prediction_log.path
    return await _off_loop(summarize, path, _hours(hours, "hours"))


@router.get("/monitoring/drift", tags=["monitoring"])
async def monitoring_drift(
    request: Request,
    recent_hours: Annotated[float, Query()] = 24.0,
    reference_hours: Annotated[float, Query()] = 168.0,
) -> dict[str, Any]:
    """Recent window against a reference window: class-rate change and score PSI."""
    return await _off_loop(
        drift_report,
        server(request).prediction_log.path,
        recent_hours=_hours(recent_hours, "recent_hours"),
        reference_hours=_hours(reference_hours, "reference_hours"),
    )


@router.get("/metrics", include_in_schema=False)
async def prometheus(request: Request) -> Response:
    state = server(request)
    state.metrics.queue_depth.set(state.service.batcher.depth)
    return Response(state.metrics.render(), media_type=state.metrics.content_type)
