"""convert/precision.py on tiny graphs built with onnx.helper: which prefixes a fallback tries,
which build it keeps, and what one node at reduced precision computes."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from pneumo_onnx.convert.precision import (
    Scorer,
    fallback,
    fp16_nodes,
    grey_level_sensitivity,
    int8_nodes,
    mac_share,
    prefixes,
)
from pneumo_onnx.engine.contract import Contract, InputSpec
from pneumo_onnx.engine.runtime.session import create_session

WIDTH, LAYERS = 4, 8


def mlp(offset: float = 0.0) -> onnx.ModelProto:
    """x[N, 4] -> Transpose (identity) -> (MatMul -> Relu) x 8 -> MatMul -> Add offset ->
    Sigmoid -> score[N, 1]: 11 arithmetic nodes, 2 of them in a quarter."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Transpose", ["x"], ["t"], name="transpose", perm=[0, 1])]
    inits, last = [], "t"
    for i in range(LAYERS):
        w = (rng.standard_normal((WIDTH, WIDTH)) / 2 + np.eye(WIDTH)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes += [
            helper.make_node("MatMul", [last, f"w{i}"], [f"m{i}"], name=f"matmul{i}"),
            helper.make_node("Relu", [f"m{i}"], [f"r{i}"], name=f"relu{i}"),
        ]
        last = f"r{i}"
    head = rng.standard_normal((WIDTH, 1)).astype(np.float32) / 3
    inits += [
        numpy_helper.from_array(head, "head"),
        numpy_helper.from_array(np.array([offset - 1.0], np.float32), "offset"),
    ]
    nodes += [
        helper.make_node("MatMul", [last, "head"], ["logit"], name="head"),
        helper.make_node("Add", ["logit", "offset"], ["shifted"], name="shift"),
        helper.make_node("Sigmoid", ["shifted"], ["score"], name="sigmoid"),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", WIDTH])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N", 1])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def inputs() -> np.ndarray:
    return np.random.default_rng(1).uniform(0, 1, (40, WIDTH)).astype(np.float32)


def scorer(model: onnx.ModelProto) -> Scorer:
    return Scorer.of(model.SerializeToString(), Contract(), inputs())


def numpy_mlp(model: onnx.ModelProto, x: np.ndarray, first: np.ndarray | None = None) -> np.ndarray:
    """The mlp in float64; `first` replaces the first MatMul's output."""
    w = {i.name: numpy_helper.to_array(i).astype(np.float64) for i in model.graph.initializer}
    h = x.astype(np.float64)
    for i in range(LAYERS):
        h = np.maximum(first if (i == 0 and first is not None) else h @ w[f"w{i}"], 0)
    return 1 / (1 + np.exp(-(h @ w["head"] + w["offset"])))


def test_prefixes_count_arithmetic_nodes_and_take_what_follows_them() -> None:
    """11 arithmetic nodes (Relu goes with its MatMul, Transpose with what follows it): a
    quarter is 2, so two prefixes, each ending before the next arithmetic node. A node the
    variant keeps in fp32 anyway (`skip`) is not counted."""
    assert prefixes(mlp()) == [
        ["transpose", "matmul0", "relu0"],
        ["transpose", "matmul0", "relu0", "matmul1", "relu1"],
    ]
    assert prefixes(mlp(), skip=["matmul0"])[0] == [
        "transpose",
        "matmul0",
        "relu0",
        "matmul1",
        "relu1",
    ]


def test_mac_share_is_the_share_of_weighted_multiply_adds() -> None:
    """Eight 4x4 MatMuls and a 4x1 head: 132 multiply-adds per row, 16 in each MatMul."""
    assert mac_share(mlp(), []) == 0.0
    assert mac_share(mlp(), ["transpose", "matmul0", "relu0"]) == pytest.approx(16 / 132)
    assert mac_share(mlp(), [n.name for n in mlp().graph.node]) == pytest.approx(1.0)


def conv_pair() -> onnx.ModelProto:
    """image[N, 3, 16, 16] -> Conv 3x3 stride 2 to 8 channels (8x8) -> Conv 1x1 to 4 (8x8)."""
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "a"], ["y"], name="wide", strides=[2, 2], pads=[1] * 4),
            helper.make_node("Conv", ["y", "b"], ["z"], name="point"),
        ],
        "convs",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 4, 8, 8])],
        [
            numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "a"),
            numpy_helper.from_array(rng.standard_normal((4, 8, 1, 1)).astype(np.float32), "b"),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_mac_share_of_a_convolution_counts_its_output_positions() -> None:
    """8x8 outputs x (8 x 3 x 3 x 3) = 13824 against 8x8 x (4 x 8) = 2048."""
    assert mac_share(conv_pair(), ["wide"]) == pytest.approx(13824 / (13824 + 2048))


def test_fallback_stops_at_the_first_build_within_target() -> None:
    """Each prefix kept in fp32 brings the build's scores nearer (its offset shrinks): the
    first within the target is kept and no later one is built."""
    s = scorer(mlp())
    tries = prefixes(mlp())
    offsets = {0: 0.5, 3: 0.02, 5: 0.0}
    built: list[int] = []

    def build(keep: list[str]) -> bytes:
        built.append(len(keep))
        return mlp(offsets[len(keep)]).SerializeToString()

    data, figures = fallback(build, tries, s, target=0.01)
    assert built == [0, 3]
    assert figures["fp32_nodes"] == tries[0] and data == mlp(0.02).SerializeToString()
    first, kept = figures["attempts"]
    assert first["p99_score_diff"] > 0.05 and kept["p99_score_diff"] <= 0.01
    assert kept["fp32_nodes"] == 3 and kept["last_fp32_node"] == "relu0"
    assert kept["p99_score_diff"] <= kept["max_score_diff"]


