"""The ASGI middleware every request passes first: request id, upload size limit, API key,
rate limit, metrics and the access log, and the last word on unexpected errors (500 with the
request id, logged once). Pure ASGI (no BaseHTTPMiddleware), so an oversized body is refused
before anything buffers it."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from engine.serve import http_errors
from engine.serve.metrics import ServerMetrics
from engine.serve.security import API_KEY_HEADER, ApiKeys, RateLimiter

log = logging.getLogger("engine.serve.access")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

DOCS = {"/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"}
HEALTH = {"/health", "/v2/health/live", "/v2/health/ready"}
ADMIN_PREFIX = "/v2/repository"


class _TooLarge(Exception):
    pass


class Gate:
    def __init__(
        self,
        app: ASGIApp,
        *,
        keys: ApiKeys,
        limiter: RateLimiter,
        metrics: ServerMetrics,
        max_body: int,
        open_health: bool = True,
        open_metrics: bool = True,
    ) -> None:
        self.app = app
        self.keys = keys
        self.limiter = limiter
        self.metrics = metrics
        self.max_body = max_body
        self.open = set(DOCS) | (HEALTH if open_health else set())
        if open_metrics:
            self.open.add("/metrics")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        request_id = _request_id(headers.get("x-request-id"))
        scope.setdefault("state", {})["request_id"] = request_id
        status = {"code": 500, "started": False}

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                status["started"] = True
                message.setdefault("headers", [])
                message["headers"].append((b"x-request-id", request_id.encode()))
            await send(message)

        refusal = self._refusal(scope, headers)
        try:
            if refusal is None and "content-length" not in headers:
                # Chunked upload: read it here, up to the limit, before the app sees it.
                receive = await _buffered(receive, self.max_body)
            await (refusal or self.app)(scope, receive, send_with_id)
        except _TooLarge:
            await http_errors.too_large(self.max_body)(scope, receive, send_with_id)
        except Exception:
            # Nothing handled it: log it once with the request id, answer 500 (if the response
            # has not begun), and keep serving.
            log.exception("unexpected error", extra={"request_id": request_id})
            if not status["started"]:
                await http_errors.internal_error(request_id)(scope, receive, send_with_id)
        finally:
            route = _route_of(scope)
            elapsed = time.perf_counter() - started
            self.metrics.requests.labels(route, str(status["code"])).inc()
            self.metrics.latency.labels(route).observe(elapsed)
            log.info(
                "%s %s %d",
                scope["method"],
                scope["path"],
                status["code"],
                extra={
                    "request_id": request_id,
                    "route": route,
                    "status": status["code"],
                    "latency_ms": round(elapsed * 1000, 2),
                    "client": (scope.get("client") or ("-",))[0],
                },
            )

    def _refusal(self, scope: Scope, headers: dict[str, str]) -> ASGIApp | None:
        """A response that ends the request here, or None to let it through."""
        path = scope["path"]
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            return http_errors.too_large(self.max_body)
        if path in self.open:
            return None
        key_id = None
        if self.keys.enabled:
            key_id = self.keys.match(headers.get(API_KEY_HEADER.lower()))
            if key_id is None:
                return http_errors.unauthorized()
        elif path.startswith(ADMIN_PREFIX):
            return http_errors.forbidden(
                "repository control is disabled: start the server with API keys"
            )
        client = key_id or (scope.get("client") or ("unknown",))[0]
        wait = self.limiter.acquire(client)
        if wait:
            return http_errors.rate_limited(self.limiter.rate, wait)
        return None


def _request_id(given: str | None) -> str:
    """The caller's X-Request-ID when it is sane, else a fresh one."""
    if given and len(given) <= 128 and given.isascii() and given.isprintable():
        return given
    return uuid.uuid4().hex


def _route_of(scope: Scope) -> str:
    """The route template (bounded label values), not the raw path."""
    route = scope.get("route")
    return getattr(route, "path", None) or "unmatched"


async def _buffered(receive: Receive, max_body: int) -> Receive:
    """The whole body, read now (raises _TooLarge past `max_body`), replayed to the app."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return _replay([message], receive)
        chunks.append(message.get("body", b""))
        size += len(chunks[-1])
        if size > max_body:
            raise _TooLarge
        if not message.get("more_body", False):
            break
    body = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
    return _replay([body], receive)


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """The buffered messages first, then the live channel (for disconnect notices)."""
    pending = list(messages)

    async def replay() -> Message:
        return pending.pop(0) if pending else await receive()

    return replay
