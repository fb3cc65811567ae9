"""The ASGI middleware every request passes first: request id, upload size limit, API key,
rate limit, metrics and the access log. Pure ASGI (no BaseHTTPMiddleware), so an oversized
body is refused before anything buffers it."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.responses import JSONResponse

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
        status = {"code": 500}

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
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
            await _too_large(self.max_body)(scope, receive, send_with_id)
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
            return _too_large(self.max_body)
        if path in self.open:
            return None
        key_id = None
        if self.keys.enabled:
            key_id = self.keys.match(headers.get(API_KEY_HEADER.lower()))
            if key_id is None:
                message = f"missing or invalid API key (send it in the {API_KEY_HEADER} header)"
                return JSONResponse(
                    {"error": message},
                    status_code=401,
                    headers={"WWW-Authenticate": API_KEY_HEADER},
                )
        elif path.startswith(ADMIN_PREFIX):
            return JSONResponse(
                {"error": "repository control is disabled: start the server with API keys"},
                status_code=403,
            )
        client = key_id or (scope.get("client") or ("unknown",))[0]
        wait = self.limiter.acquire(client)
        if wait:
            return JSONResponse(
                {"error": f"rate limit exceeded: at most {self.limiter.rate:g} requests/s"},
                status_code=429,
                headers={"Retry-After": str(wait)},
            )
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


def _too_large(max_body: int) -> ASGIApp:
    mb = max_body / (1024 * 1024)
    return JSONResponse({"error": f"request too large: the limit is {mb:g} MB"}, status_code=413)
