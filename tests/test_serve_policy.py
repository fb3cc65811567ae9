"""Access is declared on each route and enforced by the gate from that declaration, in process:
every route of the app declares exactly one policy (a route added without one fails here), an
admin route anywhere needs an admin key, unknown paths hide behind the key like known ones, and
a route reached without the gate's check is refused."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, FastAPI

from pneumo_onnx.engine.serve.app import create_app
from pneumo_onnx.engine.serve.config import ServeConfig
from pneumo_onnx.engine.serve.front.security import (
    AccessNotChecked,
    access,
    app_routes,
    declared_access,
)

USER = "user-key-0123456789abcdef"
ADMIN = "admin-key-0123456789abcdef"
DISABLED = (
    "repository control is disabled: start the server with admin keys "
    "(PNEUMO_ADMIN_KEYS or --admin-key-file)"
)
UNAUTHORIZED = "missing or invalid API key (send it in the X-API-Key header)"
# Every route that is not `user`, with its policy: a change here is a change of who may call what.
NOT_USER = {
    ("GET", "/openapi.json"): "open",
    ("GET", "/docs"): "open",
    ("GET", "/docs/static/{name}"): "open",
    ("GET", "/health"): "health",
    ("GET", "/ping"): "health",
    ("GET", "/v2/health/live"): "health",
    ("GET", "/v2/health/ready"): "health",
    ("GET", "/metrics"): "metrics",
    ("POST", "/v2/repository/models/{name}/load"): "admin",
    ("POST", "/v2/repository/models/{name}/unload"): "admin",
    ("POST", "/v2/repository/models/{name}/rollback"): "admin",
}


@pytest.fixture
def make_app(tmp_path: Path) -> Iterator[Callable[..., FastAPI]]:
    """The server's app as `pneumo serve` builds it (its model never loads: no lifespan)."""
    built: list[FastAPI] = []

    def make(**settings: Any) -> FastAPI:
        config = ServeConfig(state_dir=tmp_path / f"state-{len(built)}", **settings)
        built.append(create_app(config))
        return built[-1]

    yield make
    for app in built:
        assert app.state.server.prediction_log.close_within(5) == 0


def undeclared(app: FastAPI) -> list[str]:
    """Each route of `app` that does not declare exactly one access policy."""
    return [
        f"{sorted(route.methods or ())} {route.path}: {declared_access(route) or 'none'}"
        for route in app_routes(app.routes)
        if len(declared_access(route)) != 1
    ]


def call(app: FastAPI, method: str, path: str, key: str | None = None) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            headers = {"X-API-Key": key} if key else {}
            return await client.request(method, path, headers=headers)

    return asyncio.run(go())


def test_every_route_declares_one_policy(make_app: Callable[..., FastAPI]) -> None:
    app = make_app()
    assert undeclared(app) == []
    routes = app_routes(app.routes)
    policies = {
        (method, route.path): declared_access(route)[0]
        for route in routes
        for method in route.methods
    }
    for must in ("/docs/static/{name}", "/v2/models/{name}/infer", "/jobs", "/predict"):
        assert any(path == must for _, path in policies), f"the walk missed {must}"
    assert {k: v for k, v in policies.items() if v != "user"} == NOT_USER
    assert len(routes) >= 35


def test_a_route_without_a_policy_is_caught(make_app: Callable[..., FastAPI]) -> None:
    """What the test above would say of a route added without a policy, on the app itself or
    on a router included in it, or with two."""
    app = make_app()
    router = APIRouter(prefix="/extra")

    @router.post("/reload")
    async def reload() -> None: ...

    @router.post("/both", dependencies=[*access("user"), *access("admin")])
    async def both() -> None: ...

    app.include_router(router)

    @app.get("/sneaky")
    async def sneaky() -> None: ...

    assert undeclared(app) == [
        "['POST'] /extra/reload: none",
        "['POST'] /extra/both: ['user', 'admin']",
        "['GET'] /sneaky: none",
    ]


def test_an_admin_route_anywhere_needs_an_admin_key(make_app: Callable[..., FastAPI]) -> None:
    app = make_app(api_keys=(USER,), admin_keys=(ADMIN,))
    router = APIRouter()

    @router.post("/maintenance/reindex", dependencies=access("admin"))
    async def reindex() -> dict[str, str]:
        return {"done": "yes"}

    app.include_router(router)
    r = call(app, "POST", "/maintenance/reindex", USER)
    assert r.status_code == 403 and r.json() == {"error": "repository control needs an admin key"}
    r = call(app, "POST", "/maintenance/reindex")
    assert r.status_code == 401 and r.json() == {"error": UNAUTHORIZED}
    r = call(app, "POST", "/maintenance/reindex", ADMIN)
    assert r.status_code == 200 and r.json() == {"done": "yes"}
    assert call(app, "GET", "/maintenance/reindex", USER).status_code == 403  # 405 for admins
    assert call(app, "GET", "/maintenance/reindex", ADMIN).status_code == 405


def test_admin_routes_are_refused_when_no_admin_key_is_configured(
    make_app: Callable[..., FastAPI],
) -> None:
    app = make_app()
    r = call(app, "POST", "/v2/repository/models/pneumonia/unload")
    assert r.status_code == 403 and r.json() == {"error": DISABLED}
    assert call(app, "POST", "/v2/repository/index").status_code == 200


def test_unknown_paths_answer_as_known_ones_without_a_key(
    make_app: Callable[..., FastAPI],
) -> None:
    """Without a key, a path that exists and one that does not get the same 401 (admin paths
    included); with a user key the unknown one is a 404."""
    app = make_app(api_keys=(USER,), admin_keys=(ADMIN,))
    for method, path in [
        ("GET", "/v2/models/pneumonia"),
        ("GET", "/v2/no/such/route"),
        ("POST", "/v2/repository/models/pneumonia/load"),
        ("POST", "/v2/repository/models/pneumonia/nothing"),
        ("GET", "/docs/static/a/b"),
    ]:
        r = call(app, method, path)
        assert (r.status_code, r.json()) == (401, {"error": UNAUTHORIZED}), path
    assert call(app, "GET", "/v2/no/such/route", USER).status_code == 404
    assert call(app, "POST", "/v2/repository/models/pneumonia/nothing", USER).status_code == 404


@pytest.mark.parametrize("protect", [False, True], ids=["open", "protected"])
def test_health_and_metrics_are_open_unless_protected(
    make_app: Callable[..., FastAPI], protect: bool
) -> None:
    app = make_app(api_keys=(USER,), protect_health=protect, protect_metrics=protect)
    for path in ("/health", "/v2/health/live", "/v2/health/ready", "/metrics"):
        status = call(app, "GET", path).status_code
        assert (status == 401) == protect, (path, status)
        assert call(app, "GET", path, USER).status_code != 401
    for path in ("/docs", "/openapi.json", "/docs/static/swagger-ui.css"):
        assert call(app, "GET", path).status_code == 200, path  # the docs are always open


def test_a_route_reached_without_the_gate_check_is_refused() -> None:
    """The policy is also a dependency of its route: should the gate ever let a request reach
    a route without enforcing what it declares (here: no gate at all), the route refuses."""
    app = FastAPI()

    @app.get("/scores", dependencies=access("user"))
    async def scores() -> dict[str, str]:
        return {"secret": "yes"}

    with pytest.raises(AccessNotChecked, match="declares 'user' access, the gate enforced None"):
        call(app, "GET", "/scores")
