"""The wire format of V2 inference (KServe Open Inference Protocol, and Triton's HTTP
extensions that stock clients use by default), parsed on a thread: JSON tensors, the binary
tensor data extension (`Inference-Header-Content-Length`: a JSON header, then each input's
raw bytes; BYTES elements as a 4-byte little-endian length and the bytes), gzip/deflate request
bodies, binary outputs on request (`parameters.binary_data` of an output, or
`binary_data_output` of the request), and Triton's classification extension
(`parameters.classification` of an output: "score:index:label" strings instead of numbers).

Inputs: one tensor, FP32 `[N, H, W, C]` already preprocessed as the model's contract says
(values within its scaling range), or BYTES `[N]` (or `[N, 1]`) of encoded image files: raw
bytes in the binary extension, base64 strings in JSON (raw bytes that start like a supported
image are taken as they are).
"""

from __future__ import annotations

import json
import math
import struct
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from pneumo_onnx.engine.contract import Contract
from pneumo_onnx.engine.errors import TooLarge, UsageError
from pneumo_onnx.engine.runtime.decoders import format_of
from pneumo_onnx.engine.runtime.sandbox import TaskContext
from pneumo_onnx.engine.serve.dataplane.items import Item
from pneumo_onnx.engine.serve.front.bodies import (
    SMALL_JSON,
    InvalidBody,
    b64decode,
    is_byte_count,
    json_grant,
    parse_json,
)

MAX_ELEMENTS = 64 * 128 * 128 * 3 * 4  # a generous cap on one request's FP32 values
RANGE_MARGIN = 0.1  # FP32 inputs may stray this fraction of the scaling's range outside it
OUTPUT = "score"
UNSUPPORTED_PARAMETERS = ("shared_memory_region", "classification")  # on an input


class InferInput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    data: list[Any] | None = None
    parameters: dict[str, Any] | None = None


class InferOutput(BaseModel):
    name: str
    parameters: dict[str, Any] | None = None


class InferRequest(BaseModel):
    id: str | None = None
    inputs: list[InferInput] = Field(min_length=1, max_length=1)
    outputs: list[InferOutput] | None = None
    parameters: dict[str, Any] | None = None


@dataclass(frozen=True)
class Wanted:
    """How the client wants the output: raw bytes or JSON, scores or top-k class strings."""

    binary: bool = False
    class_count: int = 0  # 0: the scores themselves


@dataclass(frozen=True)
class Parsed:
    request_id: str | None
    items: list[Item]
    wanted: Wanted

    def plain(self) -> tuple[Any, ...]:
        """What crosses back from a decode worker: builtins and one array or byte strings."""
        if self.items and self.items[0].tensor is not None:
            payload: Any = np.stack([i.tensor for i in self.items])  # type: ignore[misc]
        else:
            payload = [i.data for i in self.items]
        return self.request_id, payload, self.wanted.binary, self.wanted.class_count

    @classmethod
    def from_plain(cls, plain: tuple[Any, ...]) -> Parsed:
        request_id, payload, binary, class_count = plain
        if isinstance(payload, np.ndarray):
            items = [Item(tensor=x) for x in payload]
        else:
            items = [Item(data=b) for b in payload]
        return cls(request_id, items, Wanted(binary, class_count))


def small_json(raw: bytes, header_length: str | None, encoding: str | None) -> bool:
    """Whether the JSON `parse_infer` would parse is small enough to parse in the server
    (SMALL_JSON): the whole body, or its JSON header. A compressed body is not: it may
    inflate to the upload limit."""
    if (encoding or "identity").strip().lower() != "identity":
        return False
    if header_length is not None and is_byte_count(header_length.strip()):
        return min(int(header_length), len(raw)) <= SMALL_JSON
    return len(raw) <= SMALL_JSON


def parse_infer_task(
    ctx: TaskContext,
    raw: bytes,
    header_length: str | None,
    encoding: str | None,
    contract: Contract,
    max_items: int,
    max_bytes: int,
) -> tuple[Any, ...]:
    """`parse_infer` in a decode worker, the parse granted the memory its JSON may take:
    what comes back is `Parsed.plain()`."""
    head, binary = _split(raw, header_length, encoding, max_bytes)
    json_grant(ctx, head)
    return _parse(head, binary, contract, max_items).plain()


def parse_infer(
    raw: bytes,
    header_length: str | None,
    encoding: str | None,
    contract: Contract,
    max_items: int,
    max_bytes: int,
) -> Parsed:
    """The request, its images or tensors as scoring items, and whether the answer is binary."""
    head, binary = _split(raw, header_length, encoding, max_bytes)
    return _parse(head, binary, contract, max_items)


def _split(
    raw: bytes, header_length: str | None, encoding: str | None, max_bytes: int
) -> tuple[bytes, bytes]:
    """The body inflated, then cut into its JSON and its binary part."""
    raw = _decoded(raw, encoding, max_bytes)
    if header_length is None:
        return raw, b""
    if not is_byte_count(header_length.strip()) or int(header_length) > len(raw):
        raise UsageError(
            f"Inference-Header-Content-Length must be a byte count within the body's "
            f"{len(raw)} bytes, got {header_length[:20]!r}"
        )
    return raw[: int(header_length)], raw[int(header_length) :]


