"""The input area a worker shares with its parent: one upload's bytes cross to the worker by one
copy into memory both map, instead of through the pipe (which allocates a page for every 4 KB
written and frees it as it is read: ~0.1 CPU-ms for a 1 MB X-ray, against ~0.02 here).

The parent creates the area (an anonymous shared memory file), maps it to write, then seals it:
no other writable mapping, no write, no resize, from anyone; the worker gets a read-only
descriptor of it. So a worker can neither write to it nor shrink it under the parent (whose
writes would then fault); where the kernel cannot seal it so (before Linux 5.1), there is no
area and the pipe carries everything. The parent writes only while the worker is between
calls, and never reads the area back: answers come through the pipe, whatever a decoder
exploited into running code does. An input larger than the area (a rare 10 MB DICOM) takes the
pipe as before; the area holds at most AREA_BYTES of memory per worker, once written.
"""

from __future__ import annotations

import mmap
import os
from typing import Any, NamedTuple

from pneumo_onnx.engine.runtime.sandbox.wire import out_of_band

AREA_BYTES = 4 * 2**20
F_SEAL_FUTURE_WRITE = 0x0010  # linux/fcntl.h; Python's fcntl does not name it


class Shared(NamedTuple):
    """In a call's arguments: a bytes argument that is the first `size` bytes of the area."""

    size: int


class InputArea:
    """The parent's side: the area mapped to write, and the descriptor its worker inherits."""

    def __init__(self, size: int) -> None:
        self.size = size
        fd = os.memfd_create("pneumo-input", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(fd, size)
            import fcntl

            self._map = mmap.mmap(fd, size)
            # From now on only this mapping writes: no new writable mapping, no write(), no
            # other size, whoever opens the file again (Linux 5.1).
            seals = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | F_SEAL_FUTURE_WRITE
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals | fcntl.F_SEAL_SEAL)
            # What the worker gets: the same memory, opened again read-only.
            self.child_fd = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
        finally:
            os.close(fd)

    @classmethod
    def made(cls, size: int) -> InputArea | None:
        """An area of `size` bytes, or None where the system has none to give (not Linux, no
        memfd): the pipe carries everything then."""
        if size <= 0 or not hasattr(os, "memfd_create"):
            return None
        try:
            return cls(size)
        except (OSError, ValueError, AttributeError):
            return None

    def carried(self, args: tuple[Any, ...]) -> tuple[Any, ...]:
        """`args` as they cross to the worker: the first large bytes argument that fits,
        through the area; other large ones out of band in the pipe (`out_of_band`)."""
        for i, arg in enumerate(args):
            if isinstance(arg, bytes) and len(arg) <= self.size:
                self._map[: len(arg)] = arg
                return out_of_band((*args[:i], Shared(len(arg)), *args[i + 1 :]))
        return out_of_band(args)

    def child_closed(self) -> None:
        """The worker has its descriptor (it started, or failed to): the parent's copy goes."""
        if self.child_fd >= 0:
            os.close(self.child_fd)
            self.child_fd = -1

    def close(self) -> None:
        self.child_closed()
        self._map.close()


class WorkerArea:
    """The worker's side: the area mapped read-only, from the descriptor it was started with."""

    def __init__(self, fd: int, size: int) -> None:
        self._map = mmap.mmap(fd, size, prot=mmap.PROT_READ)
        os.close(fd)

    @classmethod
    def opened(cls, spec: str) -> WorkerArea | None:
        """From the worker's argument 'fd:size' ('-': none)."""
        if spec == "-":
            return None
        fd, size = (int(x) for x in spec.split(":"))
        return cls(fd, size)

    def taken(self, args: tuple[Any, ...]) -> tuple[Any, ...]:
        """The call's arguments with the area's bytes in place of their marker."""
        return tuple(bytes(self._map[: a.size]) if isinstance(a, Shared) else a for a in args)
