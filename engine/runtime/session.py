"""onnxruntime sessions with the options this project runs them with, and THE one call into
onnxruntime (`run`): every error it raises becomes an InferenceError here, on CPU and on CUDA
(where inputs and outputs go through IOBinding)."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from pneumo_onnx.engine.errors import InferenceError, ModelLoadError, UsageError, first_line
from pneumo_onnx.engine.runtime.choices import DEVICES, PROVIDERS

log = logging.getLogger(__name__)

CUDA = PROVIDERS["cuda"]


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
    model: str | os.PathLike[str] | bytes,
    device: str = "cpu",
    options: ort.SessionOptions | None = None,
) -> ort.InferenceSession:
    """Load a model on the asked device; fail (never silently fall back) if it cannot run there.

    Error messages name the model file by its name only: onnxruntime's own text carries the
    full path, which must not reach a server's client.
    """
    if device not in DEVICES:
        raise UsageError(f"device must be one of {DEVICES}, got {device!r}")
    wanted = PROVIDERS[device]
    available = ort.get_available_providers()
    if wanted not in available:
        raise UsageError(
            f"device '{device}' needs onnxruntime's {wanted}, but this onnxruntime offers "
            f"{available}: install the 'gpu' extra (see README, CUDA)"
        )
    if device == "cuda":
        load_cuda_libraries()
    providers = [wanted, "CPUExecutionProvider"] if device == "cuda" else [wanted]
    path = None if isinstance(model, bytes) else os.fspath(model)
    name = "<bytes>" if path is None else Path(path).name
    try:
        session = ort.InferenceSession(
            model if path is None else path,
            sess_options=options or session_options(),
            providers=providers,
        )
    except Exception as e:  # onnxruntime raises its own untyped Fail/InvalidGraph exceptions
        text = first_line(e)
        if path is not None:
            text = text.replace(str(Path(path).resolve()), name).replace(path, name)
        raise ModelLoadError(f"onnxruntime cannot load {name}: {text}") from e
    actual = session.get_providers()[0]
    if actual != wanted:
        raise UsageError(f"asked for {wanted} but onnxruntime runs {name} on {actual}")
    log.debug("loaded %s on %s", name, actual)
    return session


def load_cuda_libraries() -> None:
    """Load the CUDA and cuDNN libraries that pip wheels provide (`onnxruntime-gpu[cuda,cudnn]`,
    onnxruntime >= 1.21), so that a CUDA session finds them without LD_LIBRARY_PATH; libraries
    already loaded stay as they are; a no-op on older onnxruntime."""
    if hasattr(ort, "preload_dlls"):
        ort.preload_dlls()


def run(
    session: ort.InferenceSession,
    x: np.ndarray,
    outputs: Sequence[str] | None = None,
    iobinding: bool | None = None,
) -> list[np.ndarray]:
    """The named outputs (default: the first, the score) for input batch `x`.

    Only the outputs asked for are fetched: a model may carry a feature-map output for
    heatmaps, which onnxruntime then neither copies nor returns. With IOBinding (the default on
    CUDA) the batch is bound once and the outputs are allocated on the session's device,
    avoiding the extra host copies of `session.run`. Every onnxruntime error, on either path,
    becomes an InferenceError.
    """
    name = session.get_inputs()[0].name
    fetch = list(outputs) if outputs else [session.get_outputs()[0].name]
    on_cuda = session.get_providers()[0] == CUDA
    try:
        if not (on_cuda if iobinding is None else iobinding):
            return list(session.run(fetch, {name: x}))
        binding = session.io_binding()
        binding.bind_cpu_input(name, np.ascontiguousarray(x, dtype=np.float32))
        for output in fetch:
            binding.bind_output(output, "cuda" if on_cuda else "cpu")
        session.run_with_iobinding(binding)
        return [np.asarray(a) for a in binding.copy_outputs_to_cpu()]
    except Exception as e:  # onnxruntime's InvalidArgument/Fail carry no common base
        raise InferenceError(f"onnxruntime cannot run the model: {first_line(e)}") from e


def run_batched(session: ort.InferenceSession, x: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """The first output (the score) for `x`, run in chunks of `batch_size`."""
    outs = [run(session, x[i : i + batch_size])[0] for i in range(0, len(x), batch_size)]
    return np.concatenate(outs) if outs else np.zeros((0, 1), np.float32)
