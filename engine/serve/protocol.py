"""uvicorn's h11 protocol with a deadline for request headers: a client that connects and
sends nothing, or trickles its headers, is disconnected after HEADER_TIMEOUT seconds instead
of holding a connection for ever (uvicorn's own keep-alive timeout only runs between requests,
and the body has its own deadline in the gate). Past `--max-connections` it answers the API's
JSON 503, not uvicorn's plain text."""

from __future__ import annotations

import asyncio
import os

from starlette.types import Receive, Scope, Send
from uvicorn.protocols.http import h11_impl
from uvicorn.protocols.http.h11_impl import H11Protocol

from engine.serve.http_errors import error_response

HEADER_TIMEOUT = 10.0
# `pneumo serve --header-timeout` reaches every worker process through the environment.
HEADER_TIMEOUT_ENV = "PNEUMO_HEADER_TIMEOUT"


def header_timeout() -> float:
    return float(os.environ.get(HEADER_TIMEOUT_ENV, HEADER_TIMEOUT))


OVER_CAPACITY = "the server has too many connections open: try again later"


async def over_capacity(scope: Scope, receive: Receive, send: Send) -> None:
    """What a request gets past uvicorn's limit_concurrency (`--max-connections`): the API's
    JSON 503 with Retry-After, and the connection closed, as uvicorn's own answer does."""
    headers = {"Retry-After": "1", "Connection": "close"}
    await error_response(503, OVER_CAPACITY, headers)(scope, receive, send)


# uvicorn looks this ASGI app up in h11_impl's globals for each request over its limit; it has no
# setting for it, so the module that owns our HTTP protocol replaces it, once, at import.
h11_impl.service_unavailable = over_capacity  # type: ignore[assignment]


class GuardedH11Protocol(H11Protocol):
    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._awaiting_headers():
            self._arm()
        super().data_received(data)
        if not self._awaiting_headers():
            self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _awaiting_headers(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _arm(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(header_timeout(), self._expire)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _expire(self) -> None:
        self._header_timer = None
        if self._awaiting_headers() and not self.transport.is_closing():
            self.transport.close()
