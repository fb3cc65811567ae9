"""Who may call what: the access policy each route declares, API keys and rate limits.

Every route declares its policy where it is declared (`dependencies=access("admin")`); the gate
(engine.serve.front.gate) finds the route a request will reach and enforces that route's
policy before the body is read. A route that declares none fails a test
(tests/test_serve_policy.py), and the gate treats it as `user`.

User and admin keys are read by `serve.keys` into the config; admin keys are the only ones
that may load, unload or roll back model versions. Keys are compared in constant
time, and only a short fingerprint of a key ever reaches logs, metrics or the job store.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import threading
import time
from collections import OrderedDict
from collections.abc import MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import fastapi.routing
from fastapi import Depends, Request, params
from starlette.routing import BaseRoute, Match

API_KEY_HEADER = "X-API-Key"
MAX_BUCKETS = 10_000  # clients the rate limiter remembers; the least recently seen go first
# Requests with a missing or wrong key, per client address: a client that keeps guessing gets
# 429 instead of an answer that tells it whether its guess was right.
REFUSED_RATE, REFUSED_BURST = 2.0, 10

# open: anyone (the API docs); health, metrics: anyone unless the server protects them
# (--protect-health, --protect-metrics), then as user; user: an API key when keys are configured
# (scoring, jobs, reports, model metadata); admin: an admin key (repository control).
Access = Literal["open", "health", "metrics", "user", "admin"]
STRICTNESS: tuple[Access, ...] = ("open", "health", "metrics", "user", "admin")
UNDECLARED: Access = "user"  # what the gate applies to a route that declares nothing


class AccessNotChecked(RuntimeError):
    """A route ran without the gate having enforced its declared policy: a bug (the gate and
    the router disagree on the route, or the app has no gate). The request is refused."""


@dataclass(frozen=True)
class Policy:
    """A route's declared access, as a FastAPI dependency: the gate reads it from the route
    before the request goes on, and the dependency itself refuses to run the route unless the
    gate enforced exactly this policy (a second lock, should the two ever disagree)."""

    access: Access

    async def __call__(self, request: Request) -> None:
        granted = request.scope.get("state", {}).get("access")
        if granted != self.access:
            raise AccessNotChecked(
                f"{request.url.path[:80]} declares {self.access!r} access, the gate enforced "
                f"{granted!r}"
            )


def access(level: Access) -> list[params.Depends]:
    """What a route passes as `dependencies=` to declare who may call it."""
    return [Depends(Policy(level))]


def declared_access(route: Any) -> list[Access]:
    """The policies `route` declares (a well-formed route declares exactly one)."""
    dependencies = getattr(route, "dependencies", None) or ()
    return [d.dependency.access for d in dependencies if isinstance(d.dependency, Policy)]


def app_routes(routes: Sequence[BaseRoute]) -> list[Any]:
    """Every route an app serves, in the order its router tries them. Newer FastAPI versions
    keep an included router as one entry of `app.routes` and list what it holds through
    `iter_route_contexts` (each context matches and declares as its route does); older ones
    copy the routes themselves into `app.routes`."""
    walk = getattr(fastapi.routing, "iter_route_contexts", None)
    return list(walk(routes)) if walk is not None else list(routes)


def picked_route(routes: Sequence[BaseRoute], scope: MutableMapping[str, Any]) -> Picked:
    """The route the router will pick for this request, as Starlette's router picks (the
    first full match; None for a 405 or a 404), and the policy that applies: that route's,
    else the first partial match's (a 405). A path no route matches (a 404) is `user`, so
    whether it exists stays hidden from a client without a key; so is a route that declares
    nothing. A route that declares several gets the strictest (and is then refused by the
    check of its other policy: the route test forbids it)."""
    partial = None
    for route in app_routes(routes):
        match, child = route.matches(scope)
        if match is Match.FULL:
            params = dict(child.get("path_params", {}))
            return Picked(route, _strictest(declared_access(route)), params)
        if match is Match.PARTIAL and partial is None:
            partial = route
    return Picked(None, _strictest(declared_access(partial)) if partial is not None else UNDECLARED)


@dataclass(frozen=True)
class Picked:
    route: Any  # what matched fully (the route, or in newer FastAPI its context), or None
    access: Access
    path_params: dict[str, Any] = field(default_factory=dict)  # as the router leaves them


class RouteTable:
    """`picked_route`, remembered per method and path: the route table is fixed once the
    app is built, and walking it costs more than the rest of the gate. At most
    MAX_REMEMBERED paths (clients choose them): past that it starts again empty."""

    MAX_REMEMBERED = 4096

    def __init__(self) -> None:
        self._known: dict[tuple[str, str, str], Picked] = {}

    def pick(self, routes: Sequence[BaseRoute], scope: MutableMapping[str, Any]) -> Picked:
        key = (scope.get("method", ""), scope.get("root_path", ""), scope["path"])
        found = self._known.get(key)
        if found is None:
            if len(self._known) >= self.MAX_REMEMBERED:
                self._known.clear()
            found = self._known[key] = picked_route(routes, scope)
        return found


def _strictest(levels: list[Access]) -> Access:
    return max(levels, key=STRICTNESS.index) if levels else UNDECLARED


def fingerprint(key: str) -> str:
    """What logs and rate limits see instead of the key."""
    return "key-" + hashlib.sha256(key.encode()).hexdigest()[:12]


class ApiKeys:
    """User keys (scoring, jobs, reports) and admin keys (all of that, plus repository
    control). Authentication is on as soon as any key is configured."""

    def __init__(self, keys: list[str], admin: list[str] | None = None) -> None:
        self._keys = [(k.encode(), False) for k in keys] + [(k.encode(), True) for k in admin or ()]

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    @property
    def has_admin(self) -> bool:
        return any(admin for _, admin in self._keys)

    def match(self, presented: str | None) -> tuple[str, bool] | None:
        """(fingerprint, is admin) of the matching key, or None. Compares against every key
        in constant time, so timing reveals neither which key nor how much of it matched."""
        if not presented:
            return None
        given = presented.encode()
        found = None
        for key, admin in self._keys:
            if hmac.compare_digest(key, given):
                found = (fingerprint(key.decode()), admin)
        return found


class RateLimiter:
    """A token bucket per client: `rate` requests per second on average, bursts of `burst`.
    At most `max_clients` buckets are kept: the least recently seen client is forgotten first
    (it comes back with a full bucket, which it would have had by then anyway if idle)."""

    def __init__(self, rate: float, burst: int, max_clients: int = MAX_BUCKETS) -> None:
        self.rate = rate
        self.burst = max(1, burst)
        self.max_clients = max(1, max_clients)
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._buckets)

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def acquire(self, client: str) -> int:
        """0 if the request may go on, else the whole seconds to wait (for Retry-After)."""
        if not self.enabled:
            return 0
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.pop(client, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate)
            allowed = tokens >= 1.0
            self._buckets[client] = (tokens - 1.0 if allowed else tokens, now)  # most recent last
            while len(self._buckets) > self.max_clients:
                self._buckets.popitem(last=False)
            return 0 if allowed else max(1, math.ceil((1.0 - tokens) / self.rate))


@dataclass(frozen=True)
class Refusal:
    """Why a call may not go on, for each front door to say in its own terms (HTTP 401, 403,
    429; gRPC UNAUTHENTICATED, PERMISSION_DENIED, RESOURCE_EXHAUSTED)."""

    kind: Literal["unauthorized", "forbidden", "rate_limited"]
    message: str = ""
    wait: int = 0  # rate_limited: whole seconds until a retry may pass


class AccessControl:
    """THE decision of who may call what, shared by the HTTP gate and the gRPC door so that a
    key, a rate limit and the budget of refused guesses count the same through either."""

    def __init__(
        self, keys: ApiKeys, limiter: RateLimiter, open_health: bool, open_metrics: bool
    ) -> None:
        self.keys = keys
        self.limiter = limiter
        self.refused = RateLimiter(REFUSED_RATE, REFUSED_BURST)
        # The declared policies anyone may call (no key, no rate limit).
        self.open: set[Access] = {"open"}
        if open_health:
            self.open.add("health")
        if open_metrics:
            self.open.add("metrics")

    def check(self, declared: Access, presented: str | None, client: str) -> str | Refusal:
        """The fingerprint of the caller's key ('' when keys are off or the policy is open),
        or why the call is refused."""
        if declared in self.open:
            return ""
        match = None
        if self.keys.enabled:
            match = self.keys.match(presented)
            if match is None:  # guessing keys is rate limited per address, always
                wait = self.refused.acquire(client)
                if wait:
                    return _too_many(self.refused, wait)
                return Refusal("unauthorized")
        if declared == "admin" and not (match and match[1]):
            if not self.keys.has_admin:
                return Refusal(
                    "forbidden",
                    "repository control is disabled: start the server with admin keys "
                    "(PNEUMO_ADMIN_KEYS or --admin-key-file)",
                )
            return Refusal("forbidden", "repository control needs an admin key")
        wait = self.limiter.acquire(match[0] if match else client)
        if wait:
            return _too_many(self.limiter, wait)
        return match[0] if match else ""


def _too_many(limiter: RateLimiter, wait: int) -> Refusal:
    return Refusal(
        "rate_limited", f"rate limit exceeded: at most {limiter.rate:g} requests/s", wait
    )
