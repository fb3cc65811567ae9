"""Request bodies as data: JSON validated by a pydantic model, base64 images, thresholds sent as
text. No FastAPI here, so a decode worker can run these parsers too.

A JSON document takes up to ~25 times its size in Python objects (16 MB of `[],[],...` is 400
MB of lists). So a body of more than SMALL_JSON bytes is parsed in a decode worker
(engine.runtime.sandbox), within a grant of JSON_BYTES_PER_BYTE times its size, and only what
the route needs comes back (an image's bytes, a tensor): the objects a hostile body would
make are made, and freed, in a process whose memory the OS bounds.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel, Field
from pydantic import ValidationError as PydanticValidationError
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from pneumo_onnx.engine.contract import check_threshold
from pneumo_onnx.engine.errors import UsageError
from pneumo_onnx.engine.runtime.sandbox import TaskContext

Model = TypeVar("Model", bound=BaseModel)
SMALL_JSON = 64 * 2**10  # parsed in the server itself: at most ~2 MB of objects
JSON_BYTES_PER_BYTE = 25  # the memory a parse may take, per byte of JSON (measured: <= 25.3)


class InvalidBody(UsageError):
    """A body that is not the JSON a route expects (HTTP 422 on the seed routes, 400 on V2);
    `errors` lists each problem as pydantic does (loc, msg, type)."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        parts = []
        for err in errors[:5]:
            where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "request"
            parts.append(f"{where}: {err.get('msg', 'invalid')}")
        super().__init__("; ".join(parts) or "invalid request")
        self.errors = errors


def parse_json(body: bytes, model: type[Model]) -> Model:
    """`body` as `model`, or InvalidBody saying why not."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as e:  # ValueError: bad JSON, a 5000-digit number
        message = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise InvalidBody([{"loc": ("body",), "msg": f"invalid JSON: {message}"}]) from None
    try:
        return model.model_validate(data)
    except PydanticValidationError as e:
        raise InvalidBody(
            [{**err, "loc": ("body", *err["loc"])} for err in e.errors(include_url=False)]
        ) from None


def json_grant(ctx: TaskContext, body: bytes) -> None:
    """In a decode worker: the memory a parse of `body` may take, asked for before it starts."""
    ctx.need(JSON_BYTES_PER_BYTE * len(body))


def form_threshold(text: str | None) -> float | None:
    """A threshold sent as a form field: None when absent, else a finite number in [0, 1]."""
    if text is None or text == "":
        return None
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"threshold must be a number in [0, 1], got {text[:40]!r}") from None
    return check_threshold(value)


TRUE_WORDS = frozenset({"1", "on", "t", "true", "y", "yes"})  # pydantic's, as FastAPI reads
FALSE_WORDS = frozenset({"0", "off", "f", "false", "n", "no"})


def query_flag(text: str | None, name: str) -> bool:
    """A boolean query parameter (`?heatmap=true`): false when absent; an unknown word is a
    422, as FastAPI answers it."""
    if text is None:
        return False
    word = text.lower()
    if word in TRUE_WORDS or word in FALSE_WORDS:
        return word in TRUE_WORDS
    message = "Input should be a valid boolean, unable to interpret input"
    raise InvalidBody([{"loc": ("query", name), "msg": message}])


@dataclass(frozen=True)
class FormPart:
    """One part of a multipart form: its field name, its file name (None for a text field;
    a file field may send an empty one), its content."""

    name: str
    filename: str | None
    data: bytes


def form_parts(body: bytes, content_type: str, max_parts: int) -> list[FormPart]:
    """A `multipart/form-data` body already in memory as its parts (python-multipart's parser,
    each part's bytes gathered once: no spooling to temporary files as Starlette's forms do).
    A malformed body, or one of more than `max_parts` parts, is a UsageError."""
    kind, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        raise UsageError("expected a multipart/form-data body with its boundary")
    parts: list[FormPart] = []
    headers: dict[bytes, bytes] = {}
    field, value = bytearray(), bytearray()
    chunks: list[bytes] = []

    def on_header_end() -> None:
        headers[bytes(field).lower()] = bytes(value)
        field.clear()
        value.clear()

    def on_part_end() -> None:
        disposition, params = parse_options_header(headers.get(b"content-disposition", b""))
        if disposition != b"form-data" or b"name" not in params:
            raise UsageError("a multipart part without its Content-Disposition field name")
        filename = params.get(b"filename")
        parts.append(
            FormPart(
                params[b"name"].decode("utf-8", "replace"),
                None if filename is None else filename.decode("utf-8", "replace"),
                b"".join(chunks),
            )
        )
        headers.clear()
        chunks.clear()
        if len(parts) > max_parts:
            raise UsageError(f"a form of at most {max_parts} parts is expected here")

    parser = MultipartParser(
        boundary,
        {
            "on_header_field": lambda data, start, end: field.extend(data[start:end]),
            "on_header_value": lambda data, start, end: value.extend(data[start:end]),
            "on_header_end": on_header_end,
            "on_part_data": lambda data, start, end: chunks.append(data[start:end]),
            "on_part_end": on_part_end,
        },
    )
    try:
        parser.write(body)
        parser.finalize()
    except MultipartParseError as e:
        raise UsageError(f"malformed multipart body: {str(e)[:200]}") from None
    return parts


def b64decode(text: str) -> bytes:
    """Strict base64 (a `data:` URI prefix is accepted): garbage is a 400, not a bad image."""
    if text.startswith("data:") and "," in text:
        text = text.split(",", 1)[1]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise UsageError("invalid base64 image data") from None


def is_byte_count(text: str) -> bool:
    """A header value that is a plain decimal byte count ('²' and '٣' are digits to
    str.isdigit, and int() refuses the first)."""
    return text.isascii() and text.isdecimal() and len(text) <= 15


# --- the seed route's base64 body -----------------------------------------------------------


class Base64Request(BaseModel):
    image: str = Field(description="the image file, base64-encoded (a data: URI prefix is ok)")
    threshold: float | None = Field(None, description="decision threshold in [0, 1]")


def base64_image(raw: bytes) -> tuple[bytes, float | None]:
    """`/predict/base64`'s body: the image's bytes and the threshold asked for."""
    body = parse_json(raw, Base64Request)
    return b64decode(body.image), body.threshold


def base64_image_task(ctx: TaskContext, raw: bytes) -> tuple[bytes, float | None]:
    json_grant(ctx, raw)
    return base64_image(raw)
