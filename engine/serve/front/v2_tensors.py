"""The V2 inference tensors, whatever carried them (HTTP JSON or binary, gRPC): the one input
checked against the model's contract and turned into scoring items, the output asked for, and
Triton's classification strings. Both front doors (`v2_wire` for HTTP, `rpc.codec` for gRPC)
read their wire into these calls, so a shape, a byte count or a value range is judged once.

Inputs: one tensor, FP32 `[N, H, W, C]` already preprocessed as the model's contract says
(values within its scaling range), or BYTES `[N]` (or `[N, 1]`) of encoded image files.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from pneumo_onnx.engine.contract import Contract
from pneumo_onnx.engine.errors import UsageError
from pneumo_onnx.engine.runtime.decoders import format_of
from pneumo_onnx.engine.serve.dataplane.items import Item
from pneumo_onnx.engine.serve.front.bodies import b64decode

MAX_ELEMENTS = 64 * 128 * 128 * 3 * 4  # a generous cap on one request's FP32 values
RANGE_MARGIN = 0.1  # FP32 inputs may stray this fraction of the scaling's range outside it
OUTPUT = "score"
UNSUPPORTED_PARAMETERS = ("shared_memory_region", "classification")  # on an input


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


def check_input_parameters(params: dict[str, Any]) -> None:
    for name in UNSUPPORTED_PARAMETERS:
        if name in params:
            raise UsageError(f"input parameter {name!r} is not supported by this server")


def items_of(
    datatype: str,
    shape: list[int],
    contract: Contract,
    max_items: int,
    *,
    blob: bytes | None = None,
    values: Any = None,
    elements: list[bytes] | None = None,
    from_json: bool = False,
) -> list[Item]:
    """The scoring items of the one input: its data is `blob` (raw bytes: little-endian FP32,
    or length-prefixed BYTES), `values` (FP32 numbers, flat or nested), or `elements` (BYTES:
    one byte string each; base64 text when `from_json`)."""
    if datatype == "FP32":
        return [Item(tensor=x) for x in fp32_array(shape, contract, blob, values)]
    if datatype == "BYTES":
        return [Item(data=b) for b in byte_images(shape, max_items, blob, elements, from_json)]
    raise UsageError(f"input datatype must be FP32 or BYTES, got {datatype[:20]!r}")


def fp32_array(shape: list[int], contract: Contract, blob: bytes | None, values: Any) -> np.ndarray:
    expected = contract.input_shape
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
            array = np.asarray(values, dtype=np.float32)
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
            f"{found[1]:g}: preprocess as the model's metadata describes"
        )
    return array.reshape(shape)


def byte_images(
    shape: list[int],
    max_items: int,
    blob: bytes | None,
    elements: list[bytes] | None,
    from_json: bool,
) -> list[bytes]:
    if not shape or any(d != 1 for d in shape[1:]):
        raise UsageError(f"BYTES input must have shape [N] or [N, 1], got {shape[:8]}")
    count = _count(shape)
    if count > max_items:  # before decoding a single element
        raise UsageError(f"at most {max_items} images per request, got {count}")
    if blob is not None:
        elements = _length_prefixed(blob, count)
    elif elements is None or len(elements) != count:
        got = len(elements or ())
        raise UsageError(
            f"BYTES input must have shape [N] matching its {got} elements, got {shape}"
        )
    return [_image(i, e, from_json) for i, e in enumerate(elements)]


def class_count_of(value: Any) -> int:
    """An output's `classification` parameter, checked: a class count >= 0."""
    count = value or 0
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        raise UsageError(
            f"output parameter 'classification' must be a class count >= 0, got {str(count)[:20]!r}"
        )
    return int(count)


def check_output(name: str) -> None:
    if name != OUTPUT:
        raise UsageError(f"unknown output {name[:40]!r}: this model has '{OUTPUT}'")


def classes(scores: np.ndarray, class_count: int, contract: Contract) -> list[list[str]]:
    """Triton's classification: per image, the top `class_count` of the two classes (clamped
    to 2) as "probability:index:label", index into the metadata's labels [negative, positive].
    The first is the label the model decides at its threshold (what /predict answers), each
    with its own probability, so a label never carries the other class's score."""
    labels = [contract.negative_label, contract.positive_label]
    rows = []
    for s in scores:
        p = float(s)
        label, _ = contract.decide(p)
        first = labels.index(label)
        ranked = [first, 1 - first][: min(class_count, 2)]
        rows.append([f"{(p if k else 1.0 - p):f}:{k}:{labels[k]}" for k in ranked])
    return rows


def length_prefixed(strings: list[bytes]) -> bytes:
    """BYTES elements as the binary wire holds them: each a 4-byte little-endian length."""
    return b"".join(struct.pack("<I", len(s)) + s for s in strings)


def value_range(contract: Contract) -> tuple[float, float]:
    """The input values the model was trained on (pixels 0 to 255 through its scaling), over
    all channels."""
    low, high = contract.input.scaler().range()
    return float(min(np.min(low), np.min(high))), float(max(np.max(low), np.max(high)))


# --- internals -------------------------------------------------------------------------------


def _count(shape: list[int]) -> int:
    if any(d < 0 for d in shape):
        raise UsageError(f"shape dimensions must be >= 0, got {shape[:8]}")
    return math.prod(shape)


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
