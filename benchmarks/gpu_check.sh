#!/usr/bin/env bash
# GPU check: small and 1b presets, 50 ZeRO-3 bf16 steps each on one GPU (< 8 min on an H100).
# Prints samples/s, MFU vs 989 TFLOP/s and peak memory; on a machine without a GPU it says so and exits 0.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
# DeepSpeed 0.19 JIT-builds FusedAdam and cannot parse arch suffixes such as "9.0a" (docs/stack-facts.md)
if [ -n "${TORCH_CUDA_ARCH_LIST:-}" ]; then export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST//a/}"; fi
exec timeout 480 "$PY" benchmarks/gpu_check.py
