"""The FastAPI application: wiring only. It builds the server's parts (`ServerState`), starts
and stops them with the app, and mounts the three front doors (`routes.seed`, `routes.v2`,
`routes.ops`) behind the gate; errors are answered by `http_errors`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI

from engine import __version__
from engine.errors import FileAccessError, PneumoError
from engine.repository.resolve import default_model_dir
from engine.serve import http_errors
from engine.serve.config import ServeConfig
from engine.serve.gate import Gate
from engine.serve.job_runner import JobRunner
from engine.serve.metrics import ServerMetrics
from engine.serve.registry import ModelRegistry
from engine.serve.routes import ops, seed, v2
from engine.serve.scoring import ScoringService
from engine.serve.security import ApiKeys, RateLimiter
from engine.serve.state import ServerState
from engine.serve.store.jobs import JobStore
from engine.serve.store.predictions import PredictionLog

log = logging.getLogger(__name__)


def create_app(config: ServeConfig | None = None) -> FastAPI:
    """The app for `config`; the model loads in the background once the server starts."""
    config = config or ServeConfig()
    state = _build(config)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
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
            state.runner.request_stop()
            await state.service.close()
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, state.runner.stop)
            await loop.run_in_executor(None, state.prediction_log.close)
            log.info("server stopped: queued requests scored, prediction log flushed")

    app = FastAPI(
        title="pneumo-onnx",
        version=__version__,
        description="Chest X-ray pneumonia scoring with onnxruntime (research use, not a "
        "medical device). Seed routes, KServe V2 inference protocol, jobs and monitoring.",
        lifespan=lifespan,
    )
    app.state.server = state
    http_errors.add_handlers(app)
    for router in (seed.router, v2.router, ops.router):
        app.include_router(router)
    app.add_middleware(
        Gate,
        keys=ApiKeys(list(config.api_keys)),
        limiter=RateLimiter(config.rate_limit, config.rate_burst),
        metrics=state.metrics,
        max_body=config.max_upload_bytes,
        open_health=config.open_health,
        open_metrics=config.open_metrics,
    )
    return app


def _build(config: ServeConfig) -> ServerState:
    metrics = ServerMetrics()
    folder = _state_dir(config.state_dir)
    prediction_log = PredictionLog(folder / "predictions.db", store_images=config.log_images)
    jobs = JobStore(folder / "jobs.db")
    root = config.model_repo or default_model_dir().parent
    service = ScoringService(
        ModelRegistry(root, config.device, config.variant, config.threads, config.preprocessing),
        metrics,
        max_batch=config.max_batch,
        max_delay=config.max_delay_ms / 1000.0,
        max_queue=config.max_queue,
        decode_threads=config.decode_threads,
        cache_size=config.cache_size,
        keep_images=config.log_images,
        on_prediction=prediction_log.record,
    )
    runner = JobRunner(jobs, service.score_job, chunk=config.max_batch)
    return ServerState(config, service, metrics, prediction_log, jobs, runner)


async def _load(state: ServerState) -> None:
    try:
        await state.service.start(state.config.model)
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
    """uvicorn factory for `--workers N`: each worker process reads the config from the env."""
    import os

    from engine.serve.config import CONFIG_ENV

    text = os.environ.get(CONFIG_ENV)
    return create_app(ServeConfig.from_json(text) if text else None)