def _parse(head: bytes, binary: bytes, contract: Contract, max_items: int) -> Parsed:
    try:
        body = parse_json(head, InferRequest)
    except InvalidBody as e:  # the V2 protocol answers a malformed request with 400
        raise UsageError(e.message) from None
    tensor = body.inputs[0]
    blob = _binary_part(tensor, binary)
    if tensor.datatype == "FP32":
        items = [Item(tensor=x) for x in _fp32(tensor, blob, contract)]
    elif tensor.datatype == "BYTES":
        items = [Item(data=b) for b in _bytes(tensor, blob, max_items)]
    else:
        raise UsageError(f"input datatype must be FP32 or BYTES, got {tensor.datatype[:20]!r}")
    tensor.data = None  # millions of Python floats: not kept while the request is scored
    return Parsed(body.id, items, _wanted(body))


def render(
    name: str,
    version: str,
    request_id: str | None,
    scores: np.ndarray,
    wanted: Wanted,
    label: str,
) -> tuple[bytes, dict[str, str]]:
    """The response body and its headers: JSON, or a JSON header then the raw output.

    With `class_count`, the output is Triton's classification: BYTES `[N, 1]` of
    "score:0:label" (`score` `[N, 1]` has one class per row, P(`label`); Triton clamps
    class_count to the classes there are and prints the float as C's `%f`)."""
    output: dict[str, Any] = {"name": OUTPUT, "datatype": "FP32", "shape": [len(scores), 1]}
    values: list[Any]
    if wanted.class_count:
        output["datatype"] = "BYTES"
        classes = [f"{float(s):f}:0:{label}".encode() for s in scores]
        raw = b"".join(struct.pack("<I", len(c)) + c for c in classes)
        values = [c.decode() for c in classes]
    else:
        raw = np.asarray(scores, dtype="<f4").tobytes()
        values = [float(s) for s in scores]
    if wanted.binary:
        output["parameters"] = {"binary_data_size": len(raw)}
    else:
        output["data"] = values
    answer: dict[str, Any] = {"model_name": name, "model_version": version, "outputs": [output]}
    if request_id is not None:
        answer["id"] = request_id
    head = json.dumps(answer, separators=(",", ":")).encode()
    if not wanted.binary:
        return head, {"Content-Type": "application/json"}
    return head + raw, {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(head)),
    }


def value_range(contract: Contract) -> tuple[float, float]:
    """The input values the model was trained on (pixels 0 to 255 through its scaling), over
    all channels."""
    low, high = contract.input.scaler().range()
    return float(min(np.min(low), np.min(high))), float(max(np.max(low), np.max(high)))


# --- internals -------------------------------------------------------------------------------


def _decoded(raw: bytes, encoding: str | None, max_bytes: int) -> bytes:
    """The body, inflated (within `max_bytes`) when sent with Content-Encoding gzip/deflate."""
    encoding = (encoding or "identity").strip().lower()
    if encoding == "identity":
        return raw
    if encoding not in ("gzip", "deflate"):
        raise UsageError(
            f"Content-Encoding must be gzip, deflate or identity, got {encoding[:20]!r}"
        )
    inflater = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
    try:
        out = inflater.decompress(raw, max_bytes + 1)
    except zlib.error as e:
        raise UsageError(f"the {encoding} request body cannot be inflated: {e}") from None
    if len(out) > max_bytes or inflater.unconsumed_tail:
        raise TooLarge(
            f"request too large: the {encoding} body inflates past the limit of "
            f"{max_bytes / 2**20:g} MB"
        )
    if not inflater.eof:
        raise UsageError(f"the {encoding} request body ends before its compressed stream does")
    if inflater.unused_data:  # a second gzip member would be dropped silently
        raise UsageError(f"the {encoding} request body holds data after its compressed stream")
    return out


def _binary_part(tensor: InferInput, binary: bytes) -> bytes | None:
    """The input's raw bytes from the binary extension, or None when its data is JSON."""
    params = tensor.parameters or {}
    for name in UNSUPPORTED_PARAMETERS:
        if name in params:
            raise UsageError(f"input parameter {name!r} is not supported by this server")
    size = params.get("binary_data_size")
    if size is None:
        if binary:
            raise UsageError("the body holds binary data but no input has binary_data_size")
        if tensor.data is None:
            raise UsageError(f"input {tensor.name[:40]!r} has no data (JSON 'data' or binary)")
        return None
    if not isinstance(size, int) or isinstance(size, bool) or size != len(binary):
        raise UsageError(
            f"input binary_data_size says {str(size)[:20]} bytes, the body holds {len(binary)} "
            "bytes after the JSON header"
        )
    if tensor.data is not None:
        raise UsageError("an input has both JSON data and binary_data_size")
    return binary


def _count(shape: list[int]) -> int:
    if any(d < 0 for d in shape):
        raise UsageError(f"shape dimensions must be >= 0, got {shape[:8]}")
    return math.prod(shape)


