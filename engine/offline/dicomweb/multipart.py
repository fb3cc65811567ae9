"""multipart/related, as DICOMweb sends instances (WADO-RS) and takes them (STOW-RS).

Only what DICOMweb needs (RFC 2387 bodies of whole parts, no nesting). Callers hand in a body
whose size they already bounded while reading it; parsing makes no copy larger than a part.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from pneumo_onnx.engine.errors import ImageError


@dataclass(frozen=True)
class Part:
    content_type: str  # the part's Content-Type, lower case, without parameters ('' if none)
    data: bytes


def boundary_of(content_type: str) -> str:
    """The boundary parameter of a multipart/related Content-Type (ImageError if none)."""
    kind, _, params = content_type.partition(";")
    if kind.strip().lower() != "multipart/related":
        raise ImageError(f"expected a multipart/related answer, got {kind.strip() or 'none'!r}")
    for param in params.split(";"):
        key, _, value = param.strip().partition("=")
        if key.strip().lower() == "boundary" and value.strip().strip('"'):
            return value.strip().strip('"')
    raise ImageError("the multipart/related answer names no boundary")


def parse(body: bytes, content_type: str) -> list[Part]:
    """The parts of a multipart/related body (ImageError on a truncated or malformed one)."""
    delimiter = b"--" + boundary_of(content_type).encode("latin-1")
    start = body.find(delimiter)
    if start < 0:
        raise ImageError("the multipart/related answer holds no part (no boundary in its body)")
    pos = start + len(delimiter)
    parts: list[Part] = []
    while not body.startswith(b"--", pos):  # "--boundary--" closes the body
        line_end = body.find(b"\r\n", pos)  # transport padding up to the end of the line
        end = body.find(b"\r\n" + delimiter, line_end)
        if line_end < 0 or end < 0:
            raise ImageError(f"the multipart/related answer is truncated after {len(parts)} parts")
        parts.append(_part(body[line_end + 2 : end]))
        pos = end + 2 + len(delimiter)
    return parts


def _part(raw: bytes) -> Part:
    if raw.startswith(b"\r\n"):  # a part without headers
        return Part("", raw[2:])
    head, sep, data = raw.partition(b"\r\n\r\n")
    if not sep:
        raise ImageError("a part of the multipart/related answer has no end of headers")
    content_type = ""
    for line in head.decode("latin-1").split("\r\n"):
        key, _, value = line.partition(":")
        if key.strip().lower() == "content-type":
            content_type = value.split(";")[0].strip().lower()
    return Part(content_type, data)


def build(parts: list[bytes], part_type: str = "application/dicom") -> tuple[bytes, str]:
    """A multipart/related body of `parts` and its Content-Type (for STOW-RS)."""
    boundary = uuid.uuid4().hex
    chunks = []
    for data in parts:
        chunks += [f"--{boundary}\r\nContent-Type: {part_type}\r\n\r\n".encode(), data, b"\r\n"]
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f'multipart/related; type="{part_type}"; boundary={boundary}'
