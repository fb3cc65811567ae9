"""What crosses the pipes between a sandbox and its workers: pickled messages with their large
buffers sent as they are, and on the parent's side unpickled with an allow-list (builtins
and numpy arrays), so a decoder exploited into running code still cannot run any in the
parent; errors as (class name, message, attributes); the limits both sides share."""

from __future__ import annotations

import io
import os
import pickle
import struct
from collections.abc import Generator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, ClassVar

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
FRAME = struct.Struct("<QI")  # a message's pickle length and how many buffers follow it
MAX_PICKLE = 1 << 31  # what a frame may announce (more is a broken or hostile peer)
MAX_BUFFERS = 1 << 16
IOV_MAX = 1024
READ_CHUNK = 16 * 2**20


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
    _found: ClassVar[dict[tuple[str, str], Any]] = {}  # what the allow-list let through

    def find_class(self, module: str, name: str) -> Any:
        key = (module, name)
        found = self._found.get(key)
        if found is None:
            if key not in _ALLOWED:
                raise pickle.UnpicklingError(f"a {module}.{name}, which is not allowed")
            found = self._found[key] = super().find_class(module, name)
        return found


def send(conn: Connection, message: object) -> None:
    """`message` as a frame (`framed`), written whole (blocking)."""
    parts = framed(message)
    while parts:
        write_some(conn.fileno(), parts)


def framed(message: object) -> list[memoryview]:
    """`message` pickled, its large buffers (numpy arrays, PickleBuffer-wrapped bytes) sent
    after it as they are (no copy into the pickle, none out of it on the other side): FRAME,
    the buffers' sizes, the pickle, the buffers; one system call writes it where the pipe
    has room."""
    buffers: list[pickle.PickleBuffer] = []
    payload = pickle.dumps(message, protocol=5, buffer_callback=buffers.append)
    raws = [b.raw() for b in buffers]
    sizes = struct.pack(f"<{len(raws)}Q", *(r.nbytes for r in raws))
    head = FRAME.pack(len(payload), len(raws))
    parts = [memoryview(head), memoryview(sizes), memoryview(payload), *raws]
    return [p for p in parts if p.nbytes]


def write_some(fd: int, parts: list[memoryview]) -> None:
    """One write of what is left of a frame; `parts` keeps what is still to write."""
    written = os.writev(fd, parts[:IOV_MAX])
    while parts and written >= parts[0].nbytes:
        written -= parts[0].nbytes
        parts.pop(0)
    if written:
        parts[0] = parts[0][written:]


def receive(conn: Connection, unpickler: type[pickle.Unpickler] = pickle.Unpickler) -> Any:
    """The next message, read as it arrives (blocking)."""
    fd = conn.fileno()
    frame = frame_reader()
    wanted = next(frame)
    try:
        while True:
            wanted = frame.send(read_exact(fd, wanted))
    except StopIteration as done:
        return unpickled(done.value, unpickler)


Frame = tuple[bytes, list[bytes]]  # a message's pickle and its buffers


def frame_reader() -> Generator[int, bytes, Frame]:
    """A frame's parts in turn: yields how many bytes it needs next, is sent them, returns
    (pickle, buffers). What drives it reads them: blocking (`receive`), or as the event loop
    finds them there (`WorkerProcess.areceive`)."""
    length, count = FRAME.unpack((yield FRAME.size))
    if length > MAX_PICKLE or count > MAX_BUFFERS:
        raise pickle.UnpicklingError(f"a frame of {length} bytes and {count} buffers")
    sizes = struct.unpack(f"<{count}Q", (yield 8 * count)) if count else ()
    payload = yield length
    buffers = []
    for size in sizes:
        buffers.append((yield size))  # bytes, as the task's arguments were
    return payload, buffers


def unpickled(frame: Frame, unpickler: type[pickle.Unpickler] = pickle.Unpickler) -> Any:
    payload, buffers = frame
    return unpickler(io.BytesIO(payload), buffers=buffers).load()


def read_exact(fd: int, size: int) -> bytes:
    """`size` bytes from `fd` (one read where they are all there), never allocating more
    than READ_CHUNK ahead of what arrived (a peer's announced size is only a claim);
    EOFError if it closes first."""
    data = os.read(fd, min(size, READ_CHUNK))
    if len(data) == size:
        return data
    chunks = [data]
    got = len(data)
    while got < size:
        if not data:
            raise EOFError
        data = os.read(fd, min(size - got, READ_CHUNK))
        chunks.append(data)
        got += len(data)
    return b"".join(chunks)


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
    """This process's data segment now (what RLIMIT_DATA counts), from /proc/self/statm: one
    pread of a descriptor kept open (a worker asks three times a task; opening the file
    anew took ten system calls each time)."""
    global _statm
    pid = os.getpid()
    if _statm is None or _statm[0] != pid:  # opened by this process (not inherited by fork)
        _statm = pid, os.open("/proc/self/statm", os.O_RDONLY | os.O_CLOEXEC)
    return int(os.pread(_statm[1], 256, 0).split()[5]) * _PAGE


_statm: tuple[int, int] | None = None  # (the process that opened it, the descriptor)
_PAGE = os.sysconf("SC_PAGE_SIZE")
