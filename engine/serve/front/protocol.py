"""uvicorn's httptools protocol (llhttp, in C: a request's parsing costs a fraction of h11's,
benchmarks/RESULTS.md, issue 24) with what a server facing the open network needs beyond it:

- a deadline for request headers: a client that connects and sends nothing, or trickles its
  headers, is disconnected after `--header-timeout` seconds instead of holding a connection for
  ever (uvicorn's keep-alive timeout only runs between requests; the body's deadline is the
  gate's);
- at most `--max-connections-per-client` connections from one address (the proxies trusted
  with X-Forwarded-For excepted): past it, a new one gets the API's JSON 503 and is closed;
- before a new connection would go past `--max-connections`, the connections that wait for a
  request the longest (nothing sent, or headers trickling) are closed to make room, so that
  idle sockets cannot lock clients out; only busy ones can, and they get the API's JSON 503;
- a request's line and headers at most MAX_HEAD_BYTES (llhttp has no limit of its own; h11
  stopped at 16 KB): past it, the API's JSON 431 and the connection closed;
- a request the parser refuses (malformed framing) gets the API's JSON 400, not text.

And two copies fewer per request: a body's chunks are joined once, when the app receives them
(uvicorn appends each to a buffer, then copies that out: a 335 KB upload was copied three
times), and what a response writes in one turn of the loop (its status line and headers, then
its body) leaves in one write: one segment, one wake-up of the client.
"""

from __future__ import annotations

import asyncio
import functools
import json
import sys
from typing import Any, cast

from starlette.types import Receive, Scope, Send
from uvicorn.protocols.http import httptools_impl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from pneumo_onnx.engine.serve.front.errors import error_response

OVER_CAPACITY = "the server has too many connections open: try again later"
TOO_MANY_FROM_YOU = "too many connections from your address: close some, then try again"
MAX_HEAD_BYTES = 64 * 1024  # a request line and its headers
HEAD_TOO_LARGE = f"the request line and headers are over {MAX_HEAD_BYTES // 1024} KB"


async def over_capacity(scope: Scope, receive: Receive, send: Send) -> None:
    """What a request gets past uvicorn's limit_concurrency (`--max-connections`): the API's
    JSON 503 with Retry-After, and the connection closed, as uvicorn's own answer does."""
    headers = {"Retry-After": "1", "Connection": "close"}
    await error_response(503, OVER_CAPACITY, headers)(scope, receive, send)


# uvicorn looks this ASGI app up in its protocol module's globals for each request over its
# limit; it has no setting for it, so the module that owns our HTTP protocol replaces it, once,
# at import.
httptools_impl.service_unavailable = over_capacity  # type: ignore[assignment]


