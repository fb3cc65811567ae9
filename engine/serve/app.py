"""The FastAPI application: thin HTTP front doors onto `ScoringService`.

Routes of the original deployment guide (`/health`, `/predict`, `/predict/base64`), the KServe
V2 / Open Inference Protocol (`engine.serve.v2`), asynchronous jobs, monitoring and Prometheus
metrics. Errors are JSON `{"error": ...}`; the status of every error class is decided in
`STATUS`, here and nowhere else.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated

from fastapi import FastAPI, File, Form, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from engine import __version__
from engine.errors import (
    ConflictError,
    ContractError,
    ImageError,
    InferenceError,
    MissingExtraError,
    ModelLoadError,
    NotFoundError,
    PneumoError,
    RepositoryError,
    UsageError,
)
from engine.repository import default_model_dir
from engine.serve.batching import Overloaded
from engine.serve.config import ServeConfig
from engine.serve.gate import Gate
from engine.serve.inputs import b64decode, form_threshold
from engine.serve.jobs import JobRunner, JobStore
from engine.serve.metrics import ServerMetrics
from engine.serve.monitor import PredictionLog
from engine.serve.registry import ModelRegistry
from engine.serve.scoring import ScoringService
from engine.serve.security import ApiKeys, RateLimiter

log = logging.getLogger(__name__)

# The one table from error class to HTTP status (most specific class first).
STATUS: list[tuple[type[PneumoError], int]] = [
    (Overloaded, 503),
    (NotFoundError, 404),
    (ConflictError, 409),
    (MissingExtraError, 501),
    (ImageError, 400),
    (InferenceError, 400),
    (ContractError, 400),
    (UsageError, 400),
    (RepositoryError, 409),
    (ModelLoadError, 409),
    (PneumoError, 500),
]


def status_of(error: PneumoError) -> int:
    return next(code for cls, code in STATUS if isinstance(error, cls))


class Base64Request(BaseModel):
    image: str = Field(description="the image file, base64-encoded (a data: URI prefix is ok)")
    threshold: float | None = Field(None, description="decision threshold in [0, 1]")


class PredictResponse(BaseModel):
    prediction: str
    confidence: float
    raw_score: float
    threshold: float
    heatmap: str | None = Field(None, description="with ?heatmap=true: base64 PNG overlay")
    heatmap_method: str | None = Field(None, description="cam or occlusion")


def create_app(config: ServeConfig | None = None) -> FastAPI:
    """The app for `config`; the model loads in the background once the server starts."""
    config = config or ServeConfig()
    metrics = ServerMetrics()
    state = _state_dir(config.state_dir)
    prediction_log = PredictionLog(state / "predictions.db", store_images=config.log_images)
    jobs = JobStore(state / "jobs.db")
    root = config.model_repo or default_model_dir().parent
    registry = ModelRegistry(root, config.device, config.variant, config.threads)
    service = ScoringService(
        registry,
        metrics,
        max_batch=config.max_batch,
        max_delay=config.max_delay_ms / 1000.0,
        max_queue=config.max_queue,
        decode_threads=config.decode_threads,
        cache_size=config.cache_size,
        keep_images=config.log_images,
        on_prediction=prediction_log.record,
    )
    runner = JobRunner(jobs, lambda blobs, t: service.score_job(blobs, t), chunk=config.max_batch)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loading = None
        if config.load_before_serving:  # --workers N: a worker takes requests only when ready
            await _load(service, config, runner)
        else:  # one process: live at once, ready when the model is
            loading = asyncio.get_running_loop().create_task(_load(service, config, runner))
        try:
            yield
        finally:
            if loading is not None:
                loading.cancel()
            runner.request_stop()
            await service.close()
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, runner.stop)
            await loop.run_in_executor(None, prediction_log.close)
            log.info("server stopped: queued requests scored, prediction log flushed")

    app = FastAPI(
        title="pneumo-onnx",
        version=__version__,
        description="Chest X-ray pneumonia scoring with onnxruntime (research use, not a "
        "medical device). Seed routes, KServe V2 inference protocol, jobs and monitoring.",
        lifespan=lifespan,
    )
    app.state.service = service
    app.state.config = config
    _add_error_handlers(app)
    _add_seed_routes(app, service, config)
    from engine.serve.routes_ops import add_operations_routes

    add_operations_routes(app, service, prediction_log, jobs, runner)
    from engine.serve.v2 import router as v2_router

    app.include_router(v2_router)

    @app.get("/metrics", include_in_schema=False)
    async def prometheus() -> Response:
        metrics.queue_depth.set(service.batcher.depth)
        return Response(metrics.render(), media_type=metrics.content_type)

    keys = ApiKeys(list(config.api_keys))
    app.add_middleware(
        Gate,
        keys=keys,
        limiter=RateLimiter(config.rate_limit, config.rate_burst),
        metrics=metrics,
        max_body=config.max_upload_bytes,
        open_health=config.open_health,
        open_metrics=config.open_metrics,
    )
    return app


async def _load(service: ScoringService, config: ServeConfig, runner: JobRunner) -> None:
    try:
        await service.start(config.model)
        log.info("ready: serving %s", service.default_model)
        runner.start()  # resumes jobs a previous run accepted and did not finish
    except PneumoError as e:
        log.error("cannot serve: %s", e.message)
    except Exception:
        log.exception("cannot serve: unexpected error loading the model")


def _state_dir(path: Path) -> Path:
    """The folder of the prediction log and job database, created if needed."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise UsageError(f"state folder {path.name} is not writable: {e.strerror}") from e
    return path


