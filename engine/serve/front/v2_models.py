"""What the V2 protocol says of the server and its models, and the repository extension's
actions, protocol-free: the HTTP routes (`routes.v2`) and the gRPC service (`rpc.methods`)
render the same answers, so the two front doors cannot drift apart."""

from __future__ import annotations

import asyncio
from typing import Any

from pneumo_onnx import __version__
from pneumo_onnx.engine.errors import NotFoundError, UsageError
from pneumo_onnx.engine.serve.dataplane.registry import Served
from pneumo_onnx.engine.serve.front.v2_tensors import OUTPUT, value_range
from pneumo_onnx.engine.serve.state import ServerState, degraded

SERVER_NAME = "pneumo-onnx"
PLATFORM = "onnxruntime_onnx"
EXTENSIONS = ["classification", "model_repository", "binary_tensor_data", "model_configuration"]


def server_metadata() -> dict[str, Any]:
    return {"name": SERVER_NAME, "version": __version__, "extensions": EXTENSIONS}


def readiness(state: ServerState) -> tuple[bool, list[str]]:
    """Ready to serve and to keep its records: a full disk (the prediction log or the job
    store cannot write) makes the server not ready, with the reason."""
    problems = degraded(state)
    return state.service.ready and not problems, problems


def served(state: ServerState, name: str, version: str | None) -> Served:
    """The version of `name` being served; NotFoundError when it is unknown, unloaded, or
    another version than `version` is served."""
    current = state.service.registry.current(name)
    if version is not None and version != str(current.version):
        raise NotFoundError(
            f"model {name!r} version {version[:20]} is not loaded "
            f"(serving version {current.version})"
        )
    return current


def model_ready(state: ServerState, name: str, version: str | None) -> str | None:
    """None when ready, else why not."""
    try:
        served(state, name, version)
    except NotFoundError as e:
        return e.message
    return None


def metadata(state: ServerState, model: Served) -> dict[str, Any]:
    c = model.engine.contract
    return {
        "name": model.name,
        "versions": [str(v) for v in state.service.registry.versions(model.name)],
        "platform": PLATFORM,
        "inputs": [
            {"name": c.input.name, "datatype": "FP32", "shape": [-1, *c.input_shape]},
            {"name": "image_bytes", "datatype": "BYTES", "shape": [-1]},
        ],
        "outputs": [{"name": OUTPUT, "datatype": "FP32", "shape": [-1, 1]}],
        "parameters": {
            "labels": [c.negative_label, c.positive_label],
            "threshold": c.threshold,
            "scaling": c.input.scaling,
            "pipeline": c.input.describe(),
            "preprocessing": model.engine.preprocessing,
            "value_range": list(value_range(c)),
            "variant": model.engine.model.variant,
        },
    }


def repository_index(state: ServerState) -> list[dict[str, str]]:
    return state.service.registry.index()


async def load(state: ServerState, name: str, version: Any) -> Served:
    """Load a version (default newest) and serve it once it passed the manifest, load and
    warm-up gates; on failure the current version keeps serving."""
    service = state.service
    loaded = await asyncio.get_running_loop().run_in_executor(
        None, service.registry.load, name, version_param(version)
    )
    service.announce()
    return loaded


def unload(state: ServerState, name: str) -> None:
    state.service.registry.unload(name)
    state.service.announce()


async def rollback(state: ServerState, name: str) -> Served:
    """Serve again the version served before the current one."""
    service = state.service
    back = await asyncio.get_running_loop().run_in_executor(None, service.registry.rollback, name)
    service.announce()
    return back


def version_param(value: Any) -> int | None:
    if value is None:
        return None
    text = str(value)
    if not (text.isascii() and text.isdigit() and len(text) <= 9):
        raise UsageError(f"version must be a positive integer, got {text[:20]!r}")
    return int(text)
