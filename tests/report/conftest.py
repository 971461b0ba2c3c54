"""Experiments for the report tests, written with the real results writer (no Ray)."""

from __future__ import annotations

import json
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


# Data a hostile (or careless) user can put into an experiment: markup for each output the report
# writes (HTML, markdown links and images, rich markup, ANSI escapes, spreadsheet formulas, shell words).
EVIL = {
    "html": "<script>alert(1)</script>",
    "link": "[click](javascript:alert(1))",
    "image": "![x](https://evil.example/p.png)",
    "rich": "[/][link=https://evil.example]x[/link]",
    "ansi": "\x1b[2J\x1b[H",
    "formula": '=HYPERLINK("https://evil.example","x")',
    "shell": "$(touch pwned); rm -rf ~",
    "table": "a|b\n# heading",
    "math": "$\\frac{$",
}
HOSTILE = "".join(EVIL.values())
HOSTILE_KEY = "x" + EVIL["link"]  # a scientific factor's name
HOSTILE_CLASS = "<img src=x onerror=alert(1)>"  # a class name (from val/recall/<class>)


def write_hostile(root: Path, name: str = "hostile", metrics: dict[int, list[float]] | None = None) -> Path:
    """An experiment whose every piece of data is hostile: description, arm ids, a factor's name and
    value, a class name, a host, an error message. ``metrics``: {arm index: [val/macro_f1 per seed]}
    (the study metric, may hold inf or nan); two arms, two seeds, plus one errored trial."""
    arms = [f"base{EVIL['html']}", f"=arm{EVIL['link']}{EVIL['rich']}"]
    values = metrics or {0: [0.50, 0.52], 1: [0.61, 0.63]}
    record = {
        "format": 1,
        "experiment": name,
        "description": HOSTILE,
        "design": "grid",
        "metric": "val/macro_f1",
        "mode": "max",
        "seeds": [0, 1],
        "trials": 5,
        "budget": {"epochs": 2, "trials": 5, "trials_per_arm": None, "max_wall_time_s": 900.0,
                   "max_gpu_hours": 0.0},
        "storage": None,
        "scientific": {
            "fusion.levels": {"choices": ["none", "4"], "default": "none"},
            HOSTILE_KEY: {"choices": [EVIL["formula"], EVIL["image"]], "default": EVIL["formula"]},
        },
        "nuisance": {"optim.lr": {"low": 1e-4, "high": 3e-3, "log": True, "default": 1e-3}},
        "arms": [
            {"id": arms[0], "order": 0, "baseline": True,
             "params": {"fusion.levels": "none", HOSTILE_KEY: EVIL["formula"]}},
            {"id": arms[1], "order": 1, "baseline": False,
             "params": {"fusion.levels": "4", HOSTILE_KEY: EVIL["image"]}},
        ],
    }  # fmt: skip
    root.mkdir(parents=True, exist_ok=True)
    (root / "arms.json").write_text(json.dumps(record))
    store = ResultsStore(str(root))
    n = 0
    for i, arm in enumerate(arms):
        for seed, value in enumerate(values.get(i, [])):
            row = {
                **PARAMS,
                "experiment": name,
                "trial_id": f"t{n:03d}",
                "attempt": 1,
                "arm": arm,
                "status": "completed",
                "message": "",
                "seed": seed,
                "fusion.levels": record["arms"][i]["params"]["fusion.levels"],  # type: ignore[index]
                HOSTILE_KEY: record["arms"][i]["params"][HOSTILE_KEY],  # type: ignore[index]
                "optim.lr": 1e-3 * (1 + n),
                "val/macro_f1": value,
                "val/accuracy": value,
                "test/accuracy": value,
                f"val/recall/{HOSTILE_CLASS}": 0.5,
                f"val/f1/{HOSTILE_CLASS}": 0.5,
                "val/recall/plain": 0.4,
                "val/f1/plain": 0.4,
                "wall_s": 10.0 + n,
                "cpu_hours": 0.01 * (n + 1),
                "gpu_hours": 0.0,
                "trainable_params": 1e6 * (n + 1),
                "host": HOSTILE,
                "git_sha": HOSTILE,
            }
            store.write_trial(row)
            for epoch in (1, 2):
                store.write_epoch({"experiment": name, "trial_id": f"t{n:03d}", "attempt": 1, "arm": arm,
                                   "epoch": epoch, "status": "running", "val/macro_f1": value,
                                   "train/loss": 1.0 / epoch})  # fmt: skip
            n += 1
    store.write_trial(
        {**PARAMS, "experiment": name, "trial_id": f"t{n:03d}", "attempt": 1, "arm": arms[1],
         "status": "error", "message": HOSTILE, "seed": 0, "fusion.levels": "4"}
    )  # fmt: skip
    return root
