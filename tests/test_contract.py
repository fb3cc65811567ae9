from __future__ import annotations

import json

import numpy as np
import pytest

from pneumo_onnx.engine.contract import CONTRACT_KEY, Contract, InputSpec, OutputSpec
from pneumo_onnx.engine.errors import ContractError
from pneumo_onnx.engine.intensity_spelling import parse_step
from pneumo_onnx.engine.repository.resolve import default_model_dir


@pytest.mark.parametrize(
    "spec",
    [
        InputSpec(height=224, width=200, channels=1, scaling="raw", resize_filter="bilinear"),
        InputSpec(color="bgr", scaling="caffe", resize_filter="tf-bilinear", resize_mode="pad"),
        InputSpec(scaling="custom", mean=(0.5,), std=(0.25, 0.5, 1), resize_mode="fit"),
        InputSpec(channels=3, color="grayscale", resize_mode="center-crop"),
    ],
    ids=["gray-raw", "caffe-tf-pad", "custom-fit", "gray-in-3-channels"],
)
def test_metadata_round_trip(spec: InputSpec) -> None:
    c = Contract(
        input=spec,
        output=OutputSpec(kind="softmax2", positive_index=1),
        threshold=0.3,
    )
    meta = c.to_metadata()
    assert json.loads(meta[CONTRACT_KEY])["schema"] == 2
    assert Contract.from_metadata(meta, "x", [None, 1, 2, 3], "y") == c


def test_schema_1_reads_with_its_meaning() -> None:
    """The shipped v1 model's contract (schema 1): Pillow decoding, stretched, RGB."""
    manifest = json.loads((default_model_dir() / "1" / "manifest.json").read_text())
    assert manifest["contract"]["schema"] == 1
    c = Contract.from_dict(manifest["contract"])
    assert (c.input.color, c.input.resize_mode, c.input.resize_filter) == (
        "rgb",
        "stretch",
        "bicubic",
    )
    assert (c.input.scaling, c.input.mean, c.input.std) == ("unit", None, None)
    gray = Contract.from_dict({**manifest["contract"], "input": {"channels": 1}})
    assert gray.input.color == "grayscale"
    with pytest.raises(ContractError, match="schema 1 has no input field 'resize_mode'"):
        Contract.from_dict({**manifest["contract"], "input": {"resize_mode": "pad"}})


@pytest.mark.parametrize(
    ("shape", "layout", "size", "channels"),
    [
        (["N", 128, 128, 3], "NHWC", (128, 128), 3),
        ([None, 1, 96, 64], "NCHW", (96, 64), 1),
        ([1, 3, 224, 224], "NCHW", (224, 224), 3),
    ],
    ids=["nhwc", "nchw-gray", "nchw-rgb"],
)
def test_plain_onnx_defaults_follow_the_graph(shape, layout, size, channels) -> None:
    c = Contract.from_metadata({}, "input_1", shape, "out")
    assert (c.input.layout, (c.input.height, c.input.width), c.input.channels) == (
        layout,
        size,
        channels,
    )
    assert (c.input.name, c.output.name, c.input.scaling, c.threshold) == (
        "input_1",
        "out",
        "unit",
        0.5,
    )


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ([None, 128, 128], "expected an image batch"),
        ([None, 128, 128, 5], "cannot tell where its 1 or 3 channels are"),
        ([None, None, None, 3], "dynamic height/width"),
    ],
    ids=["rank3", "five-channels", "dynamic-size"],
)
def test_plain_onnx_unusable_shapes(shape, message) -> None:
    with pytest.raises(ContractError, match=message):
        Contract.from_metadata({}, "x", shape, "y")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"input": InputSpec(channels=2)}, "channels must be 1 or 3"),
        ({"input": InputSpec(height=4)}, r"height must be an integer in \[8, 4096\]"),
        ({"input": InputSpec(scaling="percent")}, "scaling must be one of"),
        ({"input": InputSpec(resize_filter="magic")}, "resize filter must be one of"),
        ({"input": InputSpec(resize_mode="zoom")}, "resize mode must be one of"),
        (
            {"input": InputSpec(resize_mode="fit", resize_filter="tf-bilinear")},
            "resize mode 'fit' is PIL's ImageOps.fit: it takes a PIL filter",
        ),
        ({"input": InputSpec(color="cmyk")}, "input color must be one of"),
        ({"input": InputSpec(channels=1, color="rgb")}, "a 1-channel input is grayscale"),
        ({"input": InputSpec(scaling="custom")}, "scaling 'custom' needs a mean of 1 or 3"),
        (
            {"input": InputSpec(scaling="custom", mean=(0.5,) * 2, std=(1,))},
            "needs a mean of 1 or 3 numbers",
        ),
        (
            {"input": InputSpec(scaling="custom", mean=(0.5,), std=(0.0,))},
            "std values must be positive",
        ),
        (
            {"input": InputSpec(scaling="custom", mean=(float("nan"),), std=(1,))},
            "mean values must be finite numbers",
        ),
        ({"input": InputSpec(mean=(0.5,), std=(1,))}, "a mean and std go with scaling 'custom'"),
        ({"input": InputSpec(scaling="caffe")}, "scaling 'caffe' subtracts the ImageNet means"),
        (
            {"input": InputSpec(channels=1, scaling="torch")},
            "scaling 'torch' has 3 per-channel means: it needs a 3-channel input",
        ),
        ({"input": InputSpec(layout="HWC")}, "layout must be one of"),
        ({"output": OutputSpec(kind="softmax3")}, "output kind must be one of"),
        ({"output": OutputSpec(kind="sigmoid", positive_index=1)}, "positive_index must be 0"),
        ({"output": OutputSpec(kind="softmax2", positive_index=2)}, "must be 0 or 1"),
        ({"threshold": float("nan")}, "threshold must be a finite number"),
        ({"threshold": 1.5}, "threshold must be a finite number"),
        ({"positive_label": "NORMAL"}, "two different non-empty names"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_invalid_contracts_are_refused(kwargs, message) -> None:
    with pytest.raises(ContractError, match=message):
        Contract(**kwargs)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("not json", "is not JSON"),
        ("[1, 2]", "is not a JSON object"),
        ('{"schema": 99}', "schema 99 is not supported .this pneumo-onnx reads schemas 1, 2."),
        ('{"schema": 1, "input": {}}', "malformed"),
    ],
    ids=["not-json", "list", "future-schema", "missing-keys"],
)
def test_corrupt_metadata(raw, message) -> None:
    with pytest.raises(ContractError, match=message):
        Contract.from_metadata({CONTRACT_KEY: raw}, "x", [None, 8, 8, 3], "y")


