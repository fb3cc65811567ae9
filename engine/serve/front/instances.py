"""The cloud platforms' JSON bodies as data: Vertex AI's `{"instances": [...], "parameters":
{...}}` and what SageMaker endpoints are commonly sent (`{"b64": ...}`, a list of instances, or
the Vertex form). No FastAPI here, so a decode worker can parse a large body too (as `bodies`).

An instance is `{"b64": "<image file, base64>"}` (Vertex's convention for binary data). A bad
instance does not fail the request: its slot holds the message saying why, and the others
are scored. What makes the whole body unusable (not JSON, no instances, a bad threshold)
raises UsageError (400).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pneumo_onnx.engine.contract import check_threshold
from pneumo_onnx.engine.errors import UsageError
from pneumo_onnx.engine.runtime.sandbox import TaskContext
from pneumo_onnx.engine.serve.front.bodies import b64decode, json_grant

PARAMETERS = ("threshold",)  # what `parameters` may hold


@dataclass(frozen=True)
class Instances:
    """The images of a request, in order: an image's bytes, or the message of a bad
    instance; `single`: one bare instance was sent, so one result (not a list) answers it."""

    items: list[bytes | str]
    threshold: float | None = None
    single: bool = False

    def plain(self) -> tuple[list[bytes | str], float | None, bool]:
        """What crosses back from a decode worker (builtins only)."""
        return self.items, self.threshold, self.single

    @classmethod
    def from_plain(cls, plain: tuple[list[bytes | str], float | None, bool]) -> Instances:
        items, threshold, single = plain
        return cls(list(items), threshold, single)


def parse_vertex(raw: bytes) -> Instances:
    """Vertex AI's prediction body: an object with a list of `instances` and optional
    `parameters` (`threshold`)."""
    data = _json(raw)
    if not isinstance(data, dict) or "instances" not in data:
        raise UsageError(
            'expected a JSON object {"instances": [{"b64": ...}, ...]}, got '
            + _kind(data, with_keys=True)
        )
    return _instances_object(data)


def parse_sagemaker(raw: bytes) -> Instances:
    """A JSON body sent to SageMaker's /invocations: one instance `{"b64": ...}` (optionally
    with `threshold`), a list of instances, or the Vertex form."""
    data = _json(raw)
    if isinstance(data, list):
        return Instances(_each(data))
    if isinstance(data, dict) and "instances" in data:
        return _instances_object(data)
    if isinstance(data, dict) and "b64" in data:
        extra = sorted(set(data) - {"b64", "threshold"})
        if extra:
            raise UsageError(f'unexpected keys {extra} beside "b64": only "threshold" may be')
        t = check_threshold(data["threshold"]) if data.get("threshold") is not None else None
        item = _instance({"b64": data["b64"]}, 0)
        if isinstance(item, str):  # one instance: its error is the request's
            raise UsageError(item)
        return Instances([item], t, single=True)
    raise UsageError(
        'expected a JSON object {"b64": ...}, a list of them, or {"instances": [...]}, got '
        + _kind(data, with_keys=True)
    )


def parse_vertex_task(ctx: TaskContext, raw: bytes) -> tuple[Any, ...]:
    """`parse_vertex` in a decode worker, within a memory grant for the JSON."""
    json_grant(ctx, raw)
    return parse_vertex(raw).plain()


def parse_sagemaker_task(ctx: TaskContext, raw: bytes) -> tuple[Any, ...]:
    """`parse_sagemaker` in a decode worker, within a memory grant for the JSON."""
    json_grant(ctx, raw)
    return parse_sagemaker(raw).plain()


# --- internals ------------------------------------------------------------------------------


def _json(raw: bytes) -> Any:
    if not raw:
        raise UsageError("expected a JSON body, got 0 bytes")
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as e:  # ValueError: bad JSON, a 5000-digit number
        message = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise UsageError(f"invalid JSON: {message}") from None


def _instances_object(data: dict[str, Any]) -> Instances:
    extra = sorted(set(data) - {"instances", "parameters"})
    if extra:
        raise UsageError(f'unexpected keys {extra}: expected "instances" and "parameters"')
    threshold = _threshold(data.get("parameters"))
    instances = data["instances"]
    if not isinstance(instances, list):
        raise UsageError(f'"instances" must be a list, got {_kind(instances)}')
    return Instances(_each(instances), threshold)


def _threshold(parameters: Any) -> float | None:
    if parameters is None:
        return None
    if not isinstance(parameters, dict):
        raise UsageError(f'"parameters" must be an object, got {_kind(parameters)}')
    unknown = sorted(set(parameters) - set(PARAMETERS))
    if unknown:
        raise UsageError(f"unknown parameters {unknown}: only {list(PARAMETERS)} are read")
    value = parameters.get("threshold")
    return None if value is None else check_threshold(value)


def _each(instances: list[Any]) -> list[bytes | str]:
    if not instances:
        raise UsageError("expected at least one instance, got an empty list")
    return [_instance(x, i) for i, x in enumerate(instances)]


def _instance(x: Any, index: int) -> bytes | str:
    """The image bytes of instance `index`, or why there are none."""
    where = f"instance {index}"
    if not isinstance(x, dict) or "b64" not in x:
        return f'{where}: expected an object {{"b64": "<image file, base64>"}}, got {_kind(x)}'
    extra = sorted(str(k)[:20] for k in set(x) - {"b64"})[:5]
    if extra:
        return f'{where}: unexpected keys {extra} beside "b64" (a threshold goes in "parameters")'
    if not isinstance(x["b64"], str):
        return f'{where}: "b64" must be a base64 string, got {_kind(x["b64"])}'
    try:
        data = b64decode(x["b64"])
    except UsageError as e:
        return f"{where}: {e.message}"
    if not data:
        return f"{where}: expected an image file, got 0 bytes"
    return data


def _kind(x: Any, with_keys: bool = False) -> str:
    if isinstance(x, dict):
        keys = sorted(str(k)[:20] for k in x)[:5]
        return f"an object with keys {keys}" if with_keys else "an object"
    names = {list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(x), "a number")