def _fp32(tensor: InferInput, blob: bytes | None, contract: Contract) -> np.ndarray:
    shape, expected = tensor.shape, contract.input_shape
    if len(shape) != 4 or any(d < 1 for d in shape):
        raise UsageError(f"FP32 input must have shape [N, H, W, C], got {shape[:8]}")
    count = _count(shape)
    if count > MAX_ELEMENTS:
        raise UsageError(f"input too large: {count} values, at most {MAX_ELEMENTS}")
    if tuple(shape[1:]) != expected:
        raise UsageError(f"expected shape [N, {', '.join(map(str, expected))}], got {list(shape)}")
    if blob is not None:
        if len(blob) != 4 * count:
            raise UsageError(f"shape {shape} needs {4 * count} bytes of FP32, got {len(blob)}")
        array = np.frombuffer(blob, dtype="<f4").astype(np.float32)
    else:
        try:
            array = np.asarray(tensor.data, dtype=np.float32)
        except (TypeError, ValueError, OverflowError):  # OverflowError: a 4000-digit integer
            raise UsageError(
                "FP32 input data must be numbers, flat or nested as the shape"
            ) from None
        if array.size != count:
            raise UsageError(f"shape {shape} needs {count} values, got {array.size}")
    if not np.isfinite(array).all():
        raise UsageError("input holds NaN or infinite values")
    low, high = value_range(contract)
    margin = RANGE_MARGIN * (high - low)
    found = (float(array.min()), float(array.max()))
    if found[0] < low - margin or found[1] > high + margin:
        raise UsageError(
            f"FP32 input values must lie in [{low:g}, {high:g}] (the model's "
            f"'{contract.input.scaling}' input scaling), got values from {found[0]:g} to "
            f"{found[1]:g}: preprocess as GET /v2/models/<name> describes"
        )
    return array.reshape(shape)


def _bytes(tensor: InferInput, blob: bytes | None, max_items: int) -> list[bytes]:
    shape = tensor.shape
    if not shape or any(d != 1 for d in shape[1:]):
        raise UsageError(f"BYTES input must have shape [N] or [N, 1], got {shape[:8]}")
    count = _count(shape)
    if count > max_items:  # before decoding a single element
        raise UsageError(f"at most {max_items} images per request, got {count}")
    if blob is not None:
        elements = _length_prefixed(blob, count)
    else:
        data = tensor.data or []
        if len(data) == count and all(isinstance(x, list) and len(x) == 1 for x in data):
            data = [x[0] for x in data]  # nested as the shape [N, 1]
        if len(data) != count:
            raise UsageError(
                f"BYTES input must have shape [N] matching its {len(data)} elements, got {shape}"
            )
        elements = []
        for i, item in enumerate(data):
            if not isinstance(item, str):
                raise UsageError(f"BYTES element {i} must be a base64 string")
            elements.append(item.encode("latin-1", "replace"))
    return [_image(i, e, blob is None) for i, e in enumerate(elements)]


def _length_prefixed(blob: bytes, count: int) -> list[bytes]:
    """The elements of a binary BYTES tensor: each a 4-byte little-endian length, then bytes."""
    out: list[bytes] = []
    at = 0
    view = memoryview(blob)
    while at < len(blob):
        if at + 4 > len(blob):
            raise UsageError("BYTES binary data ends inside an element's 4-byte length")
        (size,) = struct.unpack_from("<I", blob, at)
        at += 4
        if at + size > len(blob):
            raise UsageError(
                f"BYTES element {len(out)} says {size} bytes, only {len(blob) - at} remain"
            )
        out.append(bytes(view[at : at + size]))
        at += size
        if len(out) > count:
            break
    if len(out) != count:
        raise UsageError(f"BYTES input of shape [{count}] holds {len(out)} elements")
    return out


def _image(index: int, element: bytes, from_json: bool) -> bytes:
    """An element as image bytes: as it is when it starts like a supported image, else base64
    (always for JSON strings)."""
    if not from_json and format_of(element, "") is not None:
        return element
    try:
        return b64decode(element.decode("ascii"))
    except (UsageError, UnicodeDecodeError):
        if not from_json:
            return element  # neither: the decoder says what it is not
        raise UsageError(f"BYTES element {index} is not valid base64") from None


def _wanted(body: InferRequest) -> Wanted:
    """The output as asked: per output (the one there is), else by the request's parameters."""
    if not body.outputs:
        return Wanted(binary=(body.parameters or {}).get("binary_data_output") is True)
    binary, class_count = False, 0
    for output in body.outputs:
        if output.name != OUTPUT:
            raise UsageError(f"unknown output {output.name[:40]!r}: this model has '{OUTPUT}'")
        params = output.parameters or {}
        if params.get("shared_memory_region") is not None:
            raise UsageError("output parameter 'shared_memory_region' is not supported")
        count = params.get("classification") or 0
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise UsageError(
                f"output parameter 'classification' must be a class count >= 0, got "
                f"{str(count)[:20]!r}"
            )
        binary = binary or params.get("binary_data") is True
        class_count = max(class_count, count)
    return Wanted(binary, class_count)
