"""The FastAPI application: wiring only. It builds the server's parts (`ServerState`), starts
and stops them with the app, and mounts the front doors (`routes.seed`, `routes.v2`, `routes.ops`,
`routes.docs`, and the cloud platforms' `routes.cloud`: SageMaker's always, Vertex AI's where
its environment names their paths) behind the gate, which enforces the access each route
declares; errors are answered by `http_errors`.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI

from pneumo_onnx import __version__
from pneumo_onnx.engine.errors import FileAccessError, PneumoError
from pneumo_onnx.engine.repository.resolve import default_model_dir
from pneumo_onnx.engine.serve.config import ServeConfig
from pneumo_onnx.engine.serve.dataplane.job_runner import JobRunner
from pneumo_onnx.engine.serve.dataplane.registry import ModelRegistry
from pneumo_onnx.engine.serve.dataplane.scoring import ScoringService
from pneumo_onnx.engine.serve.front import errors as http_errors
from pneumo_onnx.engine.serve.front.budget import InflightBytes
from pneumo_onnx.engine.serve.front.direct import DirectRoutes
from pneumo_onnx.engine.serve.front.entry import GatedApp
from pneumo_onnx.engine.serve.front.gate import Gate
from pneumo_onnx.engine.serve.front.routes import cloud, docs, ops, seed, v2
from pneumo_onnx.engine.serve.front.security import (
    AccessControl,
    ApiKeys,
    RateLimiter,
    app_routes,
)
from pneumo_onnx.engine.serve.metrics import ServerMetrics
from pneumo_onnx.engine.serve.state import ServerState
from pneumo_onnx.engine.serve.store.jobs import JobStore
from pneumo_onnx.engine.serve.store.predictions import PredictionLog

log = logging.getLogger(__name__)
# How long shutdown waits for the job chunk in hand and for the prediction log's writer (a
# full disk must not hold SIGTERM forever): uvicorn's own grace period comes before this.
SHUTDOWN_SECONDS = 10.0


def create_app(config: ServeConfig) -> FastAPI:
    """The app for `config`; the model loads in the background once the server starts. With
    `grpc_port`, the gRPC door (`app.state.grpc`) starts and stops with it."""
    state = _build(config)
    # One access decision and one budget of bytes in flight, whichever door a call comes by.
    control = AccessControl(
        ApiKeys(list(config.api_keys), list(config.admin_keys)),
        RateLimiter(config.rate_limit, config.rate_burst),
        open_health=not config.protect_health,
        open_metrics=not config.protect_metrics,
    )
    inflight = InflightBytes(config.max_inflight_bytes)
    door = None
    if config.grpc_port is not None:
        from pneumo_onnx.engine.serve.front.rpc.door import GrpcDoor  # grpc: only when asked

        door = GrpcDoor(state, control, inflight)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if door is not None:
            await door.start()
        loading = None
        if config.load_before_serving:  # --workers N: a worker takes requests only when ready
            await _load(state)
        else:  # one process: live at once, ready when the model is
            loading = asyncio.get_running_loop().create_task(_load(state))
        try:
            yield
        finally:
            if loading is not None:
                loading.cancel()
            if door is not None:  # calls in flight finish first: they need the scoring path
                await door.stop()
            # The job chunk in hand is scored through the batcher and decode pool: let it
            # finish (and the runner stop) before they close, or the job would fail.
            state.runner.request_stop()
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, state.runner.stop, SHUTDOWN_SECONDS)
            await state.service.close()
            state.jobs.close()
            state.metrics.close()
            unwritten = await loop.run_in_executor(
                None, state.prediction_log.close_within, SHUTDOWN_SECONDS
            )
            if unwritten:
                log.error(
                    "server stopped: %d predictions could not be written to the log "
                    "(%s) and are lost",
                    unwritten,
                    state.prediction_log.failure or "the writer did not finish in time",
                )
            else:
                log.info("server stopped: queued requests scored, prediction log flushed")

    app = GatedApp(
        docs_url=None,  # served from the package by routes.docs (no CDN)
        redoc_url=None,
        openapi_url=None,  # served by routes.docs, which declares its access
        title="pneumo-onnx",
        version=__version__,
        description="Chest X-ray pneumonia scoring with onnxruntime (research use, not a "
        "medical device). Seed routes, KServe V2 inference protocol, jobs and monitoring.",
        lifespan=lifespan,
    )
    app.state.server = state
    app.state.grpc = door
    http_errors.add_handlers(app)
    for router in (seed.router, v2.router, ops.router, docs.router, cloud.sagemaker):
        app.include_router(router)
    taken = {str(getattr(r, "path", "")) for r in app_routes(app.routes)}
    app.include_router(cloud.vertex_router(*cloud.vertex_paths(os.environ), taken=taken))
    # Every HTTP request passes the gate first; the inference routes go from it straight to
    # their endpoints, past FastAPI's middleware and router.
    direct = (seed.predict, v2.infer, v2.infer_version)
    app.enter_through(
        lambda inner: Gate(
            DirectRoutes(inner, endpoints=direct),
            control=control,
            metrics=state.metrics,
            max_body=config.max_upload_bytes,
            inflight=inflight,
            body_timeout=config.body_timeout,
            loopback_only=config.loopback_only,
        )
    )
    return app


def _build(config: ServeConfig) -> ServerState:
    metrics = ServerMetrics()
    folder = _state_dir(config.state_dir)
    # One PostgreSQL database that servers share, or a SQLite file per store in the folder.
    database = config.database
    jobs = JobStore(database or folder / "jobs.db", max_pending_bytes=config.job_store_bytes)
    prediction_log = PredictionLog(
        database or folder / "predictions.db",
        store_images=config.log_images,
        retention_days=config.log_retention_days,
    )
    root = config.model_repo or default_model_dir().parent
    service = ScoringService(
        ModelRegistry(root, config.device, config.variant, config.threads, config.preprocessing),
        metrics,
        max_batch=config.max_batch,
        max_delay=config.max_delay_s,
        max_queue=config.max_queue,
        decode_workers=config.decode_workers,
        decode_limits=config.decode_limits,
        cache_size=config.cache_size,
        max_request_pixels=config.max_request_pixels,
        max_inflight_pixels=config.max_decode_pixels,
        max_queue_delay=config.max_queue_delay,
        keep_images=config.log_images,
        prediction_log=prediction_log,
    )
    # A chunk is one request to the scoring path, which refuses more images than its queue
    # holds: a chunk of max_batch over a shorter queue would fail every job.
    chunk = min(config.max_batch, config.max_queue)
    runner = JobRunner(jobs, service.score_job, chunk=chunk, ttl_hours=config.job_ttl)
    return ServerState(config, service, metrics, prediction_log, jobs, runner)


async def _load(state: ServerState) -> None:
    try:
        await state.service.start(state.config.model)
        # What the server holds from now on (modules, the app, the model) is never garbage: the
        # collector stops scanning it (after one last pass, so that no garbage is kept). Its
        # full passes, over all of it, had cost each request ~0.03 CPU-ms on the event loop.
        gc.collect()
        gc.freeze()
        log.info("ready: serving %s", state.service.default_model)
        state.runner.start()  # resumes jobs a previous run accepted and did not finish
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
        raise FileAccessError("write to the state folder", path, e) from e
    return path


def app_from_env() -> FastAPI:
    """uvicorn factory for `--workers N`: each worker process gets the whole config, resolved
    by `pneumo serve`, as JSON in the environment (no setting is read from another variable;
    only the Vertex AI routes, as in every process, come from AIP_*)."""
    from pneumo_onnx.engine.serve.config import CONFIG_ENV
    from pneumo_onnx.engine.serve.logs import configure

    configure("INFO")  # a worker process starts with no logging: the same JSON lines as one
    logging.getLogger("python_multipart").setLevel(logging.ERROR)
    return create_app(ServeConfig.from_json(os.environ[CONFIG_ENV]))
