"""Memory a process frees after a large decode or parse goes back to the operating system.

glibc serves large allocations with mmap, but raises that threshold (up to 32 MB) each time
such a block is freed: after one large image, the buffers of the next ones come from the heap
arenas and stay in the process once freed. A process that decodes an 80 Mpx image now and then
would hold GBs it no longer uses (measured: 1.3 GB after a few of the largest allowed requests,
against 0.13 GB idle). After a large decode or parse, free memory is handed back with
malloc_trim; ordinary work never pays for it (a fixed mmap threshold instead cost ~8% more CPU
per ordinary request). Decode workers trim after every task: their memory limit counts what
they hold, not what they use.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable

TRIM_ABOVE = 64 * 2**20  # a decode or parse expected to need this much: trim afterwards


def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim: Callable[[int], int] = ctypes.CDLL(name).malloc_trim
        return trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to hand back
        return None


_TRIM = _malloc_trim()


def trim() -> None:
    """Hand free memory back to the OS now (glibc only; elsewhere nothing happens)."""
    if _TRIM is not None:
        _TRIM(0)


def trim_after(nbytes: int) -> None:
    """Hand free memory back to the OS if the work just done needed `nbytes` or more."""
    if nbytes >= TRIM_ABOVE:
        trim()
