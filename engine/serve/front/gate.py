"""The ASGI middleware every request passes first: request id, ambiguous framing, Host and
cross-site checks, upload size limit and the budget of request bodies in flight, the body read
timeout, the access policy declared by the route the request will reach (API and admin keys),
rate limits (refused keys included), metrics and the access log, and the last word on
unexpected errors (500 with the request id, logged once). Pure ASGI (no BaseHTTPMiddleware), so
an oversized body, or a caller without the right key, is refused before anything buffers it.

Bodies are metered as they arrive, whatever their framing (Content-Length or chunked): each
chunk counts against the upload limit, the bytes in flight of all requests and the body
deadline. What a request announces costs nothing; what it sends does. A request with both
Content-Length and Transfer-Encoding is refused (400) and its connection closed (RFC 9112,
6.1): two parsers could cut it differently, and the rest of its body read as a request."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import urlsplit

from pneumo_onnx.engine.runtime.awaiting import until
from pneumo_onnx.engine.serve.config import LOOPBACK_HOSTS
from pneumo_onnx.engine.serve.front import errors as http_errors
from pneumo_onnx.engine.serve.front.bodies import is_byte_count
from pneumo_onnx.engine.serve.front.budget import InflightBytes
from pneumo_onnx.engine.serve.front.security import (
    API_KEY_HEADER,
    AccessControl,
    Refusal,
    RouteTable,
)
from pneumo_onnx.engine.serve.logs import sane_request_id
from pneumo_onnx.engine.serve.metrics import ServerMetrics

log = logging.getLogger("pneumo_onnx.engine.serve.access")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
LOOPBACK_NAMES = {*LOOPBACK_HOSTS, "[::1]"}  # as Host headers name them (IPv6 in brackets)


class _Refused(Exception):
    """Raised inside the app's `receive`: the body broke a limit; `answer` says which."""

    def __init__(self, answer: ASGIApp) -> None:
        super().__init__()
        self.answer = answer


class Gate:
    def __init__(
        self,
        app: ASGIApp,
        *,
        control: AccessControl,
        metrics: ServerMetrics,
        max_body: int,
        inflight: InflightBytes,
        body_timeout: float,
        loopback_only: bool,
    ) -> None:
        self.app = app
        self.control = control
        self.metrics = metrics
        self.max_body = max_body
        self.inflight = inflight  # request bodies being received or handled, both doors
        self.body_timeout = body_timeout
        self.loopback_only = loopback_only
        self.routes = RouteTable()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        request_id = sane_request_id(headers.get("x-request-id"))
        scope.setdefault("state", {})["request_id"] = request_id
        status: dict[str, Any] = {"code": 500, "started": False, "refused": None}

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                status["started"] = True
                message.setdefault("headers", [])
                message["headers"].append((b"x-request-id", request_id.encode()))
            await send(message)

        async def send_from_app(message: Message) -> None:
            # A body refused while the app read it may surface in the app as some parse
            # error of its own (a form parser's 400): the client gets the answer that says
            # what happened.
            refused = status["refused"]
            if refused is None:
                await send_with_id(message)
            elif message["type"] == "http.response.start" and not status["started"]:
                await refused(scope, receive, send_with_id)

        meter = _Meter(self)
        try:
            refusal = self._refusal(scope, headers)
            if refusal is None and _has_body(headers):
                receive = meter.wrap(receive, status)
            await (refusal or self.app)(scope, receive, send_from_app)
        except _Refused as e:
            if not status["started"]:
                await e.answer(scope, receive, send_with_id)
        except Exception:
            # Nothing handled it: log it once with the request id, answer 500 (if the response
            # has not begun), and keep serving.
            log.exception("unexpected error", extra={"request_id": request_id})
            if not status["started"]:
                await http_errors.internal_error(request_id)(scope, receive, send_with_id)
        finally:
            meter.close()
            route = _route_of(scope)
            elapsed = time.perf_counter() - started
            self.metrics.answered(route, str(status["code"]), elapsed)
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
        """A response that ends the request here, or None to let it through (with the access
        it was granted in the scope's state, which the route's policy checks again)."""
        if "transfer-encoding" in headers and "content-length" in headers:
            return http_errors.error_response(
                400,
                "a request may not carry both Content-Length and Transfer-Encoding",
                {"Connection": "close"},
            )
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
        if length is not None and is_byte_count(length) and int(length) > self.max_body:
            return http_errors.too_large(self.max_body)
        routes = getattr(getattr(scope.get("app"), "router", None), "routes", None) or []
        picked = self.routes.pick(routes, scope)  # the route the router will pick
        declared = picked.access
        client = (scope.get("client") or ("unknown",))[0]
        granted = self.control.check(declared, headers.get(API_KEY_HEADER.lower()), client)
        if isinstance(granted, Refusal):
            return _answer(granted)
        if granted:
            scope["state"]["key_id"] = granted
        scope["state"]["access"] = declared
        scope["state"]["route"] = picked  # for `DirectRoutes`: one pick, the gate's
        return None

    def _too_slow(self) -> ASGIApp:
        message = f"request body not received within {self.body_timeout:g} s"
        return http_errors.error_response(408, message, {"Connection": "close"})


class _Meter:
    """One request's body as it arrives: its size against the upload limit, the bytes in
    flight of all requests, its deadline. What it charged is given back by `close`."""

    def __init__(self, gate: Gate) -> None:
        self.gate = gate
        self.size = 0  # bytes received
        self.charged = 0  # of them, in the gate's bytes in flight

    def wrap(self, receive: Receive, status: dict[str, Any]) -> Receive:
        gate = self.gate
        deadline = asyncio.get_running_loop().time() + gate.body_timeout
        done = False

        def refuse(answer: ASGIApp) -> _Refused:
            status["refused"] = answer
            return _Refused(answer)

        async def metered() -> Message:
            nonlocal done
            if done:
                return await receive()
            try:
                message = await until(deadline, receive)
            except TimeoutError:
                raise refuse(gate._too_slow()) from None
            if message["type"] != "http.request":
                return message
            chunk = len(message.get("body", b""))
            self.size += chunk
            if self.size > gate.max_body:
                raise refuse(http_errors.too_large(gate.max_body, close=True))
            busy = gate.inflight.charge(chunk, self.charged)
            if busy is not None:
                raise refuse(http_errors.busy(busy, close=True))
            self.charged += chunk
            if not message.get("more_body", False):
                done = True
            return message

        return metered

    def close(self) -> None:
        self.gate.inflight.release(self.charged)
        self.charged = 0


def _answer(refusal: Refusal) -> ASGIApp:
    if refusal.kind == "unauthorized":
        return http_errors.unauthorized()
    if refusal.kind == "rate_limited":
        return http_errors.rate_limited(refusal.message, refusal.wait)
    return http_errors.forbidden(refusal.message)


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


def _has_body(headers: dict[str, str]) -> bool:
    length = headers.get("content-length")
    return "transfer-encoding" in headers or (length is not None and length not in ("", "0"))


def _route_of(scope: Scope) -> str:
    """The route template (bounded label values), not the raw path."""
    route = scope.get("route")
    return getattr(route, "path", None) or "unmatched"
