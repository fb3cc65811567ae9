"""What a running server is made of, in one object the routes reach through the request
(`app.state.server`): every route module reads its parts the same way."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from pneumo_onnx.engine.serve.config import ServeConfig
from pneumo_onnx.engine.serve.dataplane.job_runner import JobRunner
from pneumo_onnx.engine.serve.dataplane.scoring import ScoringService
from pneumo_onnx.engine.serve.metrics import ServerMetrics
from pneumo_onnx.engine.serve.store.jobs import JobStore
from pneumo_onnx.engine.serve.store.predictions import PredictionLog


@dataclass(frozen=True)
class ServerState:
    config: ServeConfig
    service: ScoringService
    metrics: ServerMetrics
    prediction_log: PredictionLog
    jobs: JobStore
    runner: JobRunner


def degraded(state: ServerState) -> list[str]:
    """What keeps the server from doing all its job now (a full disk...), for readiness."""
    problems = []
    if state.prediction_log.failure:
        problems.append(f"prediction log cannot write: {state.prediction_log.failure}")
    if state.jobs.failure:
        problems.append(f"job store cannot write: {state.jobs.failure}")
    return problems


def server(request: Request) -> ServerState:
    """The parts of the server that handles `request`."""
    state: ServerState = request.app.state.server
    return state


def request_id(request: Request) -> str:
    """The request's id (set by the gate: the caller's X-Request-ID or a fresh one)."""
    return str(request.scope.get("state", {}).get("request_id", ""))


def caller(request: Request) -> str:
    """Who asked, as the prediction log records it for audit: the fingerprint of the API key
    (never the key), or the client's address where keys are off."""
    key = key_id(request)
    if key:
        return f"key:{key}"
    return f"address:{request.client.host}" if request.client else ""


def key_id(request: Request) -> str:
    """The fingerprint of the API key the request came with ('' when keys are off): what
    owns the jobs it creates."""
    return str(request.scope.get("state", {}).get("key_id", ""))