def test_fallback_keeps_the_most_faithful_build_when_none_is_within_target() -> None:
    s = scorer(mlp())
    tries = prefixes(mlp())
    offsets = {0: 0.3, 3: 0.1, 5: 0.2}
    data, figures = fallback(
        lambda keep: mlp(offsets[len(keep)]).SerializeToString(), tries, s, target=1e-6
    )
    assert [a["fp32_nodes"] for a in figures["attempts"]] == [0, 3, 5]
    assert figures["fp32_nodes"] == tries[0] and data == mlp(0.1).SerializeToString()
    assert figures["target_p99_score_diff"] == 1e-6 and figures["calibration_images"] == 40


def test_fp16_node_rounds_that_node_s_inputs_and_weights_only() -> None:
    model, x = mlp(), inputs()
    reduced = {node.name: (what, data) for node, what, data in fp16_nodes(model)}
    assert set(reduced) == {
        *(f"matmul{i}" for i in range(LAYERS)),
        *(f"relu{i}" for i in range(LAYERS)),
        "head",
        "shift",
        "sigmoid",
    }
    assert reduced["matmul0"][0] == "fp16 inputs and weights"
    assert reduced["relu0"][0] == "fp16 inputs"
    w0 = numpy_helper.to_array(model.graph.initializer[0])
    half = x.astype(np.float16).astype(np.float64) @ w0.astype(np.float16).astype(np.float64)
    got = create_session(reduced["matmul0"][1]).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, numpy_mlp(model, x, first=half), rtol=1e-5)
    assert np.abs(got - numpy_mlp(model, x)).max() > 1e-6  # the rounding shows


def test_int8_node_quantizes_that_node_s_inputs_as_the_quantized_model_does(tmp_path) -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    model, x = mlp(), inputs()
    fp32, out = tmp_path / "m.onnx", tmp_path / "q.onnx"
    onnx.save(model, fp32)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"x": x[i : i + 10]} for i in range(0, len(x), 10)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    quantize_static(
        str(fp32),
        str(out),
        Reader(),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )
    qdq = onnx.load(out)
    reduced = {node.name: (what, data) for node, what, data in int8_nodes(model, qdq)}
    assert {"matmul0", "matmul7", "head"} <= set(reduced)
    what, data = reduced["matmul0"]
    assert what.startswith("input uint8 in steps of ") and what.endswith("; weights int8")

    inits = {i.name: numpy_helper.to_array(i) for i in qdq.graph.initializer}
    by_output = {o: n for n in qdq.graph.node for o in n.output}
    matmul = next(n for n in qdq.graph.node if n.name == "matmul0")
    quantize = by_output[by_output[matmul.input[0]].input[0]]
    scale, zero = inits[quantize.input[1]], inits[quantize.input[2]].astype(np.int64)
    q = np.clip(np.rint(x / scale) + zero, 0, 255)
    dq_w = by_output[matmul.input[1]]
    w = (inits[dq_w.input[0]].astype(np.float64)) * inits[dq_w.input[1]]
    first = ((q - zero) * scale) @ w
    got = create_session(data).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, numpy_mlp(model, x, first=first), rtol=1e-5)


def pooled(gain: float) -> onnx.ModelProto:
    """image[N, 8, 8, 3] -> (mean over all pixels - 0.5) x gain -> Sigmoid -> score[N, 1]."""
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["image"], ["mean"], axes=[1, 2, 3], keepdims=0),
            helper.make_node("Unsqueeze", ["mean", "axis"], ["column"]),
            helper.make_node("Sub", ["column", "half"], ["centred"]),
            helper.make_node("Mul", ["centred", "gain"], ["logit"]),
            helper.make_node("Sigmoid", ["logit"], ["score"]),
        ],
        "pooled",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 8, 8, 3])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N", 1])],
        [
            numpy_helper.from_array(np.array([1], np.int64), "axis"),
            numpy_helper.from_array(np.array(gain, np.float32), "gain"),
            numpy_helper.from_array(np.array(0.5, np.float32), "half"),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize(
    ("gain", "low", "high"), [(0.0, 0.0, 0.0), (2000.0, 2e-3, 0.3)], ids=["flat", "steep"]
)
def test_half_a_grey_level_moves_a_model_as_much_as_its_gain(
    gain: float, low: float, high: float
) -> None:
    """Pixel noise of +-0.5/255 averaged over 192 values: std 8e-5, x 2000 = 0.16 in the logit
    of a score near 0.5, about 0.04 in the score; none at all through a flat model."""
    contract = Contract(input=InputSpec(height=8, width=8))
    x = np.random.default_rng(2).uniform(0.49, 0.51, (16, 8, 8, 3)).astype(np.float32)
    sensitivity = grey_level_sensitivity(Scorer.of(pooled(gain).SerializeToString(), contract, x))
    assert low <= sensitivity <= high
