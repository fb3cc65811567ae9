"""How much of a reduced-precision variant (fp16, int8) to keep in fp32, and, when a variant
still misses its gate, which nodes lose the fidelity and by how much.

A reduced-precision build perturbs every node a little, and a network amplifies most what its
first layers lose: every later layer passes it on. The MobileNet-style models built to
reproduce issue 21 (MobileNetV2 alpha 0.35, 224 px, [-1, 1] input; parity_tests/
test_variants_depthwise.py) missed their gates by that mechanism, not by one broken op: no fp16
tensor overflowed, every int8 QDQ pair kept 30-40 dB on its own tensor, and the loss grew layer
by layer (int8-full, signal-to-noise ratio against fp32: 39 dB after the first convolution, 20
dB at block 8, 14 dB before the pooling). So a variant is
built as the quantizer or converter makes it, scored on the calibration X-rays, and while it is
further than TARGET_SHARE of its gate from fp32, rebuilt with the nodes nearest the input kept
in fp32, a prefix doubling in length up to MAX_PREFIX_SHARE of the graph. The most faithful
build wins when none reaches the target (the gate judges it afterwards, on every probe image).

`worst_nodes` explains a miss: each node alone at the variant's precision, everything else fp32,
and the score change that alone causes on the calibration X-rays.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from pneumo_onnx.engine.contract import Contract
from pneumo_onnx.engine.runtime.preprocess import finish
from pneumo_onnx.engine.runtime.session import create_session, run_batched

Figures = dict[str, Any]

# A build is accepted once its p99 |score diff| on the calibration X-rays is at most this share of
# its gate's p99 bound: the gate then runs on every probe image, the calibration set is a subset.
TARGET_SHARE = 0.4
PREFIXES = (1, 2, 4, 8, 16, 32)  # arithmetic nodes kept in fp32 from the input on, in turn
MAX_PREFIX_SHARE = 0.25  # never more than this share of them: a variant is there for speed
DIAGNOSE_IMAGES = 16  # calibration X-rays each node's lone reduction is scored on
WORST_NODES = 5
# Ops that move or relabel values without arithmetic: never blamed for a loss of precision.
LAYOUT_OPS = frozenset(
    {"Transpose", "Reshape", "Squeeze", "Unsqueeze", "Identity", "Flatten", "Shape", "Cast"}
)
# Nor counted in a prefix: they go with the node before them (a quantized Conv absorbs its
# Relu6; a Pad keeps the scale of what it pads).
FOLLOWERS = LAYOUT_OPS | {"Clip", "Relu", "MaxPool", "Pad"}


@dataclass(frozen=True)
class Scorer:
    """Scores of the calibration X-rays from any build of the model, against fp32's."""

    fp32: bytes
    contract: Contract
    x: np.ndarray
    reference: np.ndarray

    @classmethod
    def of(cls, fp32: bytes, contract: Contract, x: np.ndarray) -> Scorer:
        return cls(fp32, contract, x, contract.scores(run_batched(create_session(fp32), x)))

    def scores(self, model: bytes, count: int | None = None) -> np.ndarray:
        x = self.x if count is None else self.x[:count]
        return self.contract.scores(run_batched(create_session(model), x))

    def diff(self, model: bytes, count: int | None = None) -> np.ndarray:
        s = self.scores(model, count)
        return np.abs(s - self.reference[: len(s)])


def prefixes(model: onnx.ModelProto, skip: Sequence[str] = ()) -> list[list[str]]:
    """Node-name prefixes of the graph in topological order, one per length in PREFIXES (counted
    in arithmetic nodes not in `skip`, up to MAX_PREFIX_SHARE of them). Each runs up to the next
    arithmetic node, so holds the activation or padding after its last one and every layout op
    before it: a Transpose left in reduced precision between the input and a fp32 convolution
    would round the input all the same."""
    names = [n.name for n in model.graph.node]
    counted = [i for i, n in enumerate(model.graph.node) if _counts(n, skip)]
    cap = max(1, int(len(counted) * MAX_PREFIX_SHARE))
    ends = [*counted[1:], len(names)]
    return [names[: ends[k - 1]] for k in PREFIXES if k <= min(cap, len(counted))]


