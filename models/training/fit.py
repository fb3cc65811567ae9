"""One training run of the v2 recipe: fixed-length cosine schedule, label smoothing, AdamW.

The run has no early stopping of its own: it trains for `epochs` on a learning rate that
decays to zero, so its last epoch is its converged one, and the epoch count is a choice made
once on the grouped cross-validation curves (the validation AUC of every epoch is recorded
for that, computed exactly with engine.runtime.metrics, never used to pick weights inside a run).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from models.training.augment import Augment, make_dataset
from pneumo_onnx.engine.runtime.metrics import roc_auc


@dataclass(frozen=True)
class Recipe:
    """Everything a run depends on besides the data and the seed."""

    epochs: int = 20
    batch_size: int = 32
    learning_rate: float = 2e-3
    warmup_epochs: int = 1
    weight_decay: float = 0.02  # AdamW, decoupled; not on batch-norm parameters or biases
    label_smoothing: float = 0.05
    augment: Augment = field(default_factory=Augment)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def predict(model: Any, x: np.ndarray, batch: int = 256) -> np.ndarray:
    """P(PNEUMONIA) of uint8 NHWC images, inference mode, as float64."""
    out = [
        np.asarray(model(x[i : i + batch].astype(np.float32) / 255.0, training=False))
        for i in range(0, len(x), batch)
    ]
    return np.concatenate(out).ravel().astype(np.float64)


def auc_callback(x: np.ndarray, y: np.ndarray, log: Callable[[str], None]) -> Any:
    """A Keras callback recording the exact validation ROC AUC after every epoch (`.aucs`)."""
    import keras

    class ValidationAUC(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.aucs: list[float] = []
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            self.aucs.append(roc_auc(y, predict(self.model, x)))
            loss = (logs or {}).get("loss", float("nan"))
            log(
                f"epoch {epoch + 1}: loss {loss:.4f}, val AUC {self.aucs[-1]:.4f}, "
                f"{time.perf_counter() - self.start:.0f} s"
            )

    return ValidationAUC()


def train(
    build: Callable[[int], Any],
    recipe: Recipe,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray | None,
    y_val: np.ndarray | None,
    seed: int,
    log: Callable[[str], None] = print,
) -> tuple[Any, dict[str, Any]]:
    """A trained model (batch-norm statistics still those of augmented batches) and its
    history: loss and, when validation data is given, exact AUC per epoch."""
    import keras
    import tensorflow as tf

    tf.config.experimental.enable_op_determinism()  # same seed, same weights
    keras.utils.set_random_seed(seed)
    model = build(seed)
    steps = int(np.ceil(len(x_train) / recipe.batch_size))
    warmup = recipe.warmup_epochs * steps
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=recipe.learning_rate / 10,
        decay_steps=max(1, recipe.epochs * steps - warmup),
        warmup_target=recipe.learning_rate,
        warmup_steps=warmup,
    )
    optimizer = keras.optimizers.AdamW(learning_rate=schedule, weight_decay=recipe.weight_decay)
    optimizer.exclude_from_weight_decay(var_names=["gamma", "beta", "bias"])
    loss = keras.losses.BinaryCrossentropy(label_smoothing=recipe.label_smoothing)
    model.compile(optimizer, loss)
    callbacks = []
    if x_val is not None and y_val is not None:
        callbacks.append(auc_callback(x_val, y_val, log))
    data = make_dataset(x_train, y_train, recipe.batch_size, seed, recipe.augment)
    start = time.perf_counter()
    fitted = model.fit(data, epochs=recipe.epochs, callbacks=callbacks, shuffle=False, verbose=0)
    history: dict[str, Any] = {
        "loss": [float(v) for v in fitted.history["loss"]],
        "train_seconds": round(time.perf_counter() - start, 1),
    }
    if callbacks:
        history["val_auc"] = callbacks[0].aucs
    return model, history
