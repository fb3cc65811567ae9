"""The cloud platforms' container contracts, thin front doors onto `ScoringService` (the same
path, gate, keys, limits and log as `/predict`):

- SageMaker: `GET /ping` (200 once ready, 503 before) and `POST /invocations`, the image file as
  the body (`image/jpeg`, `image/png`, `application/dicom`, `application/x-image`) or JSON
  (`instances.parse_sagemaker`). `X-Amzn-SageMaker-Custom-Attributes` is never read.
- Vertex AI: the health and predict routes at the paths Vertex names in `AIP_HEALTH_ROUTE` and
  `AIP_PREDICT_ROUTE` (mounted only when set); `{"instances": [...], "parameters": {...}}` in,
  `{"predictions": [...]}` out.

Each result is `/predict`'s (prediction, confidence, raw_score, threshold). In a list, a bad
instance is answered in place with `{"error": ...}` and the others are scored; one bare image
or instance that is bad fails the request, as on `/predict`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from pneumo_onnx.engine.errors import PneumoError, UnsupportedMediaType, UsageError
from pneumo_onnx.engine.runtime.sandbox import Task
from pneumo_onnx.engine.serve.dataplane.items import Item
from pneumo_onnx.engine.serve.front.bodies import SMALL_JSON
from pneumo_onnx.engine.serve.front.inputs import off_loop
from pneumo_onnx.engine.serve.front.instances import (
    Instances,
    parse_sagemaker,
    parse_sagemaker_task,
    parse_vertex,
    parse_vertex_task,
)
from pneumo_onnx.engine.serve.front.routes.seed import require_ready
from pneumo_onnx.engine.serve.front.security import access
from pneumo_onnx.engine.serve.state import caller, degraded, request_id, server

IMAGE_TYPES = ("image/jpeg", "image/png", "application/dicom", "application/x-image")
JSON_TYPE = "application/json"
INVOCATIONS = "/invocations"
# The environment variables Vertex AI sets in a custom container (AIP_HTTP_PORT: see server.py).
VERTEX_HEALTH_ENV = "AIP_HEALTH_ROUTE"
VERTEX_PREDICT_ENV = "AIP_PREDICT_ROUTE"

_INSTANCE = {
    "type": "object",
    "properties": {"b64": {"type": "string", "description": "the image file, base64"}},
    "required": ["b64"],
}
_INSTANCES = {
    "type": "object",
    "properties": {
        "instances": {"type": "array", "items": _INSTANCE},
        "parameters": {"type": "object", "properties": {"threshold": {"type": "number"}}},
    },
    "required": ["instances"],
}
_BINARY = {"schema": {"type": "string", "format": "binary"}}
INVOCATIONS_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            **{media: _BINARY for media in IMAGE_TYPES},
            JSON_TYPE: {
                "schema": {"anyOf": [_INSTANCE, {"type": "array", "items": _INSTANCE}, _INSTANCES]}
            },
        },
    }
}
VERTEX_BODY = {"requestBody": {"required": True, "content": {JSON_TYPE: {"schema": _INSTANCES}}}}

sagemaker = APIRouter(tags=["sagemaker"])


@sagemaker.get("/ping", dependencies=access("health"))
async def ping(request: Request) -> JSONResponse:
    """SageMaker's health check: 200 once the model is loaded and the records can be kept."""
    return ready_answer(request)


@sagemaker.post(INVOCATIONS, openapi_extra=INVOCATIONS_BODY, dependencies=access("user"))
async def invocations(request: Request) -> JSONResponse:
    """Score the image file sent as the body, or the JSON instances: one result for one image,
    a list (in order) for a list."""
    media = (request.headers.get("content-type") or "").split(";", 1)[0].strip().lower()
    raw = await request.body()
    if media in IMAGE_TYPES:
        if not raw:
            raise UsageError(f"expected an image file as the {media} body, got 0 bytes")
        parsed = Instances([raw], single=True)
    elif media == JSON_TYPE:
        parsed = await _parse(request, raw, parse_sagemaker, parse_sagemaker_task)
    else:
        raise UnsupportedMediaType(
            f"expected a body of Content-Type {', '.join((*IMAGE_TYPES, JSON_TYPE))}; got "
            + (repr(media[:60]) if media else "none")
        )
    answers = await score_instances(request, parsed, INVOCATIONS)
    return JSONResponse(answers[0] if parsed.single else answers)


