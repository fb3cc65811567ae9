"""The KServe V2 / Open Inference Protocol routes (what Triton and KServe speak), a thin front
door onto `ScoringService`, the same scoring path as `/predict` (cache, batcher, prediction
log, metrics). The wire format (JSON, the binary tensor data extension) is `v2_wire`'s job.

Inputs: one tensor, either FP32 `[N, H, W, C]` already preprocessed as the model's contract
says, or BYTES `[N]` holding encoded image files, which the server decodes exactly as
`/predict` does. Output: FP32 `score` `[N, 1]`, P(positive class).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from pneumo_onnx.engine.errors import NotSupported, Overloaded
from pneumo_onnx.engine.serve.dataplane.registry import Served
from pneumo_onnx.engine.serve.front import v2_models
from pneumo_onnx.engine.serve.front.inputs import documented_body, json_body, off_loop
from pneumo_onnx.engine.serve.front.security import access
from pneumo_onnx.engine.serve.front.v2_tensors import Parsed
from pneumo_onnx.engine.serve.front.v2_wire import (
    InferRequest,
    parse_infer,
    parse_infer_task,
    render,
    small_json,
)
from pneumo_onnx.engine.serve.state import caller, request_id, server

router = APIRouter(prefix="/v2", tags=["v2"])

INFER_ROUTE = "/v2/models/{name}/infer"
BOTH = ["GET", "POST"]


class RepositoryLoad(BaseModel):
    parameters: dict[str, Any] | None = None


@router.get("", dependencies=access("user"))
async def server_metadata() -> dict[str, Any]:
    return v2_models.server_metadata()


@router.get("/health/live", dependencies=access("health"))
async def live() -> dict[str, bool]:
    """The process answers: liveness, independent of the model."""
    return {"live": True}


@router.get("/health/ready", dependencies=access("health"))
async def ready(request: Request) -> JSONResponse:
    """Ready to serve and to keep its records: a full disk (the prediction log or the job
    store cannot write) makes the server not ready, with the reason."""
    ok, problems = v2_models.readiness(server(request))
    body: dict[str, Any] = {"ready": ok}
    if problems:
        body["degraded"] = problems
    return JSONResponse(body, status_code=200 if ok else 503)


# Triton's extensions that are not served: 501 with what to use instead, not a 404 that reads
# as "no model named 'stats'". Declared before /models/{name}, which would take /models/stats;
# left out of the OpenAPI spec, which lists what is served.
@router.get("/models/stats", include_in_schema=False, dependencies=access("user"))
@router.get("/models/{name}/stats", include_in_schema=False, dependencies=access("user"))
@router.get(
    "/models/{name}/versions/{version}/stats", include_in_schema=False, dependencies=access("user")
)
async def statistics() -> None:
    raise NotSupported(
        "inference statistics are not served: GET /metrics (Prometheus) has requests, "
        "latency, queue time and batch sizes"
    )


@router.api_route(
    "/systemsharedmemory/{rest:path}",
    methods=BOTH,
    include_in_schema=False,
    dependencies=access("user"),
)
@router.api_route(
    "/cudasharedmemory/{rest:path}",
    methods=BOTH,
    include_in_schema=False,
    dependencies=access("user"),
)
async def shared_memory() -> None:
    raise NotSupported("shared memory is not supported: send tensors in the request body")


@router.api_route(
    "/trace/setting", methods=BOTH, include_in_schema=False, dependencies=access("user")
)
@router.api_route(
    "/models/{name}/trace/setting",
    methods=BOTH,
    include_in_schema=False,
    dependencies=access("user"),
)
@router.api_route("/logging", methods=BOTH, include_in_schema=False, dependencies=access("user"))
async def trace_and_logging() -> None:
    raise NotSupported("trace and log settings are not served: the log is JSON lines on stderr")


@router.get("/models/{name}", dependencies=access("user"))
async def model_metadata(request: Request, name: str) -> dict[str, Any]:
    return _metadata(request, _served(request, name, None))


@router.get("/models/{name}/versions/{version}", dependencies=access("user"))
async def model_version_metadata(request: Request, name: str, version: str) -> dict[str, Any]:
    return _metadata(request, _served(request, name, version))


@router.get("/models/{name}/config", dependencies=access("user"))
async def model_config(request: Request, name: str) -> dict[str, Any]:
    return _config(request, _served(request, name, None))


@router.get("/models/{name}/versions/{version}/config", dependencies=access("user"))
async def model_version_config(request: Request, name: str, version: str) -> dict[str, Any]:
    return _config(request, _served(request, name, version))


@router.get("/models/{name}/ready", dependencies=access("user"))
async def model_ready(request: Request, name: str) -> JSONResponse:
    return _ready(request, name, None)


@router.get("/models/{name}/versions/{version}/ready", dependencies=access("user"))
async def model_version_ready(request: Request, name: str, version: str) -> JSONResponse:
    return _ready(request, name, version)


@router.post(
    "/models/{name}/infer", openapi_extra=documented_body(InferRequest), dependencies=access("user")
)
async def infer(request: Request, name: str) -> Response:
    return await _infer(request, name, None)


@router.post(
    "/models/{name}/versions/{version}/infer",
    openapi_extra=documented_body(InferRequest),
    dependencies=access("user"),
)
async def infer_version(request: Request, name: str, version: str) -> Response:
    return await _infer(request, name, version)


@router.post("/repository/index", dependencies=access("user"))
async def repository_index(request: Request) -> list[dict[str, str]]:
    return v2_models.repository_index(server(request))


@router.post(
    "/repository/models/{name}/load",
    openapi_extra=documented_body(RepositoryLoad),
    dependencies=access("admin"),
)
async def repository_load(request: Request, name: str) -> dict[str, Any]:
    """Load a version (`{"parameters": {"version": "2"}}`; default newest) and serve it once it
    passed the manifest, load and warm-up gates; on failure the current version keeps serving."""
    body = await json_body(request, RepositoryLoad) if await request.body() else None
    version = (body.parameters or {}).get("version") if body else None
    served = await v2_models.load(server(request), name, version)
    return {"name": served.name, "version": str(served.version), "state": "READY"}


@router.post("/repository/models/{name}/unload", dependencies=access("admin"))
async def repository_unload(request: Request, name: str) -> dict[str, str]:
    v2_models.unload(server(request), name)
    return {"name": name, "state": "UNAVAILABLE"}


@router.post("/repository/models/{name}/rollback", dependencies=access("admin"))
async def repository_rollback(request: Request, name: str) -> dict[str, Any]:
    """Our extension: serve again the version served before the current one."""
    served = await v2_models.rollback(server(request), name)
    return {"name": served.name, "version": str(served.version), "state": "READY"}


# --- internals -----------------------------------------------------------------------------


def _served(request: Request, name: str, version: str | None) -> Served:
    return v2_models.served(server(request), name, version)


def _ready(request: Request, name: str, version: str | None) -> JSONResponse:
    why = v2_models.model_ready(server(request), name, version)
    if why is not None:  # unknown, unloaded, or another version served
        return JSONResponse({"name": name, "ready": False, "error": why}, status_code=404)
    return JSONResponse({"name": name, "ready": True})


def _metadata(request: Request, served: Served) -> dict[str, Any]:
    return v2_models.metadata(server(request), served)


def _config(request: Request, served: Served) -> dict[str, Any]:
    """Triton's model configuration (what `tritonclient` `get_model_config` reads)."""
    c, config = served.engine.contract, server(request).config
    return {
        "name": served.name,
        "platform": "onnxruntime_onnx",
        "backend": "onnxruntime",
        "max_batch_size": config.max_batch,
        "input": [
            {
                "name": c.input.name,
                "data_type": "TYPE_FP32",
                "format": f"FORMAT_{c.input.layout}",
                "dims": list(c.input_shape),
            },
            {
                "name": "image_bytes",
                "data_type": "TYPE_STRING",
                "dims": [1],
                "reshape": {"shape": []},
            },
        ],
        "output": [{"name": "score", "data_type": "TYPE_FP32", "dims": [1]}],
        "dynamic_batching": {"max_queue_delay_microseconds": config.max_delay_us},
        "version_policy": {"specific": {"versions": [served.version]}},
        "parameters": {
            "labels": {"string_value": f"{c.negative_label},{c.positive_label}"},
            "threshold": {"string_value": str(c.threshold)},
            "scaling": {"string_value": c.input.scaling},
        },
    }


async def _infer(request: Request, name: str, version: str | None) -> Response:
    state = server(request)
    service = state.service
    if not service.default_model:
        raise Overloaded("the model is still loading", retry_after=2)
    served = _served(request, name, version)
    raw = await request.body()
    header_length = request.headers.get("inference-header-content-length")
    encoding = request.headers.get("content-encoding")
    args = (
        raw,
        header_length,
        encoding,
        served.engine.contract,
        service.batcher.max_queue,
        state.config.max_upload_bytes,
    )
    if small_json(raw, header_length, encoding):
        parsed = await off_loop(parse_infer, *args)
    else:  # parsed in a decode worker, where the OS bounds what the objects take
        parsed = Parsed.from_plain(await service.decoders.parse(len(raw), parse_infer_task, *args))
    scores = await service.infer(
        served, parsed.items, request_id(request), INFER_ROUTE, caller(request)
    )
    body, headers = render(
        served.name,
        str(served.version),
        parsed.request_id,
        scores,
        parsed.wanted,
        served.engine.contract,
    )
    return Response(body, headers=headers, media_type=headers["Content-Type"])
