"""Where request bodies are parsed (the parsers themselves: `bodies`): a small JSON document
on ONE thread of the server's own (`off_loop`), a large one in a decode worker (`parsed`).

CPython's JSON parser holds the GIL for a whole document, so parsing many bodies at once on
several threads would still stall the event loop (health checks included) for the sum of their
times: one at a time, the loop waits at most one small parse. A large one would also make up
to 25 times its size in objects: it is parsed where the OS bounds memory.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal, TypeVar

from fastapi import Request
from pydantic import BaseModel

from pneumo_onnx.engine.errors import UsageError
from pneumo_onnx.engine.serve.front.bodies import SMALL_JSON, parse_json

Model = TypeVar("Model", bound=BaseModel)
T = TypeVar("T")
Thread = Literal["parser", "pool"]
_parser: ThreadPoolExecutor | None = None
_parser_lock = threading.Lock()


async def off_loop(fn: Callable[..., T], *args: Any, on: Thread = "parser") -> T:
    """`fn(*args)` off the event loop, the one way the routes leave it: on the one parsing
    thread (created on first use) for a body to parse, on the loop's shared thread pool for
    other blocking work (SQLite)."""
    global _parser
    executor = None
    if on == "parser":
        with _parser_lock:
            if _parser is None:
                _parser = ThreadPoolExecutor(1, thread_name_prefix="pneumo-parse")
        executor = _parser
    return await asyncio.get_running_loop().run_in_executor(executor, fn, *args)


async def json_body(request: Request, model: type[Model]) -> Model:
    """The request's small JSON body (an admin call's) validated as `model`, parsed off the
    event loop. Any Content-Type is accepted: some clients send none."""
    body = await request.body()
    if len(body) > SMALL_JSON:
        raise UsageError(f"expected a JSON body of at most {SMALL_JSON} bytes, got {len(body)}")
    return await off_loop(parse_json, body, model)


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
