"""The app as uvicorn calls it: an HTTP request enters at the gate, which hands the inference
routes to `DirectRoutes` and every other request to FastAPI's own stack (its error pages, its
telemetry, its body limit, its router). The inference routes pass none of those layers, which
a request re-entered at each of its awaits (benchmarks/RESULTS.md, issue 24); the other routes
pass them as before, behind the gate.
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send


class GatedApp(FastAPI):
    """FastAPI, entered through `front` for HTTP once `enter_through` has set it (lifespan
    and any other scope go to FastAPI directly)."""

    _front: ASGIApp | None = None

    def enter_through(self, front: Callable[[ASGIApp], ASGIApp]) -> None:
        """`front(inner)`: what wraps FastAPI's own stack (`inner`) for HTTP requests."""
        self._front = front(self._stack)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self._front is not None:
            scope["app"] = self  # as Starlette sets it: the gate looks up routes in it
            await self._front(scope, receive, send)
            return
        await super().__call__(scope, receive, send)

    async def _stack(self, scope: Scope, receive: Receive, send: Send) -> None:
        await super().__call__(scope, receive, send)
