"""The request shapes the load generator can send, one per kind of front door: a builder (the
path, body and headers for one image) and a reader (the score in the answer, or what was
wrong with it). Kept apart from the load loop so each can be tested without a server, and so
that a peer whose framework fixes its own wire format costs one small entry here, not a
second load generator.
"""

from __future__ import annotations

import json
import struct
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

SEED_FIELDS = {"prediction", "confidence", "raw_score", "threshold"}
V2_PATH = "/v2/models/pneumonia/infer"

Built = tuple[str, bytes, dict[str, str]]


def multipart(name: str, data: bytes) -> tuple[bytes, str]:
    """A multipart/form-data body with the file in field `image` (the seed API's), and its
    boundary."""
    boundary = uuid.uuid4().hex
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode(), boundary


def build_seed(name: str, data: bytes) -> Built:
    body, boundary = multipart(name.rsplit("/", 1)[-1], data)
    return "/predict", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def build_v2(name: str, data: bytes) -> Built:
    """KServe V2 / Triton binary tensor extension (what tritonclient sends by default): a JSON
    header naming one BYTES tensor `image_bytes` of shape [1, 1] (a batch of one), then the
    4-byte little-endian length and the JPEG itself; the score asked for as JSON."""
    blob = struct.pack("<I", len(data)) + data
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "image_bytes",
                    "shape": [1, 1],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(blob)},
                }
            ],
            "outputs": [{"name": "score", "parameters": {"binary_data": False}}],
        }
    ).encode()
    headers = {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(header)),
    }
    return V2_PATH, header + blob, headers


def _json(payload: bytes) -> Any:
    try:
        return json.loads(payload)
    except ValueError:
        return None


def read_seed(payload: bytes) -> float | str:
    """The seed API's answer: one object with every seed field; its `raw_score`."""
    answer = _json(payload)
    if not isinstance(answer, dict):
        return f"not a JSON object: {payload[:200]!r}"
    missing = SEED_FIELDS - set(answer)
    if missing:
        return f"missing fields: {sorted(missing)}"
    return _number(answer["raw_score"], payload)


def read_list(payload: bytes) -> float | str:
    """A batchable endpoint's answer (BentoML): a list holding the one seed-style object."""
    answer = _json(payload)
    if not (isinstance(answer, list) and len(answer) == 1):
        return f"expected a list of one answer, got {payload[:200]!r}"
    return read_seed(json.dumps(answer[0]).encode())


def read_v2(payload: bytes) -> float | str:
    """A V2 answer: output `score` with one number."""
    answer = _json(payload)
    outputs = answer.get("outputs") if isinstance(answer, dict) else None
    score = next((o for o in outputs or [] if o.get("name") == "score"), None)
    if score is None or len(score.get("data") or []) != 1:
        return f"expected output 'score' with one value, got {payload[:200]!r}"
    return _number(score["data"][0], payload)


def _number(value: object, payload: bytes) -> float | str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"the score is not a number: {payload[:200]!r}"
    return float(value)


@dataclass(frozen=True)
class Route:
    """One request shape: how to ask, and how to read the answer."""

    build: Callable[[str, bytes], Built]
    score: Callable[[bytes], float | str]


ROUTES: dict[str, Route] = {
    "seed": Route(build_seed, read_seed),
    "list": Route(build_seed, read_list),  # the seed request, answered as a list of one
    "v2": Route(build_v2, read_v2),
}
