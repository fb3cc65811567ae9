"""The KServe V2 / Open Inference Protocol routes (what Triton and KServe speak), as a thin
front door onto `ScoringService`.

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
from engine.errors import NotFoundError, UsageError
from engine.serve.batching import Overloaded
from engine.serve.inputs import b64decode
from engine.serve.registry import Served
from engine.serve.scoring import ScoringService

router = APIRouter(prefix="/v2", tags=["v2"])

MAX_ELEMENTS = 64 * 128 * 128 * 3 * 4  # a generous cap on one request's FP32 values


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


def _service(request: Request) -> ScoringService:
    service: ScoringService = request.app.state.service
    return service


@router.get("")
async def server_metadata() -> dict[str, Any]:
    return {"name": "pneumo-onnx", "version": __version__, "extensions": ["model_repository"]}


@router.get("/health/live")
async def live() -> dict[str, bool]:
    """The process answers: liveness, independent of the model."""
    return {"live": True}


@router.get("/health/ready")
async def ready(request: Request) -> JSONResponse:
    ok = _service(request).ready
    return JSONResponse({"ready": ok}, status_code=200 if ok else 503)


@router.get("/models/{name}")
async def model_metadata(request: Request, name: str) -> dict[str, Any]:
    return _metadata(_served(request, name, None), _service(request))


@router.get("/models/{name}/versions/{version}")
async def model_version_metadata(request: Request, name: str, version: str) -> dict[str, Any]:
    return _metadata(_served(request, name, version), _service(request))


@router.get("/models/{name}/ready")
async def model_ready(request: Request, name: str) -> JSONResponse:
    return _ready(request, name, None)


@router.get("/models/{name}/versions/{version}/ready")
async def model_version_ready(request: Request, name: str, version: str) -> JSONResponse:
    return _ready(request, name, version)


@router.post("/models/{name}/infer")
async def infer(request: Request, name: str, body: InferRequest) -> dict[str, Any]:
    return await _infer(request, name, None, body)


@router.post("/models/{name}/versions/{version}/infer")
async def infer_version(
    request: Request, name: str, version: str, body: InferRequest
) -> dict[str, Any]:
    return await _infer(request, name, version, body)


@router.post("/repository/index")
async def repository_index(request: Request) -> list[dict[str, str]]:
    return _service(request).registry.index()


@router.post("/repository/models/{name}/load")
async def repository_load(
    request: Request, name: str, body: RepositoryLoad | None = None
) -> dict[str, Any]:
    """Load a version (`{"parameters": {"version": "2"}}`; default newest) and serve it once it
    passed the manifest, load and warm-up gates; on failure the current version keeps serving."""
    version = _version_param((body.parameters or {}).get("version") if body else None)
    service = _service(request)
    served = await asyncio.get_running_loop().run_in_executor(
        None, service.registry.load, name, version
    )
    service.announce(served)
    return {"name": served.name, "version": str(served.version), "state": "READY"}


@router.post("/repository/models/{name}/unload")
async def repository_unload(request: Request, name: str) -> dict[str, str]:
    _service(request).registry.unload(name)
    return {"name": name, "state": "UNAVAILABLE"}


@router.post("/repository/models/{name}/rollback")
async def repository_rollback(request: Request, name: str) -> dict[str, Any]:
    """Our extension: serve again the version served before the current one."""
    service = _service(request)
    served = await asyncio.get_running_loop().run_in_executor(None, service.registry.rollback, name)
    service.announce(served)
    return {"name": served.name, "version": str(served.version), "state": "READY"}


# --- internals -----------------------------------------------------------------------------


def _served(request: Request, name: str, version: str | None) -> Served:
    served = _service(request).registry.current(name)
    if version is not None and version != str(served.version):
        raise NotFoundError(
            f"model {name!r} version {version} is not loaded (serving version {served.version})"
        )
    return served


def _ready(request: Request, name: str, version: str | None) -> JSONResponse:
    try:
        _served(request, name, version)
    except NotFoundError as e:  # unknown, unloaded, or another version served
        return JSONResponse({"name": name, "ready": False, "error": e.message}, status_code=404)
    return JSONResponse({"name": name, "ready": True})


def _metadata(served: Served, service: ScoringService) -> dict[str, Any]:
    c = served.engine.contract
    return {
        "name": served.name,
        "versions": [str(v) for v in service.registry.versions(served.name)],
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
            "variant": served.engine.model.variant,
        },
    }


async def _infer(
    request: Request, name: str, version: str | None, body: InferRequest
) -> dict[str, Any]:
    service = _service(request)
    if not service.default_model:
        raise Overloaded("the model is still loading", retry_after=2)
    served = _served(request, name, version)
    tensor = body.inputs[0]
    if tensor.datatype == "FP32":
        scores = await service.score_tensor(served, _fp32(tensor))
    elif tensor.datatype == "BYTES":
        scores = await service.score_images(served, _bytes(tensor))
    else:
        raise UsageError(f"input datatype must be FP32 or BYTES, got {tensor.datatype[:20]!r}")
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


def _fp32(tensor: InferInput) -> np.ndarray:
    shape = tensor.shape
    if len(shape) != 4 or any(d < 1 for d in shape):
        raise UsageError(f"FP32 input must have shape [N, H, W, C], got {shape}")
    count = math.prod(shape)
    if count > MAX_ELEMENTS:
        raise UsageError(f"input too large: {count} values, at most {MAX_ELEMENTS}")
    try:
        array = np.asarray(tensor.data, dtype=np.float32)
    except (TypeError, ValueError):
        raise UsageError("FP32 input data must be numbers, flat or nested as the shape") from None
    if array.size != count:
        raise UsageError(f"shape {shape} needs {count} values, got {array.size}")
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
    if not text.isdigit():
        raise UsageError(f"version must be a positive integer, got {text[:20]!r}")
    return int(text)