class GuardedHttpProtocol(HttpToolsProtocol):
    _head_bytes = 0  # of the request line and headers so far
    _writer: OneWritePerTurn | None = None  # what the connection's responses write to
    _header_timer: asyncio.TimerHandle | None = None
    _waiting_since = 0.0  # when it last began to wait for a request

    def __init__(
        self,
        *args: Any,
        header_timeout: float,
        per_client: int,
        trusted: frozenset[str],
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.header_timeout = header_timeout
        self.per_client = per_client  # 0: no limit
        self.trusted = trusted  # addresses exempt from the per-client limit ("*": all)

    @classmethod
    def configured(
        cls, header_timeout: float, per_client: int, trusted: tuple[str, ...]
    ) -> type[asyncio.Protocol]:
        """What uvicorn's `http` option takes: this class with its settings bound. A partial
        of a module-level class pickles, so it reaches `--workers N` processes inside
        uvicorn's own config."""
        bound = functools.partial(
            cls, header_timeout=header_timeout, per_client=per_client, trusted=frozenset(trusted)
        )
        return cast(type[asyncio.Protocol], bound)  # uvicorn only calls it

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[arg-type]
        self._writer = OneWritePerTurn(self.transport)
        self._waiting_since = self.loop.time()
        if self._over_client_limit():
            _refuse(transport, "503 Service Unavailable", TOO_MANY_FROM_YOU)
            return
        self._make_room()
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._awaiting_headers():
            self._arm()
        super().data_received(data)
        if not self._awaiting_headers():
            self._disarm()

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is None or cycle.response_complete:
            return
        cycle.transport = self._writer  # type: ignore[assignment]

    def on_body(self, body: bytes) -> None:
        # Where uvicorn copies the body out of a bytearray (0.30 on), it takes the chunks that
        # came since the app last received instead (a new buffer after each receive).
        cycle = self.cycle
        if cycle is not None and type(cycle.body) is bytearray and not cycle.body:
            cycle.body = BodyChunks()  # type: ignore[assignment]
        super().on_body(body)

    def on_response_complete(self) -> None:
        # A whole response leaves now: uvicorn may close the connection itself next (a
        # shutdown closes one whose response is complete), past what holds its bytes.
        if self._writer is not None:
            self._writer.flush()
        self._waiting_since = self.loop.time()
        super().on_response_complete()

    def send_400_response(self, msg: str) -> None:
        """What uvicorn answers a request its parser refuses, as the API answers: JSON, with
        what the parser found (uvicorn calls this while handling the parser's error)."""
        if self._head_bytes > MAX_HEAD_BYTES:
            _refuse(self.transport, "431 Request Header Fields Too Large", HEAD_TOO_LARGE, False)
            return
        found = sys.exc_info()[1]
        if found is not None and str(found):
            msg = f"malformed HTTP request: {str(found)[:200]}"
        _refuse(self.transport, "400 Bad Request", msg, retry=False)

    def on_message_begin(self) -> None:
        self._head_bytes = 0
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        self._count_head(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value))
        super().on_header(name, value)

    def _count_head(self, size: int) -> None:
        """Past MAX_HEAD_BYTES the parser stops (a callback that raises ends its feed) and
        uvicorn calls `send_400_response`, which answers 431."""
        self._head_bytes += size
        if self._head_bytes > MAX_HEAD_BYTES:
            raise ValueError(HEAD_TOO_LARGE)

    def _over_client_limit(self) -> bool:
        limit = self.per_client
        address = self.client[0] if self.client else None
        if limit <= 0 or address is None or address in self.trusted or "*" in self.trusted:
            return False
        same = sum(1 for p in self._ours() if p.client and p.client[0] == address)
        return same > limit

    def _make_room(self) -> None:
        """Close the connections waiting longest for a request until this one fits within
        `--max-connections` (uvicorn answers 503 at that limit)."""
        limit = self.limit_concurrency
        if limit is None or len(self.connections) < limit:
            return
        idle = sorted(
            (p for p in self._ours() if p is not self and p._awaiting_headers()),
            key=lambda p: p._waiting_since,
        )
        for p in idle[: len(self.connections) - limit + 1]:
            p.transport.close()
            # Counted out now, not when the loop gets to its connection_lost: uvloop may hand
            # this connection's request to uvicorn's limit check first.
            self.connections.discard(p)

    def _ours(self) -> list[GuardedHttpProtocol]:
        return [p for p in self.connections if isinstance(p, GuardedHttpProtocol)]

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _awaiting_headers(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _arm(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout, self._expire)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _expire(self) -> None:
        self._header_timer = None
        if self._awaiting_headers() and not self.transport.is_closing():
            self.transport.close()


class BodyChunks:
    """A request body's chunks as the parser hands them over, joined when the app receives
    them (one chunk: not copied at all). What uvicorn does with its body buffer it does with
    this: `+=` a chunk, `len`, `bytes`."""

    __slots__ = ("chunks", "size")

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.size = 0

    def __iadd__(self, chunk: bytes) -> BodyChunks:
        self.chunks.append(chunk)
        self.size += len(chunk)
        return self

    def __len__(self) -> int:
        return self.size

    def __bytes__(self) -> bytes:
        return b"".join(self.chunks)


class OneWritePerTurn:
    """A connection's transport as its responses write to it: what they write in one turn of
    the event loop goes out as one write when the response is complete (`flush`), at the end
    of that turn, or before the connection is closed, whichever comes first. uvicorn writes a
    response's status line and headers as soon as it has them, and its body next; two writes
    were two segments and two wake-ups of the client. Responses on a connection are one after
    another, so one writer serves them all, in order."""

    __slots__ = ("_held", "_transport")

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._held: list[bytes] | None = None

    def write(self, data: bytes) -> None:
        if self._held is None:
            self._held = [data]
            asyncio.get_running_loop().call_soon(self.flush)
        else:
            self._held.append(data)

    def flush(self) -> None:
        held, self._held = self._held, None
        if held and not self._transport.is_closing():
            self._transport.write(b"".join(held))

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def _refuse(
    transport: asyncio.BaseTransport, status: str, message: str, retry: bool = True
) -> None:
    """Answer a connection we will not serve (or no longer) with the API's JSON error, then
    close it; `retry`: with Retry-After (the refusal is for now)."""
    body = json.dumps({"error": message}).encode()
    head = (
        f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\n"
        + ("retry-after: 1\r\n" if retry else "")
        + f"connection: close\r\ncontent-length: {len(body)}\r\n\r\n"
    )
    # uvloop's transports write without deriving from asyncio.WriteTransport
    write = getattr(transport, "write", None)
    if callable(write):
        write(head.encode() + body)
    transport.close()
