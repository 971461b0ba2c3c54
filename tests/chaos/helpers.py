"""What the chaos scenarios share: a sweep driver in its own process group, the fault plan of the
function trials, and the checks every scenario ends with (each planned trial once, no rows duplicated,
the Optuna study's history whole)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import polars as pl

from mdf_search.results.store import ResultsStore

from .trials import PLAN_ENV, expected

ROOT = Path(__file__).resolve().parents[2]
FIGURES = Path(os.environ.get("MDF_CHAOS_FIGURES", Path(tempfile.gettempdir()) / "mdf-chaos-figures.jsonl"))


@dataclass
class Driver:
    """A sweep driver process (``tests/chaos/driver.py``) in its own process group."""

    proc: subprocess.Popen[str]
    log: Path

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"the driver ran past {timeout} s:\n{self.tail()}") from None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)
        if sig == signal.SIGKILL:
            self.proc.wait()

    def tail(self, n: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""

    def summary(self) -> dict[str, Any]:
        lines = [line for line in self.log.read_text().splitlines() if line.startswith('{"finished"')]
        assert lines, self.tail()
        return dict(json.loads(lines[-1]))


def write_plan(path: Path, **plan: Any) -> Path:
    path.write_text(json.dumps({"epoch_s": 0.2, **plan}))
    return path


def start_driver(
    spec: Path,
    storage: Path,
    *,
    plan: Path,
    run: int | str = 0,
    kill: str | None = None,
    resume: bool = False,
    address: str | None = None,
    rows: Path | None = None,
    extra_env: dict[str, str] | None = None,
) -> Driver:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(
        {
            PLAN_ENV: str(plan),
            "MDF_CHAOS_RUN": str(run),
            "PYTHONPATH": str(ROOT),
            "RAY_USAGE_STATS_ENABLED": "0",
            "OMP_NUM_THREADS": "1",
            **(extra_env or {}),
        }
    )
    args = [sys.executable, "-m", "tests.chaos.driver", str(spec), str(storage)]
    if kill:
        args += ["--kill", kill]
    if resume:
        args.append("--resume")
    if address:
        args += ["--address", address]
    else:  # an embedded Ray: AF_UNIX socket paths stay short, directly under /tmp
        args += ["--temp-dir", tempfile.mkdtemp(prefix="mdfchaos-", dir="/tmp")]
    if rows:
        args += ["--rows", str(rows)]
    log = storage.parent / f"driver-{run}-{kill or 'none'}.log".replace(":", "_")
    storage.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as handle:
        proc = subprocess.Popen(
            args,
            cwd=ROOT,
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
    return Driver(proc, log)


def trained(log: Path) -> pl.DataFrame:
    """Every epoch the function trials trained (``trials.py``'s log)."""
    if not log.exists():
        return pl.DataFrame()
    return pl.DataFrame([json.loads(line) for line in log.read_text().splitlines() if line.strip()])


@dataclass
class Figures:
    """One scenario's row of the README's Reliability table."""

    scenario: str
    runs: int = 0
    faults: int = 0
    trials_lost: int = 0
    rows_duplicated: int = 0
    wrong_results: int = 0
    started: float = field(default_factory=time.monotonic)
    notes: str = ""

    def record(self) -> None:
        row = {k: v for k, v in self.__dict__.items() if k != "started"}
        row["wall_s"] = round(time.monotonic() - self.started, 1)
        with open(FIGURES, "a") as handle:
            handle.write(json.dumps(row) + "\n")
        print("figures:", row)


def check_results(
    root: Path,
    planned: list[tuple[str, int]],
    epochs: int,
    figures: Figures,
    *,
    statuses: set[str] | None = None,
) -> pl.DataFrame:
    """Each planned (arm, seed) has exactly one trial row, with the status expected and the metric a
    deterministic function of its params; no epoch row is duplicated. Counts into ``figures``."""
    store = ResultsStore(str(root))
    trials = store.trials()
    assert not (trials["status"] == "running").any(), trials  # a finished study leaves no row running
    # A trial the driver started just before a kill, which Tune's restored state never knew: closed as
    # lost (its arm and seed ran again as another trial); it ran no epoch past the kill, so it is not a
    # duplicate result, and the figures count it apart.
    lost = trials.filter(pl.col("message").fill_null("").str.starts_with("lost:"))
    figures.notes = f"{lost.height} trial(s) lost to a kill and run again" if lost.height else ""
    trials = trials.filter(~pl.col("trial_id").is_in(lost["trial_id"].to_list()))
    all_rows = store.trials(latest_attempt=False)
    pairs = list(zip(trials["arm"].to_list(), trials["seed"].to_list(), strict=True))
    figures.trials_lost = len(set(planned) - set(pairs))
    figures.rows_duplicated = len(pairs) - len(set(pairs))
    epochs_frame = store.epochs()
    if not epochs_frame.is_empty():
        figures.rows_duplicated += (
            epochs_frame.height - epochs_frame.select("trial_id", "attempt", "epoch").n_unique()
        )
    wrong = 0
    for row in trials.iter_rows(named=True):
        if statuses is not None and row["status"] not in statuses:
            wrong += 1
        elif row["status"] == "completed":
            params = {"seed": row["seed"], "fusion.levels": row.get("fusion.levels")}
            wrong += row["val/loss"] != expected(params, epochs) or row["epochs"] != epochs
    figures.wrong_results = wrong
    assert figures.trials_lost == 0, (sorted(planned), sorted(pairs))
    assert figures.rows_duplicated == 0, all_rows
    assert wrong == 0, trials.select("trial_id", "arm", "seed", "status", "epochs", "val/loss")
    return trials


def check_study(url: str, name: str, planned: int, failed: int = 0) -> list[Any]:
    """The Optuna study's history is continuous: trial numbers 0..n-1, each planned trial told once
    (``failed`` of them as failures: an ``oom`` reports no metric)."""
    study = optuna.load_study(study_name=name, storage=url)
    trials = study.get_trials(deepcopy=False)
    numbers = sorted(t.number for t in trials)
    assert numbers == list(range(len(numbers))), numbers
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    failures = [t for t in trials if t.state == optuna.trial.TrialState.FAIL]
    assert (len(complete), len(failures)) == (planned - failed, failed), [
        (t.number, t.state.name) for t in trials
    ]
    return trials