def test_scores_and_labels() -> None:
    sigmoid = Contract()
    assert sigmoid.scores(np.array([[0.2], [0.9]])).tolist() == pytest.approx([0.2, 0.9])
    softmax = Contract(output=OutputSpec(kind="softmax2", positive_index=0))
    assert softmax.scores(np.array([[0.7, 0.3]])).tolist() == pytest.approx([0.7])
    with pytest.raises(ContractError, match="has 2 values per image"):
        sigmoid.scores(np.array([[0.5, 0.5]]))
    # A score exactly at the threshold is NORMAL, as in the original deployment guide (score > t).
    assert sigmoid.label(0.5) == "NORMAL"
    assert sigmoid.label(0.5000001) == "PNEUMONIA"
    assert sigmoid.label(0.4, threshold=0.3) == "PNEUMONIA"


def test_two_sigmoid_units_score_gives_the_argmax_label() -> None:
    """A Dense(2, sigmoid) head read by argmax: o_pos / (o_0 + o_1) > 0.5 exactly when the
    positive unit is the larger, even a float32 step apart; two saturated zeros are a tie."""
    two = Contract(output=OutputSpec(kind="sigmoid2", positive_index=1))
    rng = np.random.default_rng(0)
    outputs = rng.random((10_000, 2), dtype=np.float32)
    outputs[:100, 1] = np.nextafter(outputs[:100, 0], np.float32(2))  # one step above
    scores = two.scores(outputs)
    labels = np.array([two.label(float(s)) for s in scores])
    argmax = np.where(np.argmax(outputs, axis=1) == 1, "PNEUMONIA", "NORMAL")
    assert (labels == argmax).all()
    assert two.scores(np.array([[0.2, 0.6]])).tolist() == pytest.approx([0.75])
    assert two.scores(np.array([[0.0, 0.0]])).tolist() == [0.5]
    with pytest.raises(ContractError, match="positive_index must be 0 or 1"):
        Contract(output=OutputSpec(kind="sigmoid2", positive_index=2))


def test_pre_resize_steps_round_trip_in_schema_3_and_plain_contracts_stay_schema_2() -> None:
    steps = (parse_step("scale-abs:1.3"), parse_step("clahe:2.0:8x8"))
    stepped = Contract(input=InputSpec(color="grayscale", pre_resize=steps))
    data = stepped.to_dict()
    assert data["schema"] == 3
    assert data["input"]["pre_resize"] == [
        {"name": "scale-abs", "alpha": 1.3, "beta": 0.0, "fma": True},
        {"name": "clahe", "clip_limit": 2.0, "tile_grid": [8, 8]},
    ]
    assert Contract.from_metadata(stepped.to_metadata(), "x", [None, 8, 8, 3], "y") == stepped
    assert (
        "grayscale, convertScaleAbs" in stepped.input.describe()
        or "1.3" in stepped.input.describe()
    )
    plain = Contract().to_dict()
    assert plain["schema"] == 2 and "pre_resize" not in plain["input"]  # older engines read it
    two = Contract(output=OutputSpec(kind="sigmoid2", positive_index=1)).to_dict()
    assert two["schema"] == 3


def test_bad_pre_resize_steps_are_contract_problems() -> None:
    data = Contract(input=InputSpec(color="grayscale")).to_dict()
    data["schema"] = 3
    data["input"]["pre_resize"] = [{"name": "clahe", "clip_limit": -1}, {"name": "sharpen"}]
    with pytest.raises(ContractError) as e:
        Contract.from_dict(data)
    assert "step 1: invalid pre-resize step 'clahe'" in e.value.message
    assert "step 2: pre-resize step name must be one of" in e.value.message
    with pytest.raises(ContractError, match=r"'clahe' works on a grey image .* not 'rgb'"):
        Contract(input=InputSpec(pre_resize=(parse_step("clahe"),)))
