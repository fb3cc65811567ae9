"""The KServe V2 / Open Inference Protocol routes (what Triton and KServe speak), a thin front
door onto `ScoringService`, the same scoring path as `/predict` (cache, batcher, prediction
log, metrics).

Inputs: one tensor, either FP32 `[N, H, W, C]` already preprocessed as the model's contract
says, or BYTES `[N]` holding encoded image files (base64 strings in JSON), which the server
decodes exactly as `/predict` does. Output: FP32 `score` `[N, 1]`, P(positive class).
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from engine import __version__
from engine.errors import NotFoundError, Overloaded, UsageError
from engine.serve.inputs import b64decode, documented_body, json_body, parse_json
from engine.serve.registry import Served
from engine.serve.scoring import Item
from engine.serve.state import request_id, server

router = APIRouter(prefix="/v2", tags=["v2"])

MAX_ELEMENTS = 64 * 128 * 128 * 3 * 4  # a generous cap on one request's FP32 values
INFER_ROUTE = "/v2/models/{name}/infer"


class InferInput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    data: list[Any]
    parameters: dict[str, Any] | None = None


class InferRequest(BaseModel):
    id: str | None = None
    inputs: list[InferInput] = Field(min_length=1, max_length=1)
    outputs: list[dict[str, Any]] | None = None
    parameters: dict[str, Any] | None = None


class RepositoryLoad(BaseModel):
    parameters: dict[str, Any] | None = None


@router.get("")
async def server_metadata() -> dict[str, Any]:
    return {"name": "pneumo-onnx", "version": __version__, "extensions": ["model_repository"]}


@router.get("/health/live")
async def live() -> dict[str, bool]:
    """The process answers: liveness, independent of the model."""
    return {"live": True}


@router.get("/health/ready")
async def ready(request: Request) -> JSONResponse:
    ok = server(request).service.ready
    return JSONResponse({"ready": ok}, status_code=200 if ok else 503)


@router.get("/models/{name}")
async def model_metadata(request: Request, name: str) -> dict[str, Any]:
    return _metadata(request, _served(request, name, None))


@router.get("/models/{name}/versions/{version}")
async def model_version_metadata(request: Request, name: str, version: str) -> dict[str, Any]:
    return _metadata(request, _served(request, name, version))


@router.get("/models/{name}/ready")
async def model_ready(request: Request, name: str) -> JSONResponse:
    return _ready(request, name, None)


@router.get("/models/{name}/versions/{version}/ready")
async def model_version_ready(request: Request, name: str, version: str) -> JSONResponse:
    return _ready(request, name, version)


@router.post("/models/{name}/infer", openapi_extra=documented_body(InferRequest))
async def infer(request: Request, name: str) -> dict[str, Any]:
    return await _infer(request, name, None)


@router.post("/models/{name}/versions/{version}/infer", openapi_extra=documented_body(InferRequest))
async def infer_version(request: Request, name: str, version: str) -> dict[str, Any]:
    return await _infer(request, name, version)


@router.post("/repository/index")
async def repository_index(request: Request) -> list[dict[str, str]]:
    return server(request).service.registry.index()


@router.post("/repository/models/{name}/load", openapi_extra=documented_body(RepositoryLoad))
async def repository_load(request: Request, name: str) -> dict[str, Any]:
    """Load a version (`{"parameters": {"version": "2"}}`; default newest) and serve it once it
    passed the manifest, load and warm-up gates; on failure the current version keeps serving."""
    body = await json_body(request, RepositoryLoad) if await request.body() else None
    version = _version_param((body.parameters or {}).get("version") if body else None)
    service = server(request).service
    served = await asyncio.get_running_loop().run_in_executor(
        None, service.registry.load, name, version
    )
    service.announce(served)
    return {"name": served.name, "version": str(served.version), "state": "READY"}


@router.post("/repository/models/{name}/unload")
async def repository_unload(request: Request, name: str) -> dict[str, str]:
    server(request).service.registry.unload(name)
    return {"name": name, "state": "UNAVAILABLE"}


@router.post("/repository/models/{name}/rollback")
async def repository_rollback(request: Request, name: str) -> dict[str, Any]:
    """Our extension: serve again the version served before the current one."""
    service = server(request).service
    served = await asyncio.get_running_loop().run_in_executor(None, service.registry.rollback, name)
    service.announce(served)
    return {"name": served.name, "version": str(served.version), "state": "READY"}


# --- internals -----------------------------------------------------------------------------


def _served(request: Request, name: str, version: str | None) -> Served:
    served = server(request).service.registry.current(name)
    if version is not None and version != str(served.version):
        raise NotFoundError(
            f"model {name!r} version {version[:20]} is not loaded "
            f"(serving version {served.version})"
        )
    return served


def _ready(request: Request, name: str, version: str | None) -> JSONResponse:
    try:
        _served(request, name, version)
    except NotFoundError as e:  # unknown, unloaded, or another version served
        return JSONResponse({"name": name, "ready": False, "error": e.message}, status_code=404)
    return JSONResponse({"name": name, "ready": True})


def _metadata(request: Request, served: Served) -> dict[str, Any]:
    c = served.engine.contract
    return {
        "name": served.name,
        "versions": [str(v) for v in server(request).service.registry.versions(served.name)],
        "platform": "onnxruntime_onnx",
        "inputs": [
            {"name": c.input.name, "datatype": "FP32", "shape": [-1, *c.input_shape]},
            {"name": "image_bytes", "datatype": "BYTES", "shape": [-1]},
        ],
        "outputs": [{"name": "score", "datatype": "FP32", "shape": [-1, 1]}],
        "parameters": {
            "labels": [c.negative_label, c.positive_label],
            "threshold": c.threshold,
            "scaling": c.input.scaling,
            "pipeline": c.input.describe(),
            "preprocessing": served.engine.preprocessing,
            "variant": served.engine.model.variant,
        },
    }


async def _infer(request: Request, name: str, version: str | None) -> dict[str, Any]:
    service = server(request).service
    if not service.default_model:
        raise Overloaded("the model is still loading", retry_after=2)
    served = _served(request, name, version)
    raw = await request.body()
    expected = served.engine.contract.input_shape
    body, items = await asyncio.get_running_loop().run_in_executor(
        None, _parse_infer, raw, expected
    )
    scores = await service.infer(served, items, request_id(request), INFER_ROUTE)
    response: dict[str, Any] = {
        "model_name": served.name,
        "model_version": str(served.version),
        "outputs": [
            {
                "name": "score",
                "datatype": "FP32",
                "shape": [len(scores), 1],
                "data": scores.tolist(),
            }
        ],
    }
    if body.id is not None:
        response["id"] = body.id
    return response


def _parse_infer(raw: bytes, expected: tuple[int, ...]) -> tuple[InferRequest, list[Item]]:
    """The request and its images as scoring items, parsed on a thread (JSON of an FP32 batch
    runs to many MB)."""
    body = parse_json(raw, InferRequest)
    tensor = body.inputs[0]
    if tensor.datatype == "FP32":
        return body, [Item(tensor=x) for x in _fp32(tensor, expected)]
    if tensor.datatype == "BYTES":
        return body, [Item(data=b) for b in _bytes(tensor)]
    raise UsageError(f"input datatype must be FP32 or BYTES, got {tensor.datatype[:20]!r}")


def _fp32(tensor: InferInput, expected: tuple[int, ...]) -> np.ndarray:
    shape = tensor.shape
    if len(shape) != 4 or any(d < 1 for d in shape):
        raise UsageError(f"FP32 input must have shape [N, H, W, C], got {shape}")
    count = math.prod(shape)
    if count > MAX_ELEMENTS:
        raise UsageError(f"input too large: {count} values, at most {MAX_ELEMENTS}")
    if tuple(shape[1:]) != expected:
        raise UsageError(f"expected shape [N, {', '.join(map(str, expected))}], got {list(shape)}")
    try:
        array = np.asarray(tensor.data, dtype=np.float32)
    except (TypeError, ValueError):
        raise UsageError("FP32 input data must be numbers, flat or nested as the shape") from None
    if array.size != count:
        raise UsageError(f"shape {shape} needs {count} values, got {array.size}")
    if not np.isfinite(array).all():
        raise UsageError("input holds NaN or infinite values")
    return array.reshape(shape)


def _bytes(tensor: InferInput) -> list[bytes]:
    if len(tensor.shape) != 1 or tensor.shape[0] != len(tensor.data):
        raise UsageError(
            f"BYTES input must have shape [N] matching its {len(tensor.data)} elements, "
            f"got {tensor.shape}"
        )
    images = []
    for i, item in enumerate(tensor.data):
        if not isinstance(item, str):
            raise UsageError(f"BYTES element {i} must be a base64 string")
        try:
            images.append(b64decode(item))
        except UsageError:
            raise UsageError(f"BYTES element {i} is not valid base64") from None
    return images


def _version_param(value: Any) -> int | None:
    if value is None:
        return None
    text = str(value)
    if not (text.isascii() and text.isdigit() and len(text) <= 9):
        raise UsageError(f"version must be a positive integer, got {text[:20]!r}")
    return int(text)
