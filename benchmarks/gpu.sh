#!/usr/bin/env bash
# One-command GPU benchmark: a venv with the engine on onnxruntime-gpu (the `gpu` extra) plus
# the Keras baselines (`convert`, CPU-only TensorFlow) and the harness's extras (`bench`),
# then `pneumo bench --device cuda` and the model and pipeline suites with the engine rows on
# CUDA.
#
#   bash benchmarks/gpu.sh [more python -m benchmarks options, e.g. --images DIR]
#
# Needs an NVIDIA GPU with its driver (nvidia-smi). Results: build/bench/pneumo-bench-cuda.{json,txt}
# and build/bench/bench-gpu-*.{json,md,png}
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv-gpu}

if ! command -v nvidia-smi >/dev/null 2>&1; then
    echo "error: nvidia-smi not found: this script needs an NVIDIA GPU and its driver" >&2
    exit 2
fi
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet -e '.[convert,gpu,bench]'
# onnxruntime and onnxruntime-gpu install the same `onnxruntime` module; pip cannot swap them
# through an extra (README, "CUDA"): drop the CPU build, then lay the GPU build's files again.
# The [cuda,cudnn] extras bring CUDA 12 / cuDNN 9 as pip wheels where the system has none.
"$VENV/bin/python" -m pip uninstall --quiet -y onnxruntime
"$VENV/bin/python" -m pip install --quiet --force-reinstall --no-deps 'onnxruntime-gpu>=1.20,<2'
"$VENV/bin/python" -m pip install --quiet 'onnxruntime-gpu[cuda,cudnn]>=1.20,<2'
"$VENV/bin/python" - <<'PY'
import sys

import onnxruntime as ort

if hasattr(ort, "preload_dlls"):  # onnxruntime >= 1.21: load the pip CUDA/cuDNN libraries
    ort.preload_dlls()
providers = ort.get_available_providers()
if "CUDAExecutionProvider" not in providers:
    sys.exit(f"error: onnxruntime {ort.__version__} offers {providers}, no CUDAExecutionProvider")
print(f"onnxruntime {ort.__version__}: {providers}")
PY
# `pneumo bench` (the wheel's own benchmark) on CUDA, every variant, on the development X-rays
# when present (IMAGES=DIR to choose), then the harness's suites.
mkdir -p build/bench
IMAGES=${IMAGES:-../shared/data/fullres}
BENCH_IMAGES=()
[ -d "$IMAGES" ] && BENCH_IMAGES=(--images "$IMAGES")
"$VENV/bin/pneumo" bench --device cuda --variant all ${BENCH_IMAGES[@]+"${BENCH_IMAGES[@]}"} \
    --json build/bench/pneumo-bench-cuda.json | tee build/bench/pneumo-bench-cuda.txt
exec "$VENV/bin/python" -m benchmarks --suite model,pipeline --device cuda --label gpu "$@"
