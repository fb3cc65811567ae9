"""ModelInferRequest in, ModelInferResponse out. The request is parsed where its size allows:
a small one on the server's parsing thread, a large one in a decode worker, because protobuf
makes far more of a hostile message than its size (measured: 16 MB of empty sub-messages take
~750 MB to parse), and only the worker's memory is bounded by the OS. What comes back is plain
(`Envelope`); the tensor checks are `v2_tensors`', shared with the HTTP door."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numpy as np
from google.protobuf.message import DecodeError

from pneumo_onnx.engine.contract import Contract
from pneumo_onnx.engine.errors import UsageError
from pneumo_onnx.engine.runtime.sandbox import TaskContext
from pneumo_onnx.engine.serve.front.rpc import pneumo_v2_pb2 as pb
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

MAX_DIMS = 8  # more than any tensor of ours has: a longer shape is refused before it is read
MAX_PARAMETERS = 64  # per input, output or request
MAX_OUTPUTS = 8
TYPED = {"FP32": "fp32_contents", "BYTES": "bytes_contents"}


@dataclass(frozen=True)
class Envelope:
    """A ModelInferRequest as builtins and at most one array (what a decode worker hands
    back): the model asked for, the one input's data, the outputs asked for."""

    model_name: str
    model_version: str
    request_id: str
    datatype: str
    shape: list[int]
    blob: bytes | None  # raw_input_contents
    fp32: np.ndarray | None  # contents.fp32_contents
    elements: list[bytes] | None  # contents.bytes_contents
    outputs: list[tuple[str, int]]  # (name, class count)

    def items(self, contract: Contract, max_items: int) -> Parsed:
        """The scoring items and the output wanted, checked against the model's contract."""
        items = items_of(
            self.datatype,
            self.shape,
            contract,
            max_items,
            blob=self.blob,
            values=self.fp32,
            elements=self.elements,
        )
        class_count = max((count for _, count in self.outputs), default=0)
        return Parsed(self.request_id, items, Wanted(binary=True, class_count=class_count))


def parse_message(message: type[Any], raw: bytes) -> Any:
    """`raw` as a `message`, or UsageError (INVALID_ARGUMENT) saying it is not one."""
    try:
        return message.FromString(raw)
    except DecodeError:  # protobuf says the same when its parse runs out of memory
        raise UsageError(
            f"the request is not a valid {message.__name__} message, or its structure takes "
            "far more memory to parse than its size allows"
        ) from None


def parse_infer(raw: bytes) -> Envelope:
    request = parse_message(pb.ModelInferRequest, raw)
    if len(request.inputs) != 1:
        raise UsageError(f"expected 1 input tensor, got {len(request.inputs)}")
    tensor = request.inputs[0]
    _check_parameters(request.parameters, "request")
    check_input_parameters(_plain(tensor.parameters, "input"))
    if len(tensor.shape) > MAX_DIMS:
        raise UsageError(f"shape has {len(tensor.shape)} dimensions, at most {MAX_DIMS}")
    datatype, shape = tensor.datatype, [int(d) for d in tensor.shape]
    filled = [f.name for f, _ in tensor.contents.ListFields()]
    if datatype in TYPED and any(f != TYPED[datatype] for f in filled):
        raise UsageError(f"a {datatype} input carries its data in {TYPED[datatype]}, got {filled}")
    raw_count = len(request.raw_input_contents)
    if raw_count > 1:
        raise UsageError(f"raw_input_contents holds {raw_count} tensors for 1 input")
    if raw_count and filled:
        raise UsageError("the input has both raw_input_contents and typed contents")
    if not raw_count and not filled and datatype in TYPED:
        raise UsageError(f"input {tensor.name[:40]!r} has no data (raw_input_contents or contents)")
    blob = request.raw_input_contents[0] if raw_count else None
    contents = tensor.contents
    fp32 = elements = None
    if datatype == "FP32" and not raw_count:
        fp32 = np.fromiter(contents.fp32_contents, np.float32, len(contents.fp32_contents))
    elif datatype == "BYTES" and not raw_count:
        elements = list(contents.bytes_contents)
    if len(request.outputs) > MAX_OUTPUTS:
        raise UsageError(
            f"at most {MAX_OUTPUTS} outputs may be asked for, got {len(request.outputs)}"
        )
    outputs = [_output(o) for o in request.outputs]
    return Envelope(
        request.model_name,
        request.model_version,
        request.id,
        datatype,
        shape,
        blob,
        fp32,
        elements,
        outputs,
    )


def parse_infer_task(ctx: TaskContext, raw: bytes) -> tuple[Any, ...]:
    """`parse_infer` in a decode worker: no memory is granted beyond the worker's allowance
    (twice the message and some): a message whose structure needs more is refused there."""
    envelope = parse_infer(raw)
    return tuple(getattr(envelope, f.name) for f in fields(envelope))


def response(
    name: str, version: str, request_id: str, scores: np.ndarray, wanted: Wanted, contract: Contract
) -> pb.ModelInferResponse:
    """The scores as Triton answers them: in raw_output_contents (FP32 `[N, 1]`), or, with a
    class count, Triton's classification strings (BYTES `[N, k]`, `v2_tensors.classes`)."""
    out = pb.ModelInferResponse.InferOutputTensor(name=OUTPUT, datatype="FP32")
    if wanted.class_count:
        rows = classes(scores, wanted.class_count, contract)
        out.datatype = "BYTES"
        out.shape.extend([len(rows), min(wanted.class_count, 2)])
        raw = length_prefixed([c.encode() for row in rows for c in row])
    else:
        out.shape.extend([len(scores), 1])
        raw = np.asarray(scores, dtype="<f4").tobytes()
    return pb.ModelInferResponse(
        model_name=name,
        model_version=version,
        id=request_id,
        outputs=[out],
        raw_output_contents=[raw],
    )


def repository_parameter(p: Any) -> Any:
    """A ModelRepositoryParameter's value (or an InferParameter's), whichever it holds."""
    which = p.WhichOneof("parameter_choice")
    return None if which is None else getattr(p, which)


# --- internals -------------------------------------------------------------------------------


def _output(output: Any) -> tuple[str, int]:
    check_output(output.name)
    params = _plain(output.parameters, "output")
    if "shared_memory_region" in params:
        raise UsageError("output parameter 'shared_memory_region' is not supported")
    return output.name, class_count_of(params.get("classification"))


def _plain(parameters: Any, where: str) -> dict[str, Any]:
    _check_parameters(parameters, where)
    return {k: repository_parameter(v) for k, v in parameters.items()}


def _check_parameters(parameters: Any, where: str) -> None:
    if len(parameters) > MAX_PARAMETERS:
        raise UsageError(f"at most {MAX_PARAMETERS} {where} parameters, got {len(parameters)}")
