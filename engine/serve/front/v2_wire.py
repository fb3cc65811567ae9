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
import zlib
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from pneumo_onnx.engine.contract import Contract
from pneumo_onnx.engine.errors import TooLarge, UsageError
from pneumo_onnx.engine.runtime.sandbox import TaskContext
from pneumo_onnx.engine.serve.front.bodies import (
    SMALL_JSON,
    InvalidBody,
    is_byte_count,
    json_grant,
    parse_json,
)
from pneumo_onnx.engine.serve.front.v2_tensors import (
    OUTPUT,
    Parsed,
    Wanted,
    check_input_parameters,
    check_output,
    class_count_of,
    classes,
    items_of,
    length_prefixed,
)


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
    elements = _json_elements(tensor) if blob is None and tensor.datatype == "BYTES" else None
    items = items_of(
        tensor.datatype,
        tensor.shape,
        contract,
        max_items,
        blob=blob,
        values=tensor.data,
        elements=elements,
        from_json=blob is None,
    )
    tensor.data = None  # millions of Python floats: not kept while the request is scored
    return Parsed(body.id, items, _wanted(body))


def render(
    name: str,
    version: str,
    request_id: str | None,
    scores: np.ndarray,
    wanted: Wanted,
    contract: Contract,
) -> tuple[bytes, dict[str, str]]:
    """The response body and its headers: JSON, or a JSON header then the raw output.

    With `class_count`, the output is Triton's classification: BYTES `[N, k]` of
    "probability:index:label" (`v2_tensors.classes`; Triton prints the float as C's `%f`)."""
    output: dict[str, Any] = {"name": OUTPUT, "datatype": "FP32", "shape": [len(scores), 1]}
    values: list[Any]
    if wanted.class_count:
        rows = classes(scores, wanted.class_count, contract)
        output["datatype"] = "BYTES"
        output["shape"] = [len(rows), min(wanted.class_count, 2)]
        raw = length_prefixed([c.encode() for row in rows for c in row])
        values = [c for row in rows for c in row]
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
    check_input_parameters(params)
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


def _json_elements(tensor: InferInput) -> list[bytes]:
    """A JSON BYTES tensor's base64 strings, flat or nested as the shape [N, 1]."""
    data = tensor.data or []
    count = tensor.shape[0] if tensor.shape else -1
    if len(data) == count and all(isinstance(x, list) and len(x) == 1 for x in data):
        data = [x[0] for x in data]
    elements = []
    for i, item in enumerate(data):
        if not isinstance(item, str):
            raise UsageError(f"BYTES element {i} must be a base64 string")
        elements.append(item.encode("latin-1", "replace"))
    return elements


def _wanted(body: InferRequest) -> Wanted:
    """The output as asked: per output (the one there is), else by the request's parameters."""
    if not body.outputs:
        return Wanted(binary=(body.parameters or {}).get("binary_data_output") is True)
    binary, class_count = False, 0
    for output in body.outputs:
        check_output(output.name)
        params = output.parameters or {}
        if params.get("shared_memory_region") is not None:
            raise UsageError("output parameter 'shared_memory_region' is not supported")
        binary = binary or params.get("binary_data") is True
        class_count = max(class_count, class_count_of(params.get("classification")))
    return Wanted(binary, class_count)
