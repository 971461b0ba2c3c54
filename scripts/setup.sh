#!/usr/bin/env bash
# Creates .venv and installs mdf-search with its dev tools. Idempotent (~90 s the first time).
# CPU machines: torch==2.13.0 first (a CPU wheel; any unpinned torch pulls a multi-GB CUDA build),
# then everything else with torch held by constraints.txt. GPU machines: MDF_TORCH="torch" (or a
# CUDA index URL) lets pip pick a CUDA build instead.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
export PIP_DISABLE_PIP_VERSION_CHECK=1
if [ -z "${MDF_TORCH:-}" ]; then
  .venv/bin/python -m pip install -q "torch==2.13.0"
  .venv/bin/python -m pip install -q -c constraints.txt -e ".[dev]"
else
  .venv/bin/python -m pip install -q "$MDF_TORCH" -e ".[dev]"
fi
.venv/bin/python -c "import torch, ray, deepspeed, transformers; print('mdf-search env: torch', torch.__version__, '| ray', ray.__version__, '| deepspeed', deepspeed.__version__, '| transformers', transformers.__version__)"
