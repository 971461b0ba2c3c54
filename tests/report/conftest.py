"""Experiments for the report tests, written with the real results writer (no Ray)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mdf_search.config import TrialConfig
from mdf_search.report.synthetic import write_spec
from mdf_search.results.store import ResultsStore

PARAMS = TrialConfig.from_flat({}).to_flat()


@pytest.fixture
def hand_experiment(tmp_path: Path) -> Callable[..., Path]:
    """``make(values)``: values = {arm: [(seed, status, val/macro_f1), ...]} with fusion.levels from the arm;
    a row may carry a fourth item, a dict of more columns (``test/accuracy``, ``val/confusion``, ...)
    that override the defaults (val/accuracy = val/macro_f1 + 0.01)."""

    def make(values: dict[str, list[tuple[Any, ...]]], name: str = "hand") -> Path:
        root = tmp_path / name
        write_spec(root, name)
        store = ResultsStore(str(root))
        n = 0
        for arm, rows in values.items():
            levels = arm.split("=", 1)[1] if "=" in arm else "none"
            for seed, status, value, *more in rows:
                row: dict[str, Any] = {
                    **PARAMS,
                    "experiment": name,
                    "trial_id": f"t{n:03d}",
                    "attempt": 1,
                    "arm": arm,
                    "status": status,
                    "message": "",
                    "seed": seed,
                    "fusion.levels": levels,
                    "film.placement": "none",
                }
                if value is not None:
                    row["val/macro_f1"] = value
                    row["val/accuracy"] = value + 0.01
                row.update(*more)
                store.write_trial(row)
                n += 1
        return root

    return make
