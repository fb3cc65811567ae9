"""The ASGI middleware every request passes first: request id, Host and cross-site checks,
upload size limit and the budget of request bodies in flight, the body read timeout, API and
admin keys, rate limits (refused keys included), metrics and the access log, and the last word
on unexpected errors (500 with the request id, logged once). Pure ASGI (no
BaseHTTPMiddleware), so an oversized body is refused before anything buffers it."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import urlsplit

from engine.serve import http_errors
from engine.serve.metrics import ServerMetrics
from engine.serve.security import API_KEY_HEADER, ApiKeys, RateLimiter

log = logging.getLogger("engine.serve.access")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

DOCS = {"/docs", "/openapi.json"}
DOCS_ASSETS = "/docs/static/"
HEALTH = {"/health", "/v2/health/live", "/v2/health/ready"}
ADMIN_PREFIX = "/v2/repository/models/"
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
LOOPBACK_NAMES = {"127.0.0.1", "localhost", "::1", "[::1]"}
# Requests with a missing or wrong key, per client address: a client that keeps guessing gets
# 429 instead of an answer that tells it whether its guess was right.
REFUSED_RATE, REFUSED_BURST = 2.0, 10


class _TooLarge(Exception):
    pass


class _TooSlow(Exception):
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
        max_inflight_bytes: int | None = None,
        body_timeout: float = 60.0,
        loopback_only: bool = False,
    ) -> None:
        self.app = app
        self.keys = keys
        self.limiter = limiter
        self.refused = RateLimiter(REFUSED_RATE, REFUSED_BURST)
        self.metrics = metrics
        self.max_body = max_body
        self.max_inflight_bytes = max_inflight_bytes or 16 * max_body
        self.inflight_bytes = 0  # request bodies being received or handled (event loop only)
        self.body_timeout = body_timeout
        self.loopback_only = loopback_only
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
        status: dict[str, Any] = {"code": 500, "started": False, "too_slow": False}

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                status["started"] = True
                message.setdefault("headers", [])
                message["headers"].append((b"x-request-id", request_id.encode()))
            await send(message)

        async def send_from_app(message: Message) -> None:
            # A body that timed out may surface in the app as some parse error of its own
            # (a form parser's 400): the client gets the 408 that says what happened.
            if not status["too_slow"]:
                await send_with_id(message)
            elif message["type"] == "http.response.start" and not status["started"]:
                await self._too_slow()(scope, receive, send_with_id)

        reserved = 0
        try:
            refusal = self._refusal(scope, headers)
            if refusal is None:
                reserved = self._body_size(headers)
                if (
                    self.inflight_bytes > 0
                    and self.inflight_bytes + reserved > self.max_inflight_bytes
                ):
                    refusal = http_errors.busy(
                        f"server busy: {self.inflight_bytes / 2**20:.0f} MB of requests already "
                        "being received or handled"
                    )
                    reserved = 0
                self.inflight_bytes += reserved
            if refusal is None and reserved:
                receive = self._timed(receive, status)
                if "content-length" not in headers:
                    # Chunked upload: read it here, up to the limit, before the app sees it.
                    receive = await _buffered(receive, self.max_body)
            await (refusal or self.app)(scope, receive, send_from_app)
        except _TooLarge:
            await http_errors.too_large(self.max_body)(scope, receive, send_with_id)
        except _TooSlow:
            if not status["started"]:
                await self._too_slow()(scope, receive, send_with_id)
        except Exception:
            # Nothing handled it: log it once with the request id, answer 500 (if the response
            # has not begun), and keep serving.
            log.exception("unexpected error", extra={"request_id": request_id})
            if not status["started"]:
                await http_errors.internal_error(request_id)(scope, receive, send_with_id)
        finally:
            self.inflight_bytes -= reserved
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
        host = _hostname(headers.get("host", ""))
        if self.loopback_only and host not in LOOPBACK_NAMES:
            return http_errors.forbidden(
                f"Host {host[:60]!r} is not served here: this server listens on loopback only"
            )
        if scope["method"] not in SAFE_METHODS and _cross_site(headers):
            return http_errors.forbidden(
                "cross-site request refused: its Origin is not this server"
            )
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            return http_errors.too_large(self.max_body)
        if path in self.open or path.startswith(DOCS_ASSETS):
            return None
        client = (scope.get("client") or ("unknown",))[0]
        match = None
        if self.keys.enabled:
            match = self.keys.match(headers.get(API_KEY_HEADER.lower()))
            if match is None:  # guessing keys is rate limited per address, always
                wait = self.refused.acquire(client)
                if wait:
                    return http_errors.rate_limited(self.refused.rate, wait)
                return http_errors.unauthorized()
            scope["state"]["key_id"] = match[0]
        if path.startswith(ADMIN_PREFIX) and not (match and match[1]):
            if not self.keys.has_admin:
                return http_errors.forbidden(
                    "repository control is disabled: start the server with admin keys "
                    "(PNEUMO_ADMIN_KEYS or --admin-key-file)"
                )
            return http_errors.forbidden("repository control needs an admin key")
        wait = self.limiter.acquire(match[0] if match else client)
        if wait:
            return http_errors.rate_limited(self.limiter.rate, wait)
        return None

    def _body_size(self, headers: dict[str, str]) -> int:
        """The bytes this request's body will hold (the limit for a chunked one)."""
        length = headers.get("content-length")
        if length is not None:
            return int(length) if length.isdigit() else 0
        return self.max_body if headers.get("transfer-encoding") else 0

    def _too_slow(self) -> ASGIApp:
        message = f"request body not received within {self.body_timeout:g} s"
        return http_errors.error_response(408, message, {"Connection": "close"})

    def _timed(self, receive: Receive, status: dict[str, Any]) -> Receive:
        """`receive`, failing with _TooSlow once the body takes longer than body_timeout
        (and marking `status` so, whatever the app makes of it)."""
        deadline = time.monotonic() + self.body_timeout
        done = False

        async def timed() -> Message:
            nonlocal done
            if done:
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                status["too_slow"] = True
                raise _TooSlow from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                done = True
            return message

        return timed


def _hostname(host: str) -> str:
    """The name part of a Host header ('[::1]:8000' -> '[::1]', 'a.b:80' -> 'a.b')."""
    host = host.strip().lower()
    if host.startswith("["):
        return host.split("]", 1)[0] + "]"
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _cross_site(headers: dict[str, str]) -> bool:
    """A browser sent this from another site's page (a form POST, a fetch): its Origin names
    another host than the one it asked, or Sec-Fetch-Site says so. Clients that are not
    browsers send neither header."""
    if headers.get("sec-fetch-site", "") in ("cross-site", "same-site"):
        return True
    origin = headers.get("origin")
    if origin is None:
        return False
    if origin == "null":  # sandboxed frames, file: pages, some redirects
        return True
    return urlsplit(origin).netloc.lower() != headers.get("host", "").strip().lower()


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