def _counts(node: onnx.NodeProto, skip: Sequence[str]) -> bool:
    return node.op_type not in FOLLOWERS and node.name not in skip


def fallback(
    build: Callable[[list[str]], bytes], tries: list[list[str]], scorer: Scorer, target: float
) -> tuple[bytes, Figures]:
    """Build with nothing extra in fp32, then with each prefix of `tries` in fp32 until the
    calibration p99 is within `target`; the most faithful build when none is. Returns it with
    the figures of every attempt (the manifest's `precision`)."""
    attempts: list[Figures] = []
    best: tuple[float, bytes, list[str]] | None = None
    for keep in [[], *tries]:
        data = build(keep)
        d = scorer.diff(data)
        p99 = float(np.percentile(d, 99))
        attempts.append(
            {
                "fp32_nodes": len(keep),
                "last_fp32_node": keep[-1] if keep else None,
                "p99_score_diff": p99,
                "max_score_diff": float(d.max()),
            }
        )
        if best is None or p99 < best[0]:
            best = (p99, data, keep)
        if p99 <= target:
            break
    assert best is not None
    p99, data, keep = best
    return data, {
        "calibration_images": len(scorer.x),
        "target_p99_score_diff": target,
        "fp32_nodes": keep,
        "attempts": attempts,
    }


def mac_share(model: onnx.ModelProto, names: Sequence[str]) -> float:
    """The share of the graph's multiply-adds per image (Conv, Gemm and MatMul with a weight)
    that the nodes `names` do: what keeping them in fp32 costs a variant's speed. The first
    layers of a MobileNet run at the highest resolution: a few nodes can be half the work."""
    g = onnx.shape_inference.infer_shapes(model).graph
    dims = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in g.value_info}
    dims.update({v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in g.output})
    weights = {i.name: list(i.dims) for i in g.initializer}
    macs: dict[str, int] = {}
    for n in g.node:
        w = weights.get(n.input[1]) if len(n.input) > 1 else None
        if w is None or n.op_type not in ("Conv", "Gemm", "MatMul"):
            continue
        spatial = dims.get(n.output[0], [])[2:] if n.op_type == "Conv" else []
        macs[n.name] = int(np.prod(w)) * int(np.prod(spatial))
    total = sum(macs.values())
    return sum(macs.get(name, 0) for name in set(names)) / total if total else 0.0


def worst_nodes(
    reduced: Iterator[tuple[onnx.NodeProto, str, bytes]], scorer: Scorer
) -> list[Figures]:
    """The WORST_NODES nodes whose lone reduction moves the score most (p99 over
    DIAGNOSE_IMAGES calibration X-rays), each with what its reduction is."""
    found: list[Figures] = []
    for node, what, data in reduced:
        d = scorer.diff(data, DIAGNOSE_IMAGES)
        found.append(
            {
                "node": node.name,
                "op": node.op_type,
                "alone_p99_score_diff": float(np.percentile(d, 99)),
                "reduced": what,
            }
        )
    found.sort(key=lambda f: -f["alone_p99_score_diff"])
    return found[:WORST_NODES]


def grey_level_sensitivity(scorer: Scorer, seed: int = 0) -> float:
    """p99 score change of the fp32 model when each input pixel moves by up to half a grey
    level (uniform noise): the model's own noise floor, below which no variant can be judged
    unfaithful for a reason the X-ray itself would not give."""
    c = scorer.contract
    shape = (c.input.height, c.input.width, c.input.channels)
    step = finish(np.ones(shape, np.float32), c) - finish(np.zeros(shape, np.float32), c)
    rng = np.random.default_rng(seed)
    x = scorer.x[:DIAGNOSE_IMAGES]
    noisy = (x + (rng.random(x.shape, dtype=np.float32) - 0.5) * step).astype(np.float32)
    shifted = Scorer(scorer.fp32, c, noisy, scorer.reference)
    return float(np.percentile(shifted.diff(scorer.fp32), 99))


