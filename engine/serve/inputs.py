"""Parsing of what requests carry besides files: JSON bodies (off the event loop), thresholds
sent as text, base64 images."""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from typing import TypeVar

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel
from pydantic import ValidationError as PydanticValidationError

from engine.contract import check_threshold
from engine.errors import UsageError

Model = TypeVar("Model", bound=BaseModel)


async def json_body(request: Request, model: type[Model]) -> Model:
    """The request's JSON body validated as `model`. Parsed on a thread: a body of many MB takes
    long enough to parse that, on the event loop, it would stall every other request (health
    checks included). Any Content-Type is accepted: some clients send none."""
    body = await request.body()
    return await asyncio.get_running_loop().run_in_executor(None, parse_json, body, model)


def parse_json(body: bytes, model: type[Model]) -> Model:
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RequestValidationError(
            [{"loc": ("body",), "msg": f"invalid JSON: {e}", "type": "json_invalid"}]
        ) from None
    try:
        return model.model_validate(data)
    except PydanticValidationError as e:
        errors = [{**err, "loc": ("body", *err["loc"])} for err in e.errors(include_url=False)]
        raise RequestValidationError(errors) from None


def form_threshold(text: str | None) -> float | None:
    """A threshold sent as a form field: None when absent, else a finite number in [0, 1]."""
    if text is None or text == "":
        return None
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"threshold must be a number in [0, 1], got {text[:40]!r}") from None
    return check_threshold(value)


def b64decode(text: str) -> bytes:
    """Strict base64 (a `data:` URI prefix is accepted): garbage is a 400, not a bad image."""
    if text.startswith("data:") and "," in text:
        text = text.split(",", 1)[1]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise UsageError("invalid base64 image data") from None


def documented_body(model: type[BaseModel]) -> dict[str, object]:
    """OpenAPI `requestBody` for a route that reads its JSON with `json_body`: FastAPI cannot see
    the model there, so the schema is given by hand (sub-models inlined)."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def inline(node: object) -> object:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return inline(defs[ref.removeprefix("#/$defs/")])
            return {k: inline(v) for k, v in node.items()}
        if isinstance(node, list):
            return [inline(v) for v in node]
        return node

    content = {"application/json": {"schema": inline(schema)}}
    return {"requestBody": {"required": True, "content": content}}
