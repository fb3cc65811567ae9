"""Parsing of what requests carry besides files: JSON bodies (off the event loop), thresholds
sent as text, base64 images.

Parsing runs on ONE thread of its own (`off_loop`): CPython's JSON parser holds the GIL for a
whole document, so parsing many large bodies at once on several threads would still stall the
event loop (health checks included) for the sum of their times, and hold all their Python
objects at once. One at a time, the loop waits at most one parse, and memory holds one.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel
from pydantic import ValidationError as PydanticValidationError

from engine.contract import check_threshold
from engine.errors import UsageError

Model = TypeVar("Model", bound=BaseModel)
T = TypeVar("T")
_parser: ThreadPoolExecutor | None = None
_parser_lock = threading.Lock()


async def off_loop(fn: Callable[..., T], *args: Any) -> T:
    """`fn(*args)` on the one parsing thread (created on first use)."""
    global _parser
    with _parser_lock:
        if _parser is None:
            _parser = ThreadPoolExecutor(1, thread_name_prefix="pneumo-parse")
    return await asyncio.get_running_loop().run_in_executor(_parser, fn, *args)


async def json_body(request: Request, model: type[Model]) -> Model:
    """The request's JSON body validated as `model`, parsed off the event loop. Any
    Content-Type is accepted: some clients send none."""
    body = await request.body()
    return await off_loop(parse_json, body, model)


def parse_json(body: bytes, model: type[Model]) -> Model:
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as e:  # ValueError: bad JSON, a 5000-digit number
        message = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise RequestValidationError(
            [{"loc": ("body",), "msg": f"invalid JSON: {message}", "type": "json_invalid"}]
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