# --- one node at reduced precision, everything else fp32 ---------------------------------------


def fp16_nodes(model: onnx.ModelProto) -> Iterator[tuple[onnx.NodeProto, str, bytes]]:
    """For each compute node of `model`: a copy with only that node's float inputs (weights
    and activations) rounded to fp16, and its output too where it is a graph output."""
    types = _elem_types(model)
    outputs = {o.name for o in model.graph.output}
    inits = {i.name for i in model.graph.initializer}
    for index, node in enumerate(model.graph.node):
        if node.op_type in LAYOUT_OPS:
            continue
        floats = [t for t in node.input if t and types.get(t) == TensorProto.FLOAT]
        if not floats:
            continue
        m = _copy(model)
        target = m.graph.node[index]
        weighted = any(t in inits and _size(model, t) > 1 for t in floats)
        for t in floats:
            if t in inits:
                value = numpy_helper.to_array(next(i for i in m.graph.initializer if i.name == t))
                _replace_input(target, t, _add_init(m, value.astype(np.float16).astype(np.float32)))
            else:
                _replace_input(target, t, _round_fp16(m, t))
        for t in node.output:
            if t in outputs:
                _round_output(m, target, t)
        yield node, "fp16 inputs and weights" if weighted else "fp16 inputs", _sorted(m)


def int8_nodes(
    pre: onnx.ModelProto, qdq: onnx.ModelProto
) -> Iterator[tuple[onnx.NodeProto, str, bytes]]:
    """For each node the quantizer quantized: a copy of the pre-processed fp32 model `pre` with
    only that node's inputs quantized as in `qdq` (its weights dequantized from their int8
    values, its activations through the same QuantizeLinear/DequantizeLinear pair), and its
    output too where that is a quantized graph output."""
    produced = {o: n for n in qdq.graph.node for o in n.output}
    q_inits = {i.name: numpy_helper.to_array(i) for i in qdq.graph.initializer}
    by_name = {n.name: n for n in qdq.graph.node}
    for index, node in enumerate(pre.graph.node):
        q_node = by_name.get(node.name)
        if q_node is None or node.op_type in LAYOUT_OPS:
            continue
        changes = []
        for slot, q_input in enumerate(q_node.input):
            dq = produced.get(q_input)
            if dq is None or dq.op_type != "DequantizeLinear" or slot >= len(node.input):
                continue
            changes.append((slot, dq))
        graph_outputs = [
            (o, produced[o]) for o in node.output if o in produced and _is_output(qdq, o)
        ]
        graph_outputs = [(o, d) for o, d in graph_outputs if d.op_type == "DequantizeLinear"]
        if not changes and not graph_outputs:
            continue
        m = _copy(pre)
        target = m.graph.node[index]
        what = []
        for slot, dq in changes:
            if dq.input[0] in q_inits:  # a weight or bias: its int8 (int32) values, dequantized
                value = _dequantize(dq, q_inits)
                _replace_input(target, node.input[slot], _add_init(m, value), slot)
                bits = 8 * q_inits[dq.input[0]].itemsize
                what.append(f"weights int{bits}" if bits == 8 else f"bias int{bits}")
            else:
                ql = produced[dq.input[0]]
                name = _fake_quant(m, node.input[slot], ql, q_inits)
                _replace_input(target, node.input[slot], name, slot)
                what.append(_step(ql, q_inits, "input"))
        for o, dq in graph_outputs:
            ql = produced[dq.input[0]]
            _round_output(m, target, o, partial(_fake_quant, ql=ql, inits=q_inits))
            what.append(_step(ql, q_inits, "output"))
        yield node, "; ".join(dict.fromkeys(what)), _sorted(m)


