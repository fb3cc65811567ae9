"""Model-only rows that need TensorFlow or LiteRT, run in their own process so that
TensorFlow's threads and memory never share a process with the onnxruntime rows.

    python -m benchmarks.tf_rows INPUT.npy --batches 1,8,32,128 --threads N
        [--warmup 2] [--repeats 5] [--tflite NAME=FILE ...]

Prints one JSON line: {"rows": {name: {batch: row}}, "skipped": {name: reason}}.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.environment import KERAS_MODEL
from benchmarks.timing import measure


def keras_rows(x: np.ndarray, batches: list[int], threads: int, warmup: int, repeats: int) -> dict:
    """`model.predict` (what the seed code calls) and a direct `model(x)` call."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    import keras

    model = keras.saving.load_model(KERAS_MODEL, compile=False)
    rows: dict[str, dict[int, Any]] = {"keras-predict": {}, "keras-call": {}}
    for b in batches:
        xb = x[:b]
        rows["keras-predict"][b] = measure(
            lambda xb=xb: model.predict(xb, batch_size=len(xb), verbose=0), b, warmup, repeats
        )
        tensor = tf.constant(xb)
        rows["keras-call"][b] = measure(
            lambda t=tensor: model(t, training=False).numpy(), b, warmup, repeats
        )
    return rows


def tflite_rows(
    files: dict[str, Path], x: np.ndarray, batches: list[int], threads: int, warmup: int, repeats
) -> dict:
    """LiteRT interpreters (XNNPACK delegate, as shipped) resized to each batch."""
    from ai_edge_litert.interpreter import Interpreter

    from pneumo_onnx.convert.extra import quiet_stderr

    rows: dict[str, dict[int, Any]] = {}
    for name, path in files.items():
        rows[name] = {}
        for b in batches:
            with quiet_stderr():
                interp = Interpreter(model_path=str(path), num_threads=threads)
                inp = interp.get_input_details()[0]
                interp.resize_tensor_input(inp["index"], [b, *x.shape[1:]], strict=True)
                interp.allocate_tensors()
            out = interp.get_output_details()[0]["index"]
            xb = np.ascontiguousarray(x[:b])

            def run(
                interp: Any = interp, index: int = inp["index"], xb: np.ndarray = xb, out: int = out
            ) -> Any:
                interp.set_tensor(index, xb)
                interp.invoke()
                return interp.get_tensor(out)

            rows[name][b] = measure(run, b, warmup, repeats)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("input", type=Path)
    parser.add_argument("--batches", required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tflite", action="append", default=[], metavar="NAME=FILE")
    args = parser.parse_args()
    x = np.load(args.input)
    batches = [int(b) for b in args.batches.split(",")]
    files = {k: Path(v) for k, _, v in (t.partition("=") for t in args.tflite)}
    report: dict[str, Any] = {"rows": {}, "skipped": {}}
    report["rows"].update(keras_rows(x, batches, args.threads, args.warmup, args.repeats))
    if files:
        report["rows"].update(
            tflite_rows(files, x, batches, args.threads, args.warmup, args.repeats)
        )
    print(json.dumps(report))


if __name__ == "__main__":
    main()
