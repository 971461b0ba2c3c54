"""Every benchmark runs in its seconds-long ``--quick`` mode, so none of them rots between measurements.

These tests assert that a benchmark runs and prints its result line, never how fast anything is: timings
on shared machines are noise (the benchmarks print ratios measured side by side; see benchmarks/README.md).
Benchmarks that start Ray are marked ``integration``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# (script, words its output must contain); each runs as `python benchmarks/<script> --quick`
UNIT = [
    ("bench_ci_coverage.py", "Student-t"),
    ("bench_data_cache.py", "ratio cache / decode"),
    ("bench_sweep.py", "ratio sqlite / in-memory"),
    ("bench_report.py", "leaderboard"),
    ("bench_step.py", "bench_step: preset=tiny"),
    ("bench_features.py", "median epoch speed-up"),
    ("bench_vs_plain.py", "both parse"),
]
INTEGRATION = [
    ("bench_train.py", "start-up (b)"),
    ("profile_trial.py", "largest self times"),
    ("bench_search.py", "target met:"),
    ("bench_scale.py", "bookkeeping"),
]


def _run(script: str, tmp_path: Path) -> str:
    env = {
        **os.environ,
        "MDF_SEARCH_CACHE": str(tmp_path / "cache"),
        "TORCH_EXTENSIONS_DIR": str(tmp_path / "ext"),
        "RAY_TMPDIR": str(tmp_path),
        "TMPDIR": str(tmp_path),
    }
    done = subprocess.run(
        [sys.executable, f"benchmarks/{script}", "--quick"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, f"{script} --quick failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.mark.parametrize(("script", "expect"), UNIT, ids=[s for s, _ in UNIT])
def test_benchmark_runs_quick(script: str, expect: str, tmp_path: Path) -> None:
    assert expect in _run(script, tmp_path)


@pytest.mark.integration
@pytest.mark.parametrize(("script", "expect"), INTEGRATION, ids=[s for s, _ in INTEGRATION])
def test_benchmark_with_ray_runs_quick(script: str, expect: str, tmp_path: Path) -> None:
    assert expect in _run(script, tmp_path)
