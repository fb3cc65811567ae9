"""What crosses the pipes between a sandbox and its workers: pickled messages with their large
buffers sent as they are, and on the parent's side unpickled with an allow-list (builtins
and numpy arrays), so a decoder exploited into running code still cannot run any in the
parent; errors as (class name, message, attributes); the limits both sides share."""

from __future__ import annotations

import io
import os
import pickle
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from pneumo_onnx.engine.errors import ImageError, PneumoError, first_line

MB = 2**20

# What a worker's answer may be made of, beyond builtin containers and scalars.
_ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype")} | {
    (f"numpy.{core}.{module}", name)
    for core in ("core", "_core")  # numpy 2, numpy 1
    for module, name in (
        ("multiarray", "_reconstruct"),
        ("multiarray", "scalar"),
        ("numeric", "_frombuffer"),
    )
}
OUT_OF_BAND = 64 * 2**10  # bytes arguments this large cross the pipe as they are, unpickled


@dataclass(frozen=True)
class Limits:
    """What one sandbox may use: `memory` granted to decodes at once (all workers together),
    `allowance` per task before any grant (headers, parser structures), `max_input` bytes of
    one input, `seconds` per phase of a call (reading the header; decoding once granted)."""

    memory: int = 512 * MB
    allowance: int = 32 * MB
    max_input: int = 16 * MB
    seconds: float = 10.0
    # Taken from `memory` as each call starts, while it is free: a decode that needs no more
    # (an ordinary X-ray) starts without waiting for a grant.
    pregrant: int = 48 * MB

    def __post_init__(self) -> None:
        if self.memory < 16 * MB or self.allowance < 4 * MB or not self.seconds > 0:
            raise PneumoError(f"sandbox limits too small to decode anything: {self}")

    @property
    def per_worker(self) -> int:
        """The most one worker may hold above its resting size (its hard limit)."""
        return self.memory + self.allowance + 2 * self.max_input


class AllowListUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"a {module}.{name}, which is not allowed")


def send(conn: Connection, message: object) -> None:
    """`message` pickled, its large buffers (numpy arrays, PickleBuffer-wrapped bytes) sent
    after it as they are: no copy into the pickle, and none out of it on the other side."""
    buffers: list[pickle.PickleBuffer] = []
    payload = pickle.dumps(message, protocol=5, buffer_callback=buffers.append)
    conn.send_bytes(len(buffers).to_bytes(4, "little") + payload)
    for buffer in buffers:
        conn.send_bytes(buffer.raw())


def receive(conn: Connection, unpickler: type[pickle.Unpickler] = pickle.Unpickler) -> Any:
    head = conn.recv_bytes()
    buffers = [conn.recv_bytes() for _ in range(int.from_bytes(head[:4], "little"))]
    return unpickler(io.BytesIO(head[4:]), buffers=buffers).load()


def out_of_band(args: tuple[Any, ...]) -> tuple[Any, ...]:
    """Large bytes arguments marked to cross the pipe without being copied into the pickle."""
    return tuple(
        pickle.PickleBuffer(a) if isinstance(a, bytes) and len(a) >= OUT_OF_BAND else a
        for a in args
    )


def memory_error(name: str, value: dict[str, Any]) -> ImageError:
    """What a caller is told of a task that hit its memory limit."""
    allowed = value["allowed"] / MB
    if value["phase"] == "header":
        return ImageError(
            f"{name} needs more than {allowed:.0f} MB of memory before its content is even "
            "decoded (its structure is far larger than its size suggests): refused"
        )
    return ImageError(
        f"{name} needs more memory to decode than its header announces (it was allowed "
        f"{allowed:.0f} MB): refused"
    )


def pack(error: BaseException) -> tuple[str, str, dict[str, Any]]:
    """An exception as what crosses the pipe: our class's name, its message, its attributes."""
    if isinstance(error, PneumoError):
        attributes = {k: v for k, v in vars(error).items() if isinstance(v, str | int | float)}
        return type(error).__name__, error.message, attributes
    return "", f"{type(error).__name__}: {first_line(error)}", {}


def unpack(packed: tuple[str, str, dict[str, Any]]) -> PneumoError:
    from pneumo_onnx.engine import errors

    name, message, attributes = packed
    cls = getattr(errors, name, None) if name else None
    if not (isinstance(cls, type) and issubclass(cls, PneumoError)):
        return ImageError(f"cannot decode it: {message}")
    error = cls.__new__(cls)
    Exception.__init__(error, message)
    error.__dict__.update(attributes)
    return error


def data_bytes() -> int:
    """This process's data segment now (what RLIMIT_DATA counts), from /proc/self/statm."""
    with open("/proc/self/statm", "rb") as f:
        return int(f.read().split()[5]) * os.sysconf("SC_PAGE_SIZE")
