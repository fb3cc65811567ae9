"""What every gRPC call passes through, as every HTTP request passes the gate: its request id
(the caller's `x-request-id` metadata when sane), the access its method declares (the API key
in `authorization: Bearer KEY` or `x-api-key` metadata), the message's size and the bytes in
flight of both doors, the deadline for its message to arrive (`--body-timeout`), where the
message is parsed (`codec`), the one table from our errors to
a status (`errors.STATUS`, HTTP statuses mapped to gRPC codes as Triton maps them), metrics
(route `grpc:<Method>`, status the gRPC code's name) and the access log. A call the client
cancels or lets pass its deadline is cancelled here too: every budget it held is given back
on the way out."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc

from pneumo_onnx.engine.errors import Overloaded, PneumoError, TooLarge
from pneumo_onnx.engine.serve.front.bodies import SMALL_JSON
from pneumo_onnx.engine.serve.front.budget import InflightBytes
from pneumo_onnx.engine.serve.front.errors import status_of
from pneumo_onnx.engine.serve.front.inputs import off_loop
from pneumo_onnx.engine.serve.front.rpc import codec
from pneumo_onnx.engine.serve.front.rpc.methods import Call, Method
from pneumo_onnx.engine.serve.front.security import API_KEY_HEADER, AccessControl, Refusal
from pneumo_onnx.engine.serve.logs import sane_request_id
from pneumo_onnx.engine.serve.state import ServerState

log = logging.getLogger("pneumo_onnx.engine.serve.access")
Code = grpc.StatusCode

SMALL = SMALL_JSON  # a message parsed in the server itself; larger ones in a decode worker
# HTTP status -> gRPC code, for the statuses our errors and refusals take.
CODES = {
    400: Code.INVALID_ARGUMENT,
    401: Code.UNAUTHENTICATED,
    403: Code.PERMISSION_DENIED,
    404: Code.NOT_FOUND,
    409: Code.FAILED_PRECONDITION,
    413: Code.RESOURCE_EXHAUSTED,
    422: Code.INVALID_ARGUMENT,
    429: Code.RESOURCE_EXHAUSTED,
    501: Code.UNIMPLEMENTED,
    503: Code.UNAVAILABLE,
}
UNAUTHORIZED = (
    f"missing or invalid API key (send it as 'authorization: Bearer KEY' or "
    f"'{API_KEY_HEADER.lower()}: KEY' metadata)"
)


class _Stop(Exception):
    """Ends the call with `code` and `message` (and `retry_after` seconds, when busy)."""

    def __init__(self, code: grpc.StatusCode, message: str, retry_after: int = 0) -> None:
        super().__init__(message)
        self.code, self.message, self.retry_after = code, message, retry_after


class Guard:
    """One method's handler, guarded: what grpc calls with the raw message."""

    def __init__(
        self, method: Method, state: ServerState, control: AccessControl, inflight: InflightBytes
    ) -> None:
        self.method = method
        self.state = state
        self.control = control
        self.inflight = inflight

    def handler(self) -> grpc.RpcMethodHandler:
        """Raw bytes in (parsed here, where its size says), a message out. Unary to its
        callers, the method is read here as a stream of one message, so that the message's
        arrival has a deadline (`--body-timeout`, as a request body's over HTTP): grpc reads a
        unary call's message with none, and a caller that trickles one would hold its call
        (and one of the server's concurrent calls) for as long as it likes."""
        return grpc.stream_unary_rpc_method_handler(
            self.__call__, response_serializer=lambda m: m.SerializeToString()
        )

    async def __call__(
        self, messages: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> Any:
        started = time.perf_counter()
        metadata = {
            k.lower(): v for k, v in context.invocation_metadata() or () if isinstance(v, str)
        }
        request_id = sane_request_id(metadata.get("x-request-id"))
        trailers: list[tuple[str, str]] = [("x-request-id", request_id)]
        code, message, charged = Code.OK, "", 0
        try:
            caller = self._admit(metadata, context.peer())
            raw = await self._message(messages)
            busy = self.inflight.charge(len(raw))
            if busy is not None:
                raise Overloaded(busy)
            charged = len(raw)
            request = await self._parse(raw)
            response = await self.method.handler(Call(self.state, request_id, caller), request)
        except _Stop as e:
            code, message = e.code, e.message
        except PneumoError as e:
            code, message = CODES.get(status_of(e), Code.INTERNAL), e.message
            if isinstance(e, Overloaded):
                self.state.metrics.shed.inc()
                trailers.append(("retry-after", str(e.retry_after)))
        except asyncio.CancelledError:  # the client cancelled, or its deadline passed
            remaining = context.time_remaining()
            expired = remaining is not None and remaining <= 0
            code = Code.DEADLINE_EXCEEDED if expired else Code.CANCELLED
            raise
        except Exception:
            log.exception("unexpected error", extra={"request_id": request_id})
            code, message = Code.INTERNAL, f"internal server error (request id {request_id})"
        finally:
            self.inflight.release(charged)
            self._record(code, started, request_id, context.peer())
        if code is not Code.OK:
            await context.abort(code, message, trailing_metadata=tuple(trailers))
        context.set_trailing_metadata(tuple(trailers))
        return response

    def _admit(self, metadata: dict[str, str], peer: str) -> str:
        """Who calls, as the prediction log records it (`state.caller`), or _Stop."""
        key = metadata.get(API_KEY_HEADER.lower())
        bearer = metadata.get("authorization", "")
        if bearer[:7].lower() == "bearer ":
            key = bearer[7:].strip()
        granted = self.control.check(self.method.access, key, _address(peer))
        if isinstance(granted, Refusal):
            if granted.kind == "unauthorized":
                raise _Stop(Code.UNAUTHENTICATED, UNAUTHORIZED)
            if granted.kind == "rate_limited":
                raise _Stop(Code.RESOURCE_EXHAUSTED, granted.message, granted.wait)
            raise _Stop(Code.PERMISSION_DENIED, granted.message)
        return f"key:{granted}" if granted else f"address:{_address(peer)}"

    async def _message(self, messages: AsyncIterator[bytes]) -> bytes:
        """The call's one message, and its end, within the body deadline (else _Stop)."""
        seconds = self.state.config.body_timeout
        try:
            async with asyncio.timeout(seconds):
                raw = await anext(messages, None)
                more = await anext(messages, None) if raw is not None else None
        except TimeoutError:
            raise _Stop(
                Code.DEADLINE_EXCEEDED, f"request message not received within {seconds:g} s"
            ) from None
        if raw is None or more is not None:
            raise _Stop(Code.INVALID_ARGUMENT, f"{self.method.name} takes one request message")
        return raw

    async def _parse(self, raw: bytes) -> Any:
        if self.method.large:
            if len(raw) <= SMALL:
                return await off_loop(codec.parse_infer, raw)
            plain = await self.state.service.decoders.parse(len(raw), codec.parse_infer_task, raw)
            return codec.Envelope(*plain)
        if len(raw) > SMALL:
            raise TooLarge(
                f"a {self.method.request.__name__} message may be {SMALL} bytes, got {len(raw)}"
            )
        return await off_loop(codec.parse_message, self.method.request, raw)

    def _record(self, code: grpc.StatusCode, started: float, request_id: str, peer: str) -> None:
        route, status = self.method.route, code.name
        elapsed = time.perf_counter() - started
        self.state.metrics.answered(route, status, elapsed)
        log.info(
            "grpc %s %s",
            self.method.name,
            status,
            extra={
                "request_id": request_id,
                "route": route,
                "status": status,
                "latency_ms": round(elapsed * 1000, 2),
                "client": _address(peer),
            },
        )


def _address(peer: str) -> str:
    """The client's address in grpc's peer string ('ipv4:127.0.0.1:5000', 'ipv6:[::1]:5000')."""
    kind, _, rest = (peer or "").partition(":")
    if kind == "ipv6" and rest.startswith("["):
        return rest[1:].split("]", 1)[0]
    if kind == "ipv4":
        return rest.rsplit(":", 1)[0]
    return rest or "unknown"
