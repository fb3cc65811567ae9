"""Untrusted bytes are parsed in worker processes whose memory the operating system bounds.

A limit checked before a parser runs is a guess about the parser: Pillow builds TIFF strip
tables inside `Image.open`, pydicom parses sequences eagerly and hands encapsulated frames to
codecs at their own size. So decoders (images, DICOM, large JSON bodies, zip archives) run in a
`Sandbox`: a few long-lived worker processes, each with a
hard `RLIMIT_DATA`, no core dumps, no file writes and none of its parent's secrets (only the
environment variables an interpreter needs), killed when their parent dies.

Memory is shared by grants, so the total holds by construction. A task starts with a small
allowance above the worker's resting size (`Limits.allowance` plus twice its input); before it
decodes, it asks for what its header says the decode needs (`TaskContext.need`). The parent
grants that from one budget for all workers (`Limits.memory`), waiting while other decodes
hold it (one alone is always allowed), and the worker lowers its own soft limit to what was
granted. An allocation past it fails in the worker (MemoryError), never in the parent:

    all workers together <= workers x (resting size + allowance + 2 x input) + memory

A call that outlives `Limits.seconds` (per phase) is killed; a worker that crashes or is killed
is replaced in the background. Either way the caller gets an ImageError that says what
happened, and the other workers, the parent and its event loop go on. What a worker sends back
is unpickled with an allow-list (builtins and numpy arrays): a decoder exploited into running
code still cannot run any in the parent.

A call comes from a thread (`Sandbox.call`, which waits on the pipe) or from an event loop
(`Sandbox.acall`: the loop waits on the pipe with its sockets, so a server hands an image to a
worker without waking a thread); both wait for a free worker in one queue, in order.

The pool is `pool` (in the parent), the memory it grants `budget`, who gets its next free
worker `turns`, one worker as the parent sees it `process` (started by `starting`), the worker
itself `worker` (`python -m engine.runtime.sandbox`), what crosses the pipes `wire`, and the
input area a worker shares with its parent, through which an upload crosses instead, `shared`.
"""

from pneumo_onnx.engine.runtime.sandbox.pool import Admit, Sandbox, Task
from pneumo_onnx.engine.runtime.sandbox.wire import Limits
from pneumo_onnx.engine.runtime.sandbox.worker import Refused, TaskContext

__all__ = ["Admit", "Limits", "Refused", "Sandbox", "Task", "TaskContext"]