def _add_seed_routes(app: FastAPI, service: ScoringService, config: ServeConfig) -> None:
    @app.get("/health", tags=["seed"])
    async def health() -> JSONResponse:
        """Ready (200) once the model is loaded and warmed up, 503 before."""
        if not service.ready:
            state = "unloaded" if service.default_model else "loading"
            return JSONResponse({"status": state, "model_loaded": False}, status_code=503)
        served = service.registry.current(service.default_model)
        return JSONResponse(
            {
                "status": "healthy",
                "model_loaded": True,
                "model": served.name,
                "version": str(served.version),
                "variant": served.engine.model.variant,
                "provider": served.engine.provider,
            }
        )

    @app.post(
        "/predict",
        tags=["seed"],
        response_model=PredictResponse,
        responses={400: {}, 401: {}, 413: {}, 429: {}, 503: {}},
    )
    async def predict(
        request: Request,
        heatmap: Annotated[bool, Query(description="add the X-ray with its heatmap")] = False,
        image: Annotated[UploadFile | None, File(description="the X-ray image file")] = None,
        threshold: Annotated[str | None, Form(description="decision threshold in [0, 1]")] = None,
    ) -> JSONResponse:
        """Score one uploaded X-ray (multipart field `image`)."""
        if image is None:
            raise UsageError("no image file provided: send it as multipart field 'image'")
        if not image.filename:
            raise UsageError("no image file selected: the 'image' field has no file name")
        data = await image.read()
        t = form_threshold(threshold)
        return await _answer(request, service, data, t, "/predict", image.filename, heatmap)

    @app.post(
        "/predict/base64",
        tags=["seed"],
        response_model=PredictResponse,
        responses={400: {}, 401: {}, 413: {}, 429: {}, 503: {}},
    )
    async def predict_base64(
        request: Request,
        body: Base64Request,
        heatmap: Annotated[bool, Query(description="add the X-ray with its heatmap")] = False,
    ) -> JSONResponse:
        """Score one base64-encoded X-ray: JSON `{"image": ..., "threshold": ...}`."""
        data = b64decode(body.image)
        route = "/predict/base64"
        return await _answer(request, service, data, body.threshold, route, None, heatmap)


async def _answer(
    request: Request,
    service: ScoringService,
    data: bytes,
    threshold: float | None,
    route: str,
    name: str | None = None,
    heatmap: bool = False,
) -> JSONResponse:
    _require_ready(service)
    result, served = await service.predict(data, threshold, _request_id(request), route, name)
    if heatmap:  # the seed's fields stay as they are; the picture comes beside them
        result["heatmap_method"], result["heatmap"] = await service.heatmap(
            served, data, result, name
        )
    return JSONResponse(result, headers={"X-Model-Version": f"{served.name}/{served.version}"})


def _require_ready(service: ScoringService) -> None:
    if not service.default_model:
        raise Overloaded("the model is still loading", retry_after=2)
    if not service.ready:
        raise Overloaded(f"model {service.default_model!r} is not loaded", retry_after=5)


def _request_id(request: Request) -> str:
    return str(request.scope.get("state", {}).get("request_id", ""))


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(PneumoError)
    async def pneumo_error(request: Request, e: PneumoError) -> JSONResponse:
        headers = {"Retry-After": str(e.retry_after)} if isinstance(e, Overloaded) else None
        if isinstance(e, Overloaded):
            request.app.state.service.metrics.shed.inc()
        return JSONResponse({"error": e.message}, status_code=status_of(e), headers=headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, e: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": _validation_message(e)}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        message = e.detail if isinstance(e.detail, str) else "request refused"
        return JSONResponse({"error": message}, status_code=e.status_code, headers=e.headers)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, e: Exception) -> JSONResponse:
        log.exception("unexpected error", extra={"request_id": _request_id(request)})
        return JSONResponse(
            {"error": "internal server error", "request_id": _request_id(request)},
            status_code=500,
        )


def _validation_message(e: RequestValidationError) -> str:
    parts = []
    for err in e.errors()[:5]:
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "request"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def app_from_env() -> FastAPI:
    """uvicorn factory for `--workers N`: each worker process reads the config from the env."""
    import os

    from engine.serve.config import CONFIG_ENV

    text = os.environ.get(CONFIG_ENV)
    return create_app(ServeConfig.from_json(text) if text else None)
