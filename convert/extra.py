"""Import the conversion stage's heavy dependencies, or say exactly which extra is missing."""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import sys
from collections.abc import Iterator

from pneumo_onnx.engine.errors import MissingExtraError


def require(purpose: str, modules: tuple[str, ...]) -> None:
    """Import `modules` or raise MissingExtraError naming the `convert` extra.

    TensorFlow is started with its C++ start-up chatter (oneDNN, CUDA probing on a CPU machine)
    silenced: those lines are not errors and drown the ones that are. TF_CPP_MIN_LOG_LEVEL set
    by the user is respected.
    """
    first_tf = "tensorflow" not in sys.modules
    for name in modules:
        try:
            if name in ("tensorflow", "tf2onnx") and first_tf:
                _start_tensorflow_quietly()
                first_tf = False
            importlib.import_module(name)
        except ImportError as e:
            raise MissingExtraError("convert", purpose, name) from e


def _start_tensorflow_quietly() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    quiet = os.environ["TF_CPP_MIN_LOG_LEVEL"] >= "2"
    with quiet_stderr() if quiet else contextlib.nullcontext():
        import tensorflow as tf

        tf.constant(0.0).numpy()  # device discovery happens here: keep it inside the silence
    logging.getLogger("tensorflow").setLevel(logging.ERROR)


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """Silence C/C++ writes to file descriptor 2 (Python exceptions still propagate)."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real stderr (embedded interpreters): nothing to silence
        yield
        return
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
