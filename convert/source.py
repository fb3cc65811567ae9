"""Load a Keras / TensorFlow model from disk into one callable form the converter understands.

Accepts `.keras` (Keras 3, or Keras 2.12+ through tf_keras), `.h5` (Keras 3, or legacy
tf.keras 2.x through tf_keras), and SavedModel folders (Keras 2 `model.save(dir)`, Keras 3
`model.export(dir)`, plain `tf.saved_model.save`). Sequential, functional and subclassed models
alike. Broken files are recognised first (source_checks: Git LFS pointers, truncated zips,
SavedModels without their weights).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from pneumo_onnx.convert.source_checks import check_file, check_savedmodel, keras_version
from pneumo_onnx.engine.errors import ContractError, ModelLoadError, UsageError, first_line

log = logging.getLogger(__name__)

_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_ZIP_MAGIC = b"PK\x03\x04"


@dataclass
class LoadedSource:
    """A model ready to convert: one image tensor in, one tensor out, inference mode."""

    name: str
    # keras | keras-tf_keras | h5 | h5-tf_keras | savedmodel | savedmodel-tf_keras | object
    format: str
    sha256: str
    call: Callable[[tf.Tensor], tf.Tensor]
    input_shape: tuple[int | None, ...]  # (batch, H, W, C) as declared; None = dynamic
    model: Any = None  # the Keras model object when there is one (for layer inspection)
    path: Path | None = None  # where it was loaded from (None for in-memory models)
    keep_alive: Any = None  # a loaded SavedModel whose variables `call` captures

    def predict(self, x: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """Reference outputs from the original model (training=False), in float32."""
        outs = [
            np.asarray(self.call(tf.constant(x[i : i + batch_size])), dtype=np.float32)
            for i in range(0, len(x), batch_size)
        ]
        return np.concatenate(outs)


def load_source(path: str | os.PathLike, custom_objects: str | None = None) -> LoadedSource:
    """Load a model file or SavedModel folder; every failure is a typed, specific error."""
    p = Path(path)
    if not p.exists():
        raise UsageError(f"{path}: no such model file or SavedModel folder")
    objects = _custom_objects(custom_objects) if custom_objects else None
    if p.is_dir():
        check_savedmodel(p)
        return _load_savedmodel(p)
    try:
        with p.open("rb") as f:
            head = f.read(8)
        if head:
            check_file(p)
    except OSError as e:
        raise ModelLoadError(f"cannot read {p.name}: {e.strerror or e}") from e
    if not head:
        raise ModelLoadError(f"{p.name} is empty (0 bytes): expected a .keras or .h5 model")
    suffix = p.suffix.lower()
    if suffix == ".keras" or (suffix not in (".h5", ".hdf5") and head.startswith(_ZIP_MAGIC)):
        return _load_keras3(p, objects)
    if suffix in (".h5", ".hdf5") or head.startswith(_HDF5_MAGIC):
        return _load_h5(p, objects)
    raise ModelLoadError(
        f"{p.name} is not a Keras model: expected a .keras file, an .h5 file or a SavedModel "
        f"folder (file starts {head!r})"
    )


def from_keras_model(model: Any, name: str = "<in-memory model>") -> LoadedSource:
    """Wrap a Keras model object already in memory (Python API users, tests)."""
    return LoadedSource(
        name=name,
        format="object",
        sha256="",
        call=_keras_call(model),
        input_shape=_keras_input_shape(model, name),
        model=model,
    )


def sha256_path(p: Path) -> str:
    """sha256 of a file, or of a folder's files (relative path + content, sorted)."""
    h = hashlib.sha256()
    files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    for f in files:
        if p.is_dir():
            h.update(f.relative_to(p).as_posix().encode() + b"\0")
        with f.open("rb") as fh:
            for chunk in iter(functools.partial(fh.read, 1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def _load_keras3(p: Path, objects: dict[str, Any] | None) -> LoadedSource:
    import keras

    try:
        model = keras.saving.load_model(p, custom_objects=objects, compile=False)
        return _wrap_keras(model, p, "keras")
    except Exception as e:  # Keras raises anything from zipfile, h5py, json or user code
        keras3_error = e
    written_by = keras_version(p) or "an unknown Keras"
    if not written_by.startswith("2."):
        raise ModelLoadError(
            f"Keras cannot load {p.name}: {first_line(keras3_error)}{_hint(keras3_error)}"
        ) from keras3_error
    # Keras 2.12-2.15 (and tf_keras) wrote .keras files too; Keras 3 cannot rebuild some of
    # their configs (DepthwiseConv2D's `groups`, ...): tf_keras reads what Keras 2 wrote.
    return _with_tf_keras(
        p,
        objects,
        "keras-tf_keras",
        keras3_error,
        lambda e2: (
            f"cannot load {p.name}: it was written by Keras {written_by} (its metadata.json); "
            f"Keras 3 said: {_short(keras3_error)}; tf_keras (Keras 2) said: {_short(e2)}. "
            "Where the model was trained, save it with Keras 2 as a SavedModel folder "
            "(model.save('model_dir')) or as HDF5 (model.save('model.h5')) and convert that"
            f"{_hint(keras3_error) or _hint(e2)}"
        ),
    )


def _with_tf_keras(
    p: Path,
    objects: dict[str, Any] | None,
    fmt: str,
    keras3_error: BaseException,
    refusal: Callable[[BaseException], str],
) -> LoadedSource:
    """Load with tf_keras (Keras 2) a file Keras 3 refused with `keras3_error`; if tf_keras
    cannot either, the error is `refusal(tf_keras' error)`."""
    try:
        import tf_keras

        model = tf_keras.models.load_model(p, custom_objects=objects, compile=False)
    except Exception as e2:  # as Keras 3: anything
        raise ModelLoadError(refusal(e2)) from e2
    log.info("%s loaded with tf_keras (Keras 2): Keras 3 said: %s", p.name, keras3_error)
    return _wrap_keras(model, p, fmt)


def _short(e: BaseException, limit: int = 160) -> str:
    """An error's first line, cut short: Keras repeats the whole model config in some."""
    line = first_line(e).rstrip(".")
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _hint(e: BaseException) -> str:
    text = str(e)
    if "Could not locate" in text or "Unknown layer" in text or "custom_objects" in text:
        return " (pass --custom-objects FILE.py, a Python file that defines those classes)"
    return ""


def _load_h5(p: Path, objects: dict[str, Any] | None) -> LoadedSource:
    import keras

    try:
        model = keras.saving.load_model(p, custom_objects=objects, compile=False)
        return _wrap_keras(model, p, "h5")
    except Exception as e3:  # Keras 3 refuses some legacy tf.keras 2.x files: try tf_keras
        keras3_error = e3
    return _with_tf_keras(
        p,
        objects,
        "h5-tf_keras",
        keras3_error,
        lambda e2: (
            f"cannot load {p.name} as an .h5 model: Keras 3 said: {first_line(keras3_error)}; "
            f"tf_keras (Keras 2) said: {first_line(e2)}"
        ),
    )


def _load_savedmodel(p: Path) -> LoadedSource:
    if (p / "keras_metadata.pb").is_file():  # saved by tf.keras 2.x: layers can be inspected
        try:
            import tf_keras

            return _wrap_keras(
                tf_keras.models.load_model(p, compile=False), p, "savedmodel-tf_keras"
            )
        except Exception as e:  # fall through to the plain signature, which needs no Keras
            log.info("tf_keras cannot load %s (%s); using its serving signature", p.name, e)
    try:
        loaded = tf.saved_model.load(str(p))
    except Exception as e:
        raise ModelLoadError(f"TensorFlow cannot load SavedModel {p.name}: {first_line(e)}") from e
    sig = getattr(loaded, "signatures", {}).get("serving_default")
    if sig is None:
        raise ModelLoadError(f"SavedModel {p.name} has no 'serving_default' signature")
    inputs = sig.structured_input_signature[1]
    outputs = sig.structured_outputs
    if len(inputs) != 1 or len(outputs) != 1:
        raise ContractError(
            f"SavedModel {p.name} has {len(inputs)} inputs and {len(outputs)} outputs: "
            "expected one image input and one score output"
        )
    (in_name, in_spec), out_key = next(iter(inputs.items())), next(iter(outputs))

    def call(x: tf.Tensor) -> tf.Tensor:
        return sig(**{in_name: x})[out_key]

    return LoadedSource(
        name=p.name,
        format="savedmodel",
        sha256=sha256_path(p),
        call=call,
        input_shape=tuple(in_spec.shape.as_list()),
        keep_alive=loaded,
        path=p,
    )


def _wrap_keras(model: Any, p: Path, fmt: str) -> LoadedSource:
    return LoadedSource(
        name=p.name,
        format=fmt,
        sha256=sha256_path(p),
        call=_keras_call(model),
        input_shape=_keras_input_shape(model, p.name),
        model=model,
        path=p,
    )


def _keras_call(model: Any) -> Callable[[tf.Tensor], tf.Tensor]:
    def call(x: tf.Tensor) -> tf.Tensor:
        out = model(x, training=False)
        if isinstance(out, dict):
            out = list(out.values())
        if isinstance(out, list | tuple):
            if len(out) != 1:
                raise ContractError(f"the model has {len(out)} outputs: expected one score output")
            out = out[0]
        return out

    return call


def _keras_input_shape(model: Any, name: str) -> tuple[int | None, ...]:
    inputs = None
    with contextlib.suppress(AttributeError, ValueError):  # subclassed: no symbolic inputs
        inputs = model.inputs
    if inputs:
        if len(inputs) != 1:
            raise ContractError(f"{name} has {len(inputs)} inputs: expected one image input")
        return tuple(inputs[0].shape)
    build = getattr(model, "get_build_config", lambda: None)() or {}
    shape = build.get("input_shape")
    if shape is None:
        raise ContractError(
            f"{name} is a subclassed model that was never built: cannot tell its input shape"
        )
    return tuple(shape)


def _custom_objects(path: str) -> dict[str, Any]:
    """Import a user's Python file so its registered Keras classes exist; use its
    `custom_objects` dict if it defines one."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"--custom-objects {p.name}: no such Python file")
    spec = importlib.util.spec_from_file_location(f"pneumo_custom_{p.stem}", p)
    if spec is None or spec.loader is None:
        raise UsageError(f"--custom-objects {p.name} is not an importable Python file")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # the user's code: report what it raised
        raise UsageError(f"importing --custom-objects {p.name} failed: {first_line(e)}") from e
    objects = getattr(module, "custom_objects", {})
    if not isinstance(objects, dict):
        raise UsageError(f"{p.name}: `custom_objects` must be a dict of name -> class")
    return objects