def vertex_paths(environ: Mapping[str, str]) -> tuple[str | None, str | None]:
    """The (health, predict) paths Vertex AI asked for in the environment (None: not set)."""
    paths = []
    for name in (VERTEX_HEALTH_ENV, VERTEX_PREDICT_ENV):
        value = environ.get(name) or None
        if value is not None and (not value.startswith("/") or "{" in value or "?" in value):
            raise UsageError(f"{name} must be a plain path starting with '/', got {value[:80]!r}")
        paths.append(value)
    return paths[0], paths[1]


def vertex_router(health: str | None, predict: str | None, taken: set[str]) -> APIRouter:
    """Vertex AI's routes at the paths it chose; a path this server already serves is refused
    (its answer would not be what Vertex expects)."""
    for name, path in ((VERTEX_HEALTH_ENV, health), (VERTEX_PREDICT_ENV, predict)):
        if path is not None and path in taken:
            raise UsageError(f"{name}={path} is already a route of this server: choose another")
    if health is not None and health == predict:
        raise UsageError(f"{VERTEX_HEALTH_ENV} and {VERTEX_PREDICT_ENV} are the same path")
    router = APIRouter(tags=["vertex"])
    if health is not None:
        router.add_api_route(health, vertex_health, methods=["GET"], dependencies=access("health"))
    if predict is not None:

        async def vertex_predict(request: Request) -> JSONResponse:
            """Vertex AI prediction: `{"predictions": [...]}`, one per instance, in order."""
            raw = await request.body()
            parsed = await _parse(request, raw, parse_vertex, parse_vertex_task)
            return JSONResponse({"predictions": await score_instances(request, parsed, predict)})

        router.add_api_route(predict, vertex_predict, methods=["POST"], dependencies=access("user"))
    return router


async def vertex_health(request: Request) -> JSONResponse:
    """Vertex AI's health check: 200 once ready, 503 before."""
    return ready_answer(request)


def ready_answer(request: Request) -> JSONResponse:
    """200 once the model is served and the records can be kept, else 503 saying why."""
    state = server(request)
    service = state.service
    reasons = []
    if not service.ready:
        name = service.default_model
        reasons.append(f"model {name!r} is not loaded" if name else "the model is loading")
    reasons += degraded(state)
    if reasons:
        return JSONResponse({"status": "unavailable", "reasons": reasons}, status_code=503)
    return JSONResponse({"status": "ready"})


async def score_instances(request: Request, parsed: Instances, route: str) -> list[dict[str, Any]]:
    """`/predict`'s result per instance, in order; a bad one answered in place, unless it is
    the only one (then its error is the request's, as on /predict)."""
    service = server(request).service
    require_ready(service)
    limit = service.batcher.max_queue
    if len(parsed.items) > limit:
        raise UsageError(f"at most {limit} instances per request, got {len(parsed.items)}")
    outcomes: list[dict[str, Any] | PneumoError] = [
        UsageError(x) if isinstance(x, str) else {} for x in parsed.items
    ]
    good = [(i, x) for i, x in enumerate(parsed.items) if isinstance(x, bytes)]
    if good:
        served = service.registry.current(service.default_model)
        items = [Item(data=x, name=f"instance {i}") for i, x in good]
        scored = await service.score(
            items,
            parsed.threshold,
            served=served,
            request_id=request_id(request),
            route=route,
            caller=caller(request),
        )
        for (i, _), outcome in zip(good, scored, strict=True):
            outcomes[i] = outcome if isinstance(outcome, PneumoError) else dict(outcome)
    if parsed.single and isinstance(outcomes[0], PneumoError):
        raise outcomes[0]
    return [{"error": o.message} if isinstance(o, PneumoError) else o for o in outcomes]


async def _parse(request: Request, raw: bytes, parse: Any, task: Task) -> Instances:
    """A small body parsed on the server's parsing thread, a large one in a decode worker."""
    if len(raw) <= SMALL_JSON:
        parsed: Instances = await off_loop(parse, raw)
        return parsed
    plain = await server(request).service.decoders.parse(len(raw), task, raw)
    return Instances.from_plain(plain)
