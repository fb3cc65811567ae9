"""How close model-only inference gets to the CPU's FP32 peak.

The model's cost is counted from the ONNX graph (Conv, Gemm and MatMul multiply-accumulates x
2; activations, pooling and adds are ignored: they are a few percent and not FMA work). The
peak is given twice: derived from the CPU (cores x FP32 FLOP/cycle x clock, the FLOP/cycle an
assumption stated with the figure) and measured with a large float32 matmul on all cores.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np


def model_flops(path: Path, batch: int = 1) -> dict[str, Any]:
    """FLOPs per image of an NHWC/NCHW float model: 2 x MACs of Conv, Gemm and MatMul."""
    import onnx
    from onnx import numpy_helper, shape_inference

    model = onnx.load(str(path))
    inp = model.graph.input[0]
    for d in inp.type.tensor_type.shape.dim[:1]:  # pin the dynamic batch so shapes infer
        d.ClearField("dim_param")
        d.dim_value = batch
    model = shape_inference.infer_shapes(model, strict_mode=True)
    shapes: dict[str, list[int]] = {}
    for vi in [*model.graph.value_info, *model.graph.input, *model.graph.output]:
        shapes[vi.name] = [d.dim_value for d in vi.type.tensor_type.shape.dim]
    for init in model.graph.initializer:
        shapes[init.name] = list(numpy_helper.to_array(init).shape)
    macs: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type == "Conv":
            w = shapes[node.input[1]]  # (M, C/group, kH, kW)
            out = shapes[node.output[0]]  # (N, M, oH, oW)
            n = int(np.prod(out)) * int(np.prod(w[1:]))
        elif node.op_type in ("Gemm", "MatMul"):
            a, out = shapes[node.input[0]], shapes[node.output[0]]
            n = int(np.prod(out)) * a[-1]
        else:
            continue
        macs[node.op_type] = macs.get(node.op_type, 0) + n
    total = 2 * sum(macs.values()) // batch
    return {
        "flops_per_image": total,
        "gflops_per_image": round(total / 1e9, 4),
        "macs_by_op": {k: v // batch for k, v in macs.items()},
        "counted": "2 x MACs of Conv, Gemm, MatMul (from the ONNX graph)",
    }


def flops_per_cycle(cpu: dict[str, Any]) -> tuple[int, str]:
    """FP32 FLOP per cycle per core, with the assumption spelled out."""
    flags = set(cpu.get("flags", []))
    vendor, family = cpu.get("vendor", ""), cpu.get("family")
    if "avx512f" in flags and vendor == "AuthenticAMD" and family == 25:
        return 32, "AMD Zen 4 (family 25 with AVX-512): 2 FMA pipes x 256 bit = 2x8 FP32 FMA"
    if "avx512f" in flags and vendor == "AuthenticAMD":
        return 64, "AMD Zen 5 or later with AVX-512: 2 FMA pipes x 512 bit"
    if "avx512f" in flags:
        return 64, "Intel AVX-512, assuming 2 FMA units x 512 bit (1-unit parts have half)"
    if "fma" in flags and "avx2" in flags:
        return 32, "AVX2 + FMA: 2 FMA pipes x 256 bit"
    return 8, "no FMA/AVX2 flags: SSE, 2 x 128-bit mul+add assumed"


def theoretical_peak(cpu: dict[str, Any], threads: int) -> dict[str, Any]:
    """cores x FLOP/cycle x the clock /proc/cpuinfo reports (base or current, not boost)."""
    per_cycle, why = flops_per_cycle(cpu)
    cores = min(threads, cpu.get("physical_cores") or threads)
    ghz = (cpu.get("mhz") or 0) / 1000
    return {
        "gflops": round(cores * per_cycle * ghz, 1) if ghz else None,
        "cores": cores,
        "flop_per_cycle_per_core": per_cycle,
        "ghz": round(ghz, 3),
        "assumption": f"{why}; clock from /proc/cpuinfo 'cpu MHz' (a VM reports its nominal "
        "clock; turbo would raise the real peak)",
    }


def numpy_peak(n: int = 2048, repeats: int = 10) -> dict[str, Any]:
    """Best sgemm GFLOP/s of numpy's BLAS on an n x n float32 matmul, all its threads."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    a @ b  # warm-up: thread pool start, page faults
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return {
        "gflops": round(2 * n**3 / best / 1e9, 1),
        "method": f"numpy float32 matmul {n}x{n}, best of {repeats} (BLAS threads: "
        f"{os.environ.get('OPENBLAS_NUM_THREADS', 'default = all cores')})",
    }


def onnxruntime_peak(threads: int, n: int = 2048, repeats: int = 10) -> dict[str, Any]:
    """Best GFLOP/s of onnxruntime's own sgemm (MLAS, the kernels its Conv runs on) on an
    n x n float32 MatMul graph, `threads` intra-op threads with spinning."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from pneumo_onnx.engine.runtime.session import session_options

    rng = np.random.default_rng(0)
    b = numpy_helper.from_array(rng.standard_normal((n, n), dtype=np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])],
        "sgemm",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [n, n])],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])],
        [b],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    session = ort.InferenceSession(
        model.SerializeToString(),
        sess_options=session_options(threads, spinning=True),
        providers=["CPUExecutionProvider"],
    )
    feed = {"a": rng.standard_normal((n, n), dtype=np.float32)}
    session.run(None, feed)  # warm-up
    best = min(_timed(lambda: session.run(None, feed)) for _ in range(repeats))
    return {
        "gflops": round(2 * n**3 / best / 1e9, 1),
        "method": f"onnxruntime MatMul {n}x{n} float32 (MLAS sgemm), {threads} threads, "
        f"best of {repeats}",
    }


def _timed(fn: Any) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start
