"""Presets: each states contract fields that make a valid contract; flags override; presets may
combine but not contradict."""

from __future__ import annotations

import numpy as np
import pytest

from pneumo_onnx.engine.contract import Contract, InputSpec
from pneumo_onnx.engine.errors import UsageError
from pneumo_onnx.engine.presets import PRESETS, pipeline_fields, preset_help


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_makes_a_valid_contract(name: str) -> None:
    fields = pipeline_fields([name], {})
    caffe = {"color": "bgr"} if PRESETS[name].fields.get("scaling") == "caffe" else {}
    assert fields == {**PRESETS[name].fields, **caffe}
    Contract(input=InputSpec(**fields))  # raises ContractError when invalid
    assert name in preset_help()


def test_presets_combine_and_flags_override() -> None:
    fields = pipeline_fields(["keras-image-dataset", "resnet50"], {"resize_mode": "pad"})
    assert fields == {
        "resize_filter": "tf-bilinear",
        "resize_mode": "pad",
        "color": "bgr",
        "scaling": "caffe",
    }
    flags = {"scaling": "unit", "color": None}
    assert pipeline_fields(["teachable-machine"], flags)["scaling"] == "unit"


def test_caffe_flips_the_order_the_loader_gives() -> None:
    """preprocess_input('caffe') reverses the channels it is handed: after cv2.imread (BGR) the
    model sees RGB; after cvtColor(BGR2RGB), or a PIL/Keras loader, BGR."""
    bgr_in = pipeline_fields(["opencv", "vgg16"], {})
    assert bgr_in["color"] == "rgb" and bgr_in["scaling"] == "custom"  # B, G, R means on R, G, B
    assert np.allclose(np.array(bgr_in["mean"]) * 255, [103.939, 116.779, 123.68])
    Contract(input=InputSpec(**bgr_in))
    assert pipeline_fields(["opencv-rgb", "vgg16"], {})["color"] == "bgr"
    assert pipeline_fields(["keras-load-img", "resnet50"], {})["color"] == "bgr"
    assert pipeline_fields(["opencv-gray", "vgg16"], {})["color"] == "grayscale"
    assert pipeline_fields(["opencv", "vgg16"], {"color": "bgr"})["color"] == "bgr"


def test_mean_and_std_make_a_custom_scaling_and_caffe_means_bgr() -> None:
    fields = pipeline_fields([], {"mean": (0.5,), "std": (0.25,)})
    assert fields == {"mean": (0.5,), "std": (0.25,), "scaling": "custom"}
    assert pipeline_fields([], {"scaling": "caffe"}) == {"scaling": "caffe", "color": "bgr"}
    assert pipeline_fields([], {"scaling": "caffe", "color": "rgb"})["color"] == "rgb"


@pytest.mark.parametrize(
    ("presets", "flags", "message"),
    [
        (["teachable-machine", "keras-load-img"], {}, "disagree on resize_filter"),
        (["vgg16", "mobilenet"], {}, "--preset vgg16 and --preset mobilenet disagree on scaling"),
        (["imagenet"], {}, "unknown preset 'imagenet': choose from keras-load-img"),
        ([], {"threshold": 0.3}, "not a pipeline field: threshold"),
    ],
    ids=["filters", "scalings", "unknown", "not-a-field"],
)
def test_preset_errors(presets: list[str], flags: dict[str, object], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        pipeline_fields(presets, flags)
