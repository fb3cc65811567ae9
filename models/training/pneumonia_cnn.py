"""The reference PneumoniaCNN architecture (Keras 3), built with a fixed seed.

Input 128x128x3 float in [0, 1] (scaling happens outside the model, as in the original
deployment guide); four conv blocks with batch norm; global average pooling right before the
classifier, so a class activation map can be computed from the last conv block without
TensorFlow; one sigmoid unit = P(PNEUMONIA). About 0.5 GFLOP per image.

    python models/training/pneumonia_cnn.py --out build/pneumonia_cnn.keras
"""

from __future__ import annotations

import argparse
import os

INPUT_SHAPE = (128, 128, 3)
FILTERS = (32, 64, 128, 256)
SEED = 20180222  # Kermany et al., Cell, published 2018-02-22


def build_model(seed: int = SEED, input_shape: tuple[int, int, int] = INPUT_SHAPE):
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="where to save the .keras file")
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    model = build_model(args.seed)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    model.save(args.out)
    print(
        f"saved {model.name} ({model.count_params():,} parameters, seed {args.seed}) to {args.out}"
    )


if __name__ == "__main__":
    main()
