"""The reference PneumoniaCNN architectures (Keras 3), built with a fixed seed.

Both take 128x128x3 float in [0, 1] (scaling happens outside the model, as in the original
deployment guide) and end in global average pooling -> dropout -> one sigmoid unit =
P(PNEUMONIA), so a class activation map can be computed from the last conv block without
TensorFlow. v1 (`build_model`): four full-resolution-first conv blocks, about 0.5 GFLOP per
image. v2 (`build_model_v2`): a strided stem, so that few channels ever run at 64x64 and none at
128x128, about a quarter of v1's FLOPs and over 3x its onnxruntime throughput.

    python models/training/pneumonia_cnn.py --out build/pneumonia_cnn.keras [--v2]
"""

from __future__ import annotations

import argparse
import os
from typing import Any

INPUT_SHAPE = (128, 128, 3)
FILTERS = (32, 64, 128, 256)
# v2: (filters, stride, max-pool after) per 3x3 conv block; the last one is the CAM's source.
BLOCKS_V2 = ((16, 2, False), (32, 2, False), (48, 1, True), (96, 1, False), (128, 1, False))
SEED = 20180222  # Kermany et al., Cell, published 2018-02-22


def build_model(seed: int = SEED, input_shape: tuple[int, int, int] = INPUT_SHAPE) -> Any:
    """A fresh, deterministically initialised PneumoniaCNN (keras.Model)."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(seed)
    inputs = keras.Input(shape=input_shape, name="image")
    x = inputs
    for i, filters in enumerate(FILTERS, start=1):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"conv{i}")(x)
        x = layers.BatchNormalization(name=f"bn{i}")(x)
        x = layers.ReLU(name="last_conv" if i == len(FILTERS) else f"relu{i}")(x)
        if i < len(FILTERS):
            x = layers.MaxPooling2D(name=f"pool{i}")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dropout(0.3, name="dropout")(x)
    outputs = layers.Dense(1, activation="sigmoid", name="pneumonia")(x)
    return keras.Model(inputs, outputs, name="PneumoniaCNN")


def build_model_v2(seed: int = SEED, input_shape: tuple[int, int, int] = INPUT_SHAPE) -> Any:
    """A fresh, deterministically initialised PneumoniaCNN v2 (keras.Model).

    Plain 3x3 convolutions (no bias) + batch norm + ReLU: the ops tf2onnx converts cleanly and
    onnxruntime runs fastest per FLOP on a CPU. Two stride-2 blocks take 128 px to 32 px, one
    max pooling to 16 px; the last block's 16x16 map feeds GAP -> Dropout -> Dense(1, sigmoid).
    """
    import keras
    from keras import layers

    keras.utils.set_random_seed(seed)
    inputs = keras.Input(shape=input_shape, name="image")
    x = inputs
    for i, (filters, stride, pool) in enumerate(BLOCKS_V2, start=1):
        x = layers.Conv2D(
            filters, 3, strides=stride, padding="same", use_bias=False, name=f"conv{i}"
        )(x)
        x = layers.BatchNormalization(name=f"bn{i}")(x)
        x = layers.ReLU(name="last_conv" if i == len(BLOCKS_V2) else f"relu{i}")(x)
        if pool:
            x = layers.MaxPooling2D(name=f"pool{i}")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dropout(0.3, name="dropout")(x)
    outputs = layers.Dense(1, activation="sigmoid", name="pneumonia")(x)
    return keras.Model(inputs, outputs, name="PneumoniaCNNv2")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="where to save the .keras file")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--v2", action="store_true", help="build v2 instead of v1")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    model = (build_model_v2 if args.v2 else build_model)(args.seed)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    model.save(args.out)
    print(
        f"saved {model.name} ({model.count_params():,} parameters, seed {args.seed}) to {args.out}"
    )


if __name__ == "__main__":
    main()
