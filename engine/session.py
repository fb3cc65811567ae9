"""onnxruntime sessions with the options this project runs them with."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import onnxruntime as ort

from engine.errors import InferenceError, ModelLoadError, UsageError, first_line

log = logging.getLogger(__name__)

DEVICES = ("cpu", "cuda")
_PROVIDER = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


def session_options(threads: int | None = None, spinning: bool = False) -> ort.SessionOptions:
    """Tuned CPU options: all graph optimizations, one intra-op pool sized to the cores.

    Spinning is off by default: a server's idle threads must not burn the cores that decode
    images; batch jobs that keep ORT busy back-to-back may turn it on.
    """
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads or os.cpu_count() or 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    opts.log_severity_level = 3
    return opts


def create_session(
    model: str | os.PathLike | bytes,
    device: str = "cpu",
    options: ort.SessionOptions | None = None,
) -> ort.InferenceSession:
    """Load a model on the asked device; fail (never silently fall back) if it cannot run there."""
    if device not in DEVICES:
        raise UsageError(f"device must be one of {DEVICES}, got {device!r}")
    wanted = _PROVIDER[device]
    available = ort.get_available_providers()
    if wanted not in available:
        raise UsageError(
            f"device '{device}' needs onnxruntime's {wanted}, but this onnxruntime offers "
            f"{available}: install the 'gpu' extra (see README, CUDA)"
        )
    providers = [wanted, "CPUExecutionProvider"] if device == "cuda" else [wanted]
    name = Path(model).name if isinstance(model, str | os.PathLike) else "<bytes>"
    try:
        session = ort.InferenceSession(
            model if isinstance(model, bytes) else os.fspath(model),
            sess_options=options or session_options(),
            providers=providers,
        )
    except Exception as e:  # onnxruntime raises its own untyped Fail/InvalidGraph exceptions
        raise ModelLoadError(f"onnxruntime cannot load {name}: {first_line(e)}") from e
    actual = session.get_providers()[0]
    if actual != wanted:
        raise UsageError(f"asked for {wanted} but onnxruntime runs {name} on {actual}")
    log.debug("loaded %s on %s", name, actual)
    return session


def run_batched(session: ort.InferenceSession, x: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Run the session's input through its first output (the score) in chunks of `batch_size`.

    Only that output is fetched: a model may carry a feature-map output for heatmaps
    (engine/cam.py), which onnxruntime then neither copies nor returns.
    """
    name = session.get_inputs()[0].name
    fetch = [session.get_outputs()[0].name]
    outs = []
    for i in range(0, len(x), batch_size):
        try:
            outs.append(session.run(fetch, {name: x[i : i + batch_size]})[0])
        except Exception as e:  # onnxruntime's InvalidArgument/Fail carry no common base
            raise InferenceError(f"onnxruntime cannot run the model: {first_line(e)}") from e
    return np.concatenate(outs) if outs else np.zeros((0, 1), np.float32)
