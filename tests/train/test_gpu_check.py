"""The GPU check script: runs on a GPU (gpu tier) and says so clearly where there is none."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_check_explains_itself_without_a_gpu() -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the gpu-tier test runs the real check")
    out = subprocess.run(
        ["bash", "benchmarks/gpu_check.sh"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0 and "no CUDA device" in out.stdout


@pytest.mark.gpu
def test_gpu_check_trains_small_and_1b_with_zero3_bf16() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    out = subprocess.run(
        ["bash", "benchmarks/gpu_check.sh"], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-2000:]
    lines = [line for line in out.stdout.splitlines() if "samples/s" in line]
    assert len(lines) == 2 and "MFU=" in lines[0]
