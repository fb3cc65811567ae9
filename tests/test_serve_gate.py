"""The gate and the error table, in process: an unexpected error anywhere behind the gate is
answered 500 as JSON with the request id (header and body), logged once, and the next request
is served; our errors map to their status in one place."""

from __future__ import annotations

import asyncio
import logging

import httpx
import pytest
from fastapi import FastAPI

from pneumo_onnx.engine.errors import (
    ConflictError,
    ImageError,
    ModelLoadError,
    NotFoundError,
    Overloaded,
    PneumoError,
    UsageError,
)
from pneumo_onnx.engine.serve.config import ServeConfig
from pneumo_onnx.engine.serve.front import errors as http_errors
from pneumo_onnx.engine.serve.front.budget import InflightBytes
from pneumo_onnx.engine.serve.front.entry import GatedApp
from pneumo_onnx.engine.serve.front.gate import Gate
from pneumo_onnx.engine.serve.front.security import AccessControl, ApiKeys, RateLimiter
from pneumo_onnx.engine.serve.metrics import ServerMetrics


def gated_app() -> FastAPI:
    app = GatedApp()
    http_errors.add_handlers(app)

    @app.get("/boom")
    async def boom() -> dict[str, str]:
        raise RuntimeError("a bug with /srv/secret/path in its message")

    @app.get("/fine")
    async def fine() -> dict[str, str]:
        return {"ok": "yes"}

    app.enter_through(  # as create_app does: the gate first, then FastAPI's own stack
        lambda inner: Gate(
            inner,
            control=AccessControl(
                ApiKeys([]), RateLimiter(0, 1), open_health=True, open_metrics=True
            ),
            metrics=ServerMetrics(),
            max_body=1024,
            inflight=InflightBytes(16 * 1024),
            body_timeout=ServeConfig().body_timeout,
            loopback_only=False,
        )
    )
    return app


def test_unexpected_errors_are_a_json_500_with_the_request_id(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def go() -> tuple[httpx.Response, httpx.Response]:
        transport = httpx.ASGITransport(app=gated_app())
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            boom = await client.get("/boom", headers={"X-Request-ID": "req-42"})
            fine = await client.get("/fine")
        return boom, fine

    with caplog.at_level(logging.ERROR):
        boom, fine = asyncio.run(go())
    assert boom.status_code == 500
    assert boom.headers["x-request-id"] == "req-42"
    assert boom.json() == {"error": "internal server error", "request_id": "req-42"}
    assert "secret" not in boom.text
    logged = [r for r in caplog.records if r.getMessage() == "unexpected error"]
    assert len(logged) == 1 and logged[0].request_id == "req-42"  # type: ignore[attr-defined]
    assert fine.status_code == 200 and fine.headers["x-request-id"]


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (Overloaded("busy", retry_after=3), 503),
        (NotFoundError("no such job"), 404),
        (ConflictError("not done"), 409),
        (ImageError("bad image"), 400),
        (UsageError("bad field"), 400),
        (ModelLoadError("broken version"), 409),
        (PneumoError("ours, unclassified"), 500),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, Exception) else str(v),
)
def test_each_error_class_has_its_status(error: PneumoError, status: int) -> None:
    response = http_errors.for_error(error)
    assert response.status_code == status
    assert response.body.decode() == f'{{"error":"{error.message}"}}'
    if isinstance(error, Overloaded):
        assert response.headers["retry-after"] == "3"
