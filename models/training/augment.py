"""The tf.data input pipeline of model v2, with the augmentation that stands in for other sites.

External pediatric X-rays differ from this train split mostly in exposure, contrast, processing
(sharpening, blur), noise and framing, so the augmentation draws each of those per image:
a small affine (rotation, zoom, aspect, shift), gamma, a random monotone tone curve, contrast,
brightness, a blur/sharpen mix and Gaussian noise. It acts on one gray channel and repeats it,
so the three channels stay equal as in real grayscale X-rays. Every draw comes from stateless
ops seeded by a per-batch seed from tf.data.Dataset.random: the same run gives the same
batches, even with parallel map calls.
Augmentation lives only here, never in the model.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Augment:
    """Ranges of the per-image random draws (uniform; log-uniform for factors)."""

    rotation_deg: float = 8.0
    zoom: tuple[float, float] = (0.9, 1.15)  # > 1 zooms in (crops)
    aspect: float = 0.06  # relative stretch of one axis against the other
    shift: float = 0.06  # fraction of the side
    gamma: tuple[float, float] = (0.7, 1.45)
    tone: float = 0.6  # log-slope range of a random monotone 4-segment tone curve; 0: off
    contrast: tuple[float, float] = (0.7, 1.4)
    brightness: float = 0.1
    blur: tuple[float, float] = (-0.6, 1.0)  # weight of a Gaussian blur; < 0 sharpens
    blur_sigma: float = 1.2  # px at 128 x 128
    noise: float = 0.025  # max standard deviation

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


NONE = Augment(
    rotation_deg=0.0,
    zoom=(1.0, 1.0),
    aspect=0.0,
    shift=0.0,
    gamma=(1.0, 1.0),
    contrast=(1.0, 1.0),
    brightness=0.0,
    blur=(0.0, 0.0),
    tone=0.0,
    noise=0.0,
)
TONE_SEGMENTS = 4


def gaussian_kernel(sigma: float) -> np.ndarray:
    """A normalised 2-D Gaussian, radius ceil(2 sigma), as a (k, k, 1, 1) depthwise kernel."""
    radius = max(1, math.ceil(2 * sigma))
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    g = np.exp(-(t**2) / (2 * sigma**2))
    k = np.outer(g, g)
    return (k / k.sum()).astype(np.float32)[:, :, None, None]


def augment_batch(images: Any, seed: Any, aug: Augment) -> Any:
    """Random site-like variation of a float [0, 1] NHWC batch (tf tensors; `seed`: int64[2])."""
    import tensorflow as tf

    gray = tf.reduce_mean(images, axis=-1, keepdims=True)
    n = tf.shape(gray)[0]
    size = tf.cast(tf.shape(gray)[1], tf.float32)
    seeds = tf.random.experimental.stateless_split(seed, num=11)

    def uniform(i: int, low: float, high: float) -> Any:
        return tf.random.stateless_uniform([n], seeds[i], low, high)

    def log_uniform(i: int, bounds: tuple[float, float]) -> Any:
        return tf.exp(uniform(i, math.log(bounds[0]), math.log(bounds[1])))

    # Affine, as the output->input map ImageProjectiveTransformV3 expects, about the centre.
    angle = uniform(0, -aug.rotation_deg, aug.rotation_deg) * (math.pi / 180)
    zoom = log_uniform(1, aug.zoom)
    stretch = tf.exp(uniform(2, -aug.aspect, aug.aspect))
    sx, sy = 1 / (zoom * stretch), stretch / zoom  # input pixels per output pixel
    tx, ty = (uniform(i, -aug.shift, aug.shift) * size for i in (3, 4))
    cos, sin, c = tf.cos(angle), tf.sin(angle), (size - 1) / 2
    a0, a1, b0, b1 = cos * sx, -sin * sy, sin * sx, cos * sy
    transform = tf.stack(
        [
            a0,
            a1,
            c - a0 * c - a1 * c + tx,
            b0,
            b1,
            c - b0 * c - b1 * c + ty,
            tf.zeros([n]),
            tf.zeros([n]),
        ],
        axis=1,
    )
    x = tf.raw_ops.ImageProjectiveTransformV3(
        images=gray,
        transforms=transform,
        output_shape=tf.shape(gray)[1:3],
        fill_value=0.0,  # black, like collimated borders
        interpolation="BILINEAR",
        fill_mode="CONSTANT",
    )

    def per_image(v: Any) -> Any:
        return v[:, None, None, None]

    # Exposure: gamma, then contrast about the image mean, then brightness.
    x = tf.pow(tf.clip_by_value(x, 1e-6, 1.0), per_image(log_uniform(5, aug.gamma)))
    if aug.tone > 0:
        x = _tone_curve(x, seeds[10], aug.tone)
    mean = tf.reduce_mean(x, axis=[1, 2, 3], keepdims=True)
    x = mean + (x - mean) * per_image(log_uniform(6, aug.contrast))
    x = x + per_image(uniform(7, -aug.brightness, aug.brightness))
    # Processing: blend towards a blurred copy (blur) or away from it (unsharp masking).
    kernel = tf.constant(gaussian_kernel(aug.blur_sigma))
    blurred = tf.nn.depthwise_conv2d(x, kernel, [1, 1, 1, 1], "SAME")
    x = x + per_image(uniform(8, *aug.blur)) * (blurred - x)
    sd = per_image(uniform(9, 0.0, aug.noise))
    x = x + sd * tf.random.stateless_normal(tf.shape(x), seeds[0] + 17)
    return tf.tile(tf.clip_by_value(x, 0.0, 1.0), [1, 1, 1, 3])


def _tone_curve(x: Any, seed: Any, strength: float) -> Any:
    """A random monotone piecewise-linear map of [0, 1] onto itself per image: slopes
    exp(U(-strength, strength)), normalised; local contrast changes as other sites' processing
    look-up tables make them (histogram equalisation, vendor curves)."""
    import tensorflow as tf

    n = tf.shape(x)[0]
    k = TONE_SEGMENTS
    slopes = tf.exp(tf.random.stateless_uniform([n, k], seed, -strength, strength))
    rise = slopes / tf.reduce_sum(slopes, axis=1, keepdims=True)  # per segment, sums to 1
    knots = tf.concat([tf.zeros([n, 1]), tf.cumsum(rise, axis=1)[:, :-1]], axis=1)
    t = tf.clip_by_value(x, 0.0, 1.0) * k
    segment = tf.minimum(tf.cast(tf.floor(t), tf.int32), k - 1)
    base = tf.gather(knots, segment, batch_dims=1)
    slope = tf.gather(rise, segment, batch_dims=1)
    return base + (t - tf.cast(segment, tf.float32)) * slope


def make_dataset(
    x: np.ndarray,
    y: np.ndarray,
    batch: int,
    seed: int,
    aug: Augment | None,
    label_dtype: Any = np.float32,
) -> Any:
    """Float32 [0, 1] batches of a uint8 NHWC array; shuffled and augmented when `aug` is given."""
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((x, y.astype(label_dtype)[:, None]))
    if aug is not None:
        ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch).map(lambda im, lab: (tf.cast(im, tf.float32) / 255.0, lab))
    if aug is not None:
        # One fresh int64 pair per batch, different each epoch, reproducible from `seed`.
        seeds = tf.data.Dataset.random(seed=seed + 1, rerandomize_each_iteration=True).batch(2)
        ds = tf.data.Dataset.zip(ds, seeds).map(
            lambda b, s: (augment_batch(b[0], s, aug), b[1]),
            num_parallel_calls=2,
            deterministic=True,
        )
    return ds.prefetch(2)
