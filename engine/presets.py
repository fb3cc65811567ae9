"""Presets: the input pipelines people actually trained with, each as the contract fields it sets.

`pneumo convert --preset NAME` (repeatable: a loader preset and a `preprocess_input` preset
together) fills these fields; an explicit flag (`--resize-filter`, `--resize-mode`, `--color`,
`--input-scaling`, `--input-mean/--input-std`) overrides a preset's field. One table: the CLI's
choices, the conversion's keras.applications advice and the README all come from it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pneumo_onnx.engine.errors import UsageError
from pneumo_onnx.engine.scaling import IMAGENET_CAFFE_MEAN

FLIPPED = {"rgb": "bgr", "bgr": "rgb"}  # grayscale has no order to flip
# The InputSpec fields a preset or a flag may set.
PIPELINE_FIELDS = (
    "resize_filter",
    "resize_mode",
    "color",
    "scaling",
    "mean",
    "std",
    "pre_resize",
)


@dataclass(frozen=True)
class Preset:
    what: str  # the user's own code this stands for
    fields: Mapping[str, str]


_CAFFE = Preset(
    "their keras.applications preprocess_input, 'caffe' mode: flips the channel order it is "
    "given (RGB->BGR), minus the ImageNet means, no scaling",
    {"scaling": "caffe"},
)
_TF = Preset(
    "their keras.applications preprocess_input, 'tf' mode: x / 127.5 - 1",
    {"scaling": "symmetric"},
)
_TORCH = Preset(
    "its keras.applications preprocess_input, 'torch' mode: x / 255, minus the ImageNet mean, "
    "over its std",
    {"color": "rgb", "scaling": "torch"},
)
_INSIDE = Preset(
    "keras.applications models with their preprocessing inside: they take 0-255",
    {"scaling": "raw"},
)
PRESETS: dict[str, Preset] = {
    "keras-load-img": Preset(
        "keras.utils.load_img(target_size=...) and ImageDataGenerator.flow_from_directory: PIL "
        "nearest, stretched",
        {"resize_filter": "nearest", "resize_mode": "stretch"},
    ),
    "keras-image-dataset": Preset(
        "keras.utils.image_dataset_from_directory: TensorFlow's decoding, tf.image.resize "
        "bilinear without antialiasing, stretched",
        {"resize_filter": "tf-bilinear", "resize_mode": "stretch"},
    ),
    # cv2.imread applies EXIF orientation and gives BGR (IMREAD_COLOR) or libjpeg's grayscale;
    # the interpolation is cv2.resize's default, INTER_LINEAR (--resize-filter cv2-area or
    # cv2-nearest for the others); the scaling stays a separate field (default x / 255).
    "opencv": Preset(
        "cv2.imread(path) (BGR), cv2.resize(img, (W, H)): INTER_LINEAR, stretched",
        {"resize_filter": "cv2-linear", "resize_mode": "stretch", "color": "bgr"},
    ),
    "opencv-rgb": Preset(
        "cv2.imread(path), cv2.cvtColor(img, cv2.COLOR_BGR2RGB), cv2.resize(img, (W, H))",
        {"resize_filter": "cv2-linear", "resize_mode": "stretch", "color": "rgb"},
    ),
    "opencv-gray": Preset(
        "cv2.imread(path, cv2.IMREAD_GRAYSCALE), cv2.resize(img, (W, H))",
        {"resize_filter": "cv2-linear", "resize_mode": "stretch", "color": "grayscale"},
    ),
    "teachable-machine": Preset(
        "Teachable Machine's Keras export: ImageOps.fit(image, size, LANCZOS), x / 127.5 - 1",
        {"resize_filter": "lanczos", "resize_mode": "fit", "color": "rgb", "scaling": "symmetric"},
    ),
    "vgg16": _CAFFE,
    "vgg19": _CAFFE,
    "resnet50": _CAFFE,  # keras.applications.resnet50 and resnet (ResNet50/101/152)
    "mobilenet": _TF,
    "mobilenet-v2": _TF,
    "resnet-v2": _TF,
    "inception-v3": _TF,
    "inception-resnet-v2": _TF,
    "xception": _TF,
    "nasnet": _TF,
    "densenet": _TORCH,
    "efficientnet": _INSIDE,  # and EfficientNetV2
    "convnext": _INSIDE,
    "mobilenet-v3": _INSIDE,
}


def pipeline_fields(presets: Sequence[str], flags: Mapping[str, Any]) -> dict[str, Any]:
    """The pipeline fields the presets and flags state (None flags state nothing). Presets may
    not contradict each other; a flag overrides a preset."""
    fields: dict[str, Any] = {}
    source: dict[str, str] = {}
    for name in presets:
        preset = PRESETS.get(name)
        if preset is None:
            raise UsageError(f"unknown preset {name!r}: choose from {', '.join(PRESETS)}")
        for key, value in preset.fields.items():
            if key in fields and fields[key] != value:
                raise UsageError(
                    f"--preset {source[key]} and --preset {name} disagree on {key} "
                    f"({fields[key]} vs {value}): pick one, or state {key} with its own flag"
                )
            fields[key], source[key] = value, name
    unknown = set(flags) - set(PIPELINE_FIELDS)
    if unknown:
        raise UsageError(f"not a pipeline field: {sorted(unknown)[0]}")
    fields.update({k: v for k, v in flags.items() if v is not None})
    if flags.get("scaling") is None and (flags.get("mean") or flags.get("std")):
        fields["scaling"] = "custom"  # --input-mean/--input-std say it
    if fields.get("scaling") == "caffe" and flags.get("color") is None:
        # 'caffe' mode flips whatever order it is handed: PIL and Keras loaders give RGB, so
        # the model sees BGR; cv2.imread gives BGR, so the model sees RGB (an explicit --color
        # states what the model sees and is kept as it is).
        fields["color"] = FLIPPED.get(fields.get("color", "rgb"), fields.get("color", "rgb"))
        if fields["color"] == "rgb":  # the B, G, R means land on R, G, B: 'custom' says so
            fields["scaling"] = "custom"
            fields["mean"] = tuple(m / 255 for m in IMAGENET_CAFFE_MEAN)
            fields["std"] = (1 / 255,) * 3
    return fields


def preset_help() -> str:
    """The presets, those with the same fields named together."""
    groups: dict[str, list[str]] = {}
    for name, preset in PRESETS.items():
        groups.setdefault(preset.what, []).append(name)
    return "; ".join(f"{', '.join(names)}: {what}" for what, names in groups.items())
