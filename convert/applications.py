"""keras.applications bases inside a model: which one, and whether its input preprocessing is
in the model. A base trained with `preprocess_input` outside the model carries no trace of its
input range in the file; converting it with a guessed range gives a model that runs and is
wrong, so `pneumo convert` asks for the preset instead of guessing (`input_scaling`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pneumo_onnx.engine.errors import UsageError
from pneumo_onnx.engine.presets import PRESETS
from pneumo_onnx.engine.scaling import SCALINGS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Family:
    name: str
    preset: str  # the preset stating its preprocess_input
    signature: tuple[str, ...]  # each pattern matches the full name of some layer
    excludes: tuple[str, ...] = ()  # no layer may match these

    @property
    def scaling(self) -> str:
        return PRESETS[self.preset].fields["scaling"]

    def matches(self, names: set[str]) -> bool:
        def found(pattern: str) -> bool:
            return any(re.fullmatch(pattern, n) for n in names)

        return all(map(found, self.signature)) and not any(map(found, self.excludes))


# Layer names keras.applications gives its models (Keras 3 and tf.keras 2 alike); first match.
FAMILIES = (
    Family("VGG19", "vgg19", ("block1_conv1", "block5_conv4"), ("block1_conv1_bn",)),
    Family("VGG16", "vgg16", ("block1_conv1", "block5_conv3", "block5_pool"), ("block1_conv1_bn",)),
    Family("Xception", "xception", ("block1_conv1_bn", "block2_sepconv1")),
    Family("ResNetV2", "resnet-v2", ("conv2_block1_preact_bn", "post_bn")),
    Family("ResNet50/101/152", "resnet50", ("conv1_bn", "conv2_block1_0_conv")),
    Family("DenseNet", "densenet", ("pool2_conv", "conv2_block1_concat")),
    Family("MobileNet", "mobilenet", ("conv_dw_1", "conv_pw_1")),
    Family("MobileNetV2", "mobilenet-v2", ("Conv1", "expanded_conv_depthwise", "block_1_expand")),
    Family("MobileNetV3", "mobilenet-v3", (r"expanded_conv(_\d+)?_squeeze_excite_conv",)),
    Family("InceptionV3", "inception-v3", ("mixed0", "mixed10")),
    Family("InceptionResNetV2", "inception-resnet-v2", ("mixed_5b", "conv_7b")),
    Family("NASNet", "nasnet", ("stem_conv1", r"normal_concat_\d+")),
    Family("EfficientNet", "efficientnet", ("stem_conv", "top_conv", r"block1a_\w+")),
    Family("ConvNeXt", "convnext", (r"convnext_\w+_stem",)),
)
# Operations that preprocess pixels before the first convolution: Rescaling/Normalization layers,
# and preprocess_input called on the model's input (Keras 3 ops, tf.keras 2 TFOpLambda layers).
_PREPROCESSING = {
    "Rescaling",
    "Normalization",
    "Lambda",
    "TFOpLambda",
    "SlicingOpLambda",
    "TrueDivide",
    "Divide",
    "Subtract",
    "Add",
    "Multiply",
    "GetItem",
    "Stack",
    "Flip",
}


def find_family(model: Any) -> Family | None:
    """The keras.applications base whose layer names the model holds, if any."""
    names = {str(getattr(op, "name", "")) for op in walk(model)}
    return next((f for f in FAMILIES if f.matches(names)), None)


def preprocessing_inside(model: Any) -> list[str]:
    """Names of the preprocessing operations before the model's first convolution."""
    found: list[str] = []
    for op in walk(model):
        kind = type(op).__name__
        if "Conv" in kind:
            return found
        if kind in _PREPROCESSING:
            found.append(str(getattr(op, "name", kind)))
    return found


def input_scaling(name: str, model: Any, graph: bool, stated: str | None, detected: str) -> str:
    """The scaling to convert with. A keras.applications base with no preprocessing before it
    and no stated scaling stops the conversion with the preset to pass; where the user stated a
    scaling, say which was assumed when it is not the base's own. `graph`: the model lists its
    operations in call order (functional, sequential), so 'before' can be told."""
    family = find_family(model) if model is not None else None
    if family is None:
        return stated or detected
    inside = preprocessing_inside(model) if graph else []
    own = "raw" if inside else family.scaling
    if stated is not None:
        if stated != own:
            where = (
                f"with preprocessing inside the model before it ({', '.join(inside)}): it "
                "takes 0-255"
                if inside
                else f"whose preprocess_input gives {SCALINGS[own].what} (--preset {family.preset})"
            )
            log.warning(
                "%s holds a keras.applications %s base %s; converting with the scaling you "
                "gave: %s, %s",
                name,
                family.name,
                where,
                stated,
                SCALINGS[stated].what,
            )
        return stated
    if inside:
        log.info("%s: preprocessing inside the model (%s): input 0-255", name, ", ".join(inside))
        return "raw"
    raise UsageError(
        f"{name} holds a keras.applications {family.name} base with no preprocessing layer "
        f"before it, so the file does not say what its input range is. If you trained with "
        f"its preprocess_input ({SCALINGS[family.scaling].what}), convert with --preset "
        f"{family.preset}; if you scaled images yourself, say how with --input-scaling "
        f"{'|'.join(s for s in SCALINGS if s != 'custom')} or --input-mean/--input-std"
    )


def walk(model: Any) -> Iterator[Any]:
    """Every layer and operation in call order, nested models flattened (Keras 3 functional
    models list preprocess_input's ops in `operations`, not in `layers`)."""
    ops = getattr(model, "operations", None)
    for op in ops if ops is not None else getattr(model, "layers", []):
        if getattr(op, "layers", None):
            yield from walk(op)
        else:
            yield op
