"""The inference routes, straight from the gate to their endpoints: `POST /predict` and V2
`infer` pass neither FastAPI's middleware (`entry`) nor its route walk nor its dependency
injection, which cost ~0.3 CPU-ms of the ~1.3 an upload took on the event loop
(benchmarks/RESULTS.md, issue 24).

Each stays a FastAPI route: its path, the policy it declares, its OpenAPI documentation and
its endpoint are defined once, there. Whether a request is for one of them is the gate's
decision (the route the router would pick, which the gate found to enforce its policy); the
policy is checked again here, as the route's dependency would. An endpoint served here takes
the request and its path parameters, reads its own query and body, and raises our errors,
answered from the one table (`errors`) as FastAPI's handlers answer them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from fastapi import Request
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from pneumo_onnx.engine.errors import PneumoError
from pneumo_onnx.engine.serve.front import errors as http_errors
from pneumo_onnx.engine.serve.front.security import AccessNotChecked, Picked, declared_access

Endpoint = Callable[..., Awaitable[Response]]


class DirectRoutes:
    """ASGI middleware, inside the gate: a request the gate found to be for the route of one
    of `endpoints` is served here; any other goes on to the app."""

    def __init__(self, app: ASGIApp, endpoints: Sequence[Endpoint]) -> None:
        self.app = app
        self.endpoints = frozenset(endpoints)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        picked = scope.get("state", {}).get("route") if scope["type"] == "http" else None
        if not isinstance(picked, Picked):
            await self.app(scope, receive, send)
            return
        route = getattr(picked.route, "original_route", picked.route)  # newer FastAPI: a context
        if isinstance(route, APIRoute) and route.endpoint in self.endpoints:
            # as the router leaves them (the metrics label a request by its route's path)
            scope["path_params"] = dict(picked.path_params)
            scope["route"], scope["endpoint"] = route, route.endpoint
            response = await _answer(route, Request(scope, receive))
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


async def _answer(route: APIRoute, request: Request) -> Response:
    granted = request.scope["state"].get("access")
    (declared,) = declared_access(route)
    if granted != declared:  # as the route's Policy dependency refuses it
        raise AccessNotChecked(
            f"{request.url.path[:80]} declares {declared!r} access, the gate enforced {granted!r}"
        )
    endpoint: Any = route.endpoint
    try:
        response: Response = await endpoint(request, **request.path_params)
    except PneumoError as e:
        return http_errors.pneumo_error_response(request, e)
    except StarletteHTTPException as e:  # a malformed multipart form
        return http_errors.http_error_response(e)
    return response
