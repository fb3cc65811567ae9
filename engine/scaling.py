"""Pixel values 0-255 -> a model's input: the scalings a contract can name, each in the order
and float32 arithmetic of the code that defines it (Keras' rescale, the keras.applications
preprocess_input modes, a mean and std of your own)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Scaling:
    """Pixel values 0-255 -> the model's input, in the order and float32 arithmetic of the code
    that defines it: x = pixel * multiply / divide, then (x - mean) / std per channel, in the
    tensor's channel order (steps that change nothing are skipped)."""

    multiply: float = 1.0
    divide: float = 1.0
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    what: str = ""

    def range(self) -> tuple[np.ndarray, np.ndarray]:
        """The lowest and highest input value per channel (pixels 0 and 255)."""
        mean, std = np.asarray(self.mean), np.asarray(self.std)
        return (0.0 - mean) / std, (255.0 * self.multiply / self.divide - mean) / std


IMAGENET_CAFFE_MEAN = (103.939, 116.779, 123.68)  # B, G, R: keras.applications 'caffe' mode
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # R, G, B on [0, 1]: 'torch' mode
IMAGENET_STD = (0.229, 0.224, 0.225)
SCALINGS: dict[str, Scaling] = {
    # ImageDataGenerator(rescale=1/255) multiplies; preprocess_input and Teachable Machine divide.
    "unit": Scaling(multiply=1 / 255, what="[0, 1]: x * (1/255), as rescale=1/255 outside"),
    "raw": Scaling(what="[0, 255]: the model rescales inside (e.g. a Rescaling layer)"),
    "symmetric": Scaling(
        divide=127.5, mean=(1.0,), what="[-1, 1]: x / 127.5 - 1 (preprocess_input 'tf' mode)"
    ),
    "caffe": Scaling(
        mean=IMAGENET_CAFFE_MEAN, what="BGR minus the ImageNet means (preprocess_input 'caffe')"
    ),
    "torch": Scaling(
        divide=255.0,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        what="(x / 255 - ImageNet mean) / std (preprocess_input 'torch' mode)",
    ),
    "custom": Scaling(divide=255.0, what="(x / 255 - mean) / std, the mean and std you give"),
}
