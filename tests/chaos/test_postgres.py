"""Two studies sharing one PostgreSQL Optuna storage (a real server on loopback, started as
``tests/search/test_postgres_study.py`` does): different names stay isolated, and a new experiment
reusing a name is refused with the fix before anything runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from tests.search.test_postgres_study import postgres_url  # noqa: F401  (the module's server)
from tests.search.test_sweep_integration import _spec

from .helpers import ROOT, Figures, check_results, check_study, start_driver, write_plan

pytestmark = pytest.mark.integration


def test_two_studies_share_one_postgres_storage(postgres_url: str, tmp_path: Path) -> None:  # noqa: F811
    figures = Figures("two studies sharing one PostgreSQL storage")
    plan = write_plan(tmp_path / "plan.json", log=str(tmp_path / "trained.jsonl"))
    storage = tmp_path / "runs"
    specs = {
        name: _spec(
            tmp_path, name, study={"storage": postgres_url}, resources={"workers": 1, "concurrent_trials": 2}
        )
        for name in ("pga", "pgb")
    }
    drivers = [start_driver(spec, storage, plan=plan, run=name) for name, spec in specs.items()]
    for driver in drivers:
        assert driver.wait(timeout=300) == 0, driver.tail()
        figures.runs += 1
    arms = ["fusion.levels=none", "fusion.levels=4|fusion.injection=parallel"]
    for name in specs:
        check_results(storage / name, [(a, 0) for a in arms], 1, figures, statuses={"completed"})
        trials = check_study(postgres_url, name, 2)
        assert {t.params["arm"] for t in trials} == set(arms)
        assert not (storage / name / "optuna.db").exists()
        study = optuna.load_study(study_name=name, storage=postgres_url)
        assert study.user_attrs["experiment_root"] == str(storage / name)
    # a new experiment (another storage root) reusing the name "pga": refused, nothing written
    other = tmp_path / "elsewhere"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    refused = subprocess.run(
        [sys.executable, "-m", "mdf_search.cli", "sweep", str(specs["pga"]), "--storage", str(other)],
        cwd=tmp_path, env={**env, "PYTHONPATH": str(ROOT), "COLUMNS": "1000"}, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    figures.runs += 1
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert "Traceback" not in refused.stderr
    message = " ".join(refused.stderr.split())
    assert "'pga' already exists" in message and f"mdf-search resume {storage / 'pga'}" in message, message
    assert "postgres" in message and not (other / "pga" / "spec.yaml").exists()
    assert len(optuna.load_study(study_name="pga", storage=postgres_url).trials) == 2  # untouched
    figures.record()
