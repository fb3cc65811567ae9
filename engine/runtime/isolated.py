"""Images decoded in a `Sandbox` (engine.runtime.sandbox): what its workers run, and the calls
that hand them an image.

In the worker, an image is read (a path is opened there, so its bytes never cross the pipe),
its header is parsed within the task's small allowance, the decode its header announces is
asked for (`TaskContext.need`: the parent's admission check and memory budget), and only then
are its pixels decoded, within exactly that grant. What comes back is small: the model's
tensor (and for pictures, a grey image of bounded size) and the pixel count its header gave.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

import numpy as np

from pneumo_onnx.engine.contract import Contract
from pneumo_onnx.engine.errors import PneumoError
from pneumo_onnx.engine.runtime.decoders import (
    ImageSource,
    Opened,
    describe,
    inspect,
    named_bytes,
    read_bytes,
)
from pneumo_onnx.engine.runtime.limits import pre_resize_bytes
from pneumo_onnx.engine.runtime.preprocess import PREPROCESSORS, RESIZERS, display_picture, finish
from pneumo_onnx.engine.runtime.sandbox import Admit, Limits, Sandbox, TaskContext
from pneumo_onnx.engine.runtime.sandbox.wire import pack, unpack

MB = 2**20
# What a decode worker imports before its first task.
PRELOAD = ("pneumo_onnx.engine.runtime.isolated",)
# Inputs the batch tools may hand a worker (an uncompressed 80 Mpx 16-bit DICOM is 160 MB).
MAX_FILE_BYTES = 256 * MB


def decode_sandbox(workers: int, limits: Limits | None = None, fork: bool = False) -> Sandbox:
    """A sandbox of `workers` image decoders (batch tools: files up to MAX_FILE_BYTES);
    `fork`: see `Sandbox` (a command line tool, before it loads its model)."""
    return Sandbox(workers, limits or Limits(max_input=MAX_FILE_BYTES), PRELOAD, fork)


def tensor(
    sandbox: Sandbox,
    source: ImageSource,
    contract: Contract,
    path: str,
    admit: Admit | None = None,
    name: str | None = None,
) -> tuple[np.ndarray, int]:
    """The model's input tensor of an image, decoded in `sandbox` through preprocessing path
    `path` ('fast' or 'reference'), and the pixel count its header announced. `admit(pixels)`
    may refuse the image from its header, before its pixels are decoded. `name`: what error
    messages call it (default: `describe(source)`)."""
    name = name or describe(source)
    if not _is_encoded(source):
        return PREPROCESSORS[path](source, contract), 0  # pixels already: nothing to parse
    wire, size = _wire(source, name)
    pixels, count = sandbox.call(
        tensor_task, wire, name, contract, path, name=name, input_bytes=size, admit=admit
    )
    return finish(pixels, contract), count


async def atensor(
    sandbox: Sandbox,
    data: bytes,
    contract: Contract,
    path: str,
    admit: Admit | None = None,
    name: str | None = None,
    executor: Executor | None = None,
) -> tuple[np.ndarray, int]:
    """`tensor` of an encoded image's bytes, from the event loop (`Sandbox.acall`: the loop
    converses with the worker; only a grant that waits for memory waits on a thread of
    `executor`)."""
    name = name or describe(data)
    pixels, count = await sandbox.acall(
        tensor_task,
        data,
        name,
        contract,
        path,
        name=name,
        input_bytes=len(data),
        admit=admit,
        executor=executor,
    )
    return finish(pixels, contract), count


def tensors(
    sandbox: Sandbox, sources: Sequence[ImageSource], contract: Contract, path: str
) -> list[np.ndarray | str]:
    """The model tensors of several images decoded in one call of `sandbox` (one worker, one
    round trip: what batch scoring sends), each bad image's error message in its place. If
    the call itself fails (an image exhausted memory, hung or crashed its decoder), each
    image is decoded again alone, so that the failure is pinned on its image only."""
    names = [describe(s) for s in sources]
    if not all(_is_encoded(s) for s in sources):
        return [_or_message(tensor, sandbox, s, contract, path) for s in sources]
    wires = [_wire(s, n) for s, n in zip(sources, names, strict=True)]
    size = sum(n for _, n in wires)
    try:
        answers = sandbox.call(
            tensors_task,
            [w for w, _ in wires],
            names,
            contract,
            path,
            name=", ".join(names),
            input_bytes=size,
        )
    except PneumoError:
        return [_or_message(tensor, sandbox, s, contract, path) for s in sources]
    return [
        finish(value, contract) if kind == "ok" else unpack(value).message
        for kind, value in answers
    ]


def picture(
    sandbox: Sandbox,
    source: ImageSource,
    contract: Contract,
    path: str,
    side: int,
    name: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The model's tensor of an image and its grey picture for people as it is shown (long
    side `side`: `display_picture`), both decoded in `sandbox`."""
    name = name or describe(source)
    if not _is_encoded(source):
        x = PREPROCESSORS[path](source, contract)
        return x, np.asarray(display_picture(source, side))
    wire, size = _wire(source, name)
    pixels, grey = sandbox.call(
        picture_task, wire, name, contract, path, side, name=name, input_bytes=size
    )
    return finish(pixels, contract), grey