def _step(ql: onnx.NodeProto, inits: dict[str, np.ndarray], role: str) -> str:
    scale = inits[ql.input[1]].astype(np.float64)
    zero = inits[ql.input[2]].astype(np.int64)
    info = np.iinfo(inits[ql.input[2]].dtype)
    low, high = (info.min - zero) * scale, (info.max - zero) * scale
    return (
        f"{role} {inits[ql.input[2]].dtype} in steps of {float(np.max(scale)):.3g} "
        f"over [{float(np.min(low)):.3g}, {float(np.max(high)):.3g}]"
    )


def _dequantize(dq: onnx.NodeProto, inits: dict[str, np.ndarray]) -> np.ndarray:
    q = inits[dq.input[0]].astype(np.float64)
    scale = inits[dq.input[1]].astype(np.float64)
    zero = inits[dq.input[2]].astype(np.float64) if len(dq.input) > 2 else np.zeros_like(scale)
    if scale.ndim == 1 and q.ndim > 1:  # per channel along `axis`
        axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
        shape = [1] * q.ndim
        shape[axis] = -1
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    return ((q - zero) * scale).astype(np.float32)


def _fake_quant(
    m: onnx.ModelProto, tensor: str, ql: onnx.NodeProto, inits: dict[str, np.ndarray]
) -> str:
    scale = _add_init(m, inits[ql.input[1]])
    zero = _add_init(m, inits[ql.input[2]])
    q, out = f"{tensor}__q{len(m.graph.node)}", f"{tensor}__dq{len(m.graph.node)}"
    m.graph.node.append(helper.make_node("QuantizeLinear", [tensor, scale, zero], [q]))
    m.graph.node.append(helper.make_node("DequantizeLinear", [q, scale, zero], [out]))
    return out


def _round_fp16(m: onnx.ModelProto, tensor: str) -> str:
    half, out = f"{tensor}__h{len(m.graph.node)}", f"{tensor}__f{len(m.graph.node)}"
    m.graph.node.append(helper.make_node("Cast", [tensor], [half], to=TensorProto.FLOAT16))
    m.graph.node.append(helper.make_node("Cast", [half], [out], to=TensorProto.FLOAT))
    return out


def _round_output(
    m: onnx.ModelProto,
    node: onnx.NodeProto,
    output: str,
    reduce: Callable[[onnx.ModelProto, str], str] = _round_fp16,
) -> None:
    """Reduce a graph output where `node` writes it: the node writes a new name, and the
    reduction writes the graph output's."""
    raw = f"{output}__raw"
    for i, o in enumerate(node.output):
        if o == output:
            node.output[i] = raw
    reduced = reduce(m, raw)
    m.graph.node.append(helper.make_node("Identity", [reduced], [output]))


def _replace_input(node: onnx.NodeProto, old: str, new: str, slot: int | None = None) -> None:
    for i, name in enumerate(node.input):
        if name == old and (slot is None or i == slot):
            node.input[i] = new


def _add_init(m: onnx.ModelProto, value: np.ndarray) -> str:
    name = f"__reduced_{len(m.graph.initializer)}"
    m.graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))
    return name


def _size(m: onnx.ModelProto, initializer: str) -> int:
    i = next(i for i in m.graph.initializer if i.name == initializer)
    return int(np.prod(i.dims))


def _is_output(m: onnx.ModelProto, name: str) -> bool:
    return any(o.name == name for o in m.graph.output)


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*g.input, *g.value_info, *g.output)}
    types.update({i.name: i.data_type for i in g.initializer})
    return types


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    return onnx.ModelProto.FromString(model.SerializeToString())


def _sorted(m: onnx.ModelProto) -> bytes:
    from onnxruntime.transformers.onnx_model import OnnxModel

    OnnxModel.graph_topological_sort(m.graph)
    return m.SerializeToString()