# --- in the worker --------------------------------------------------------------------------


def tensor_task(
    ctx: TaskContext, wire: bytes | str, name: str, contract: Contract, path: str
) -> tuple[np.ndarray, int]:
    opened = _admitted(ctx, wire, name, contract)
    return RESIZERS[path](opened, contract), opened.header.pixels


def tensors_task(
    ctx: TaskContext, wires: list[bytes | str], names: list[str], contract: Contract, path: str
) -> list[tuple[str, Any]]:
    """Every header first (within the allowance), then one grant for the largest decode,
    then each image in turn: ('ok', pixels) or ('error', the packed error)."""
    opened: list[Opened | PneumoError] = []
    for wire, name in zip(wires, names, strict=True):
        try:
            opened.append(_opened(wire, name))
        except PneumoError as e:
            opened.append(e)
    ctx.need(max((_bytes(o, contract) for o in opened if isinstance(o, Opened)), default=0))
    answers: list[tuple[str, Any]] = []
    for o in opened:
        try:
            if isinstance(o, PneumoError):
                raise o
            answers.append(("ok", RESIZERS[path](o, contract)))
        except PneumoError as e:
            answers.append(("error", pack(e)))
    return answers


def picture_task(
    ctx: TaskContext, wire: bytes | str, name: str, contract: Contract, path: str, side: int
) -> tuple[np.ndarray, np.ndarray]:
    opened = _admitted(ctx, wire, name, contract)
    pixels = RESIZERS[path](opened, contract)
    return pixels, np.asarray(display_picture(named_bytes(opened.data, name), side))


def _admitted(ctx: TaskContext, wire: bytes | str, name: str, contract: Contract) -> Opened:
    """The image opened as far as its header, once the decode the header announces (and the
    contract's pre-resize steps) is granted."""
    opened = _opened(wire, name)
    ctx.need(_bytes(opened, contract), opened.header.pixels)
    return opened


def _bytes(opened: Opened, contract: Contract) -> int:
    """The memory the image takes through the contract's pipeline: its decode, and the
    pre-resize steps on its 8-bit image."""
    spec = contract.input
    channels = 1 if spec.color == "grayscale" else 3
    extra = pre_resize_bytes(opened.header.pixels, channels, len(spec.pre_resize))
    return opened.header.decode_bytes + extra


def _opened(wire: bytes | str, name: str) -> Opened:
    """The image's bytes (as sent, or read from the path sent: the allowance grew by twice
    the file's size) opened as far as its header."""
    return inspect(wire if isinstance(wire, bytes) else read_bytes(Path(wire), name), name)


# --- in the parent --------------------------------------------------------------------------


def _or_message(decode: Callable[..., tuple[np.ndarray, int]], *args: Any) -> np.ndarray | str:
    try:
        return decode(*args)[0]
    except PneumoError as e:
        return e.message


def _is_encoded(source: ImageSource) -> bool:
    """Bytes, a path or a file object: something a decoder must parse (not pixels already)."""
    from PIL import Image

    return not isinstance(source, Image.Image | np.ndarray)


def _wire(source: ImageSource, name: str) -> tuple[bytes | str, int]:
    """What crosses the pipe for `source` (a path stays a path), and its size in bytes."""
    if isinstance(source, str | os.PathLike):
        path = os.fspath(source)
        try:
            return path, os.stat(path).st_size
        except OSError:
            return path, 0  # the worker's read says what is wrong with it
    data = read_bytes(source, name)
    return data, len(data)
