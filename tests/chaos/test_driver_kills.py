"""The sweep driver killed (SIGKILL of its process group, embedded Ray included) at points of one study
chosen by a seeded schedule, each time followed by ``resume``; and Ctrl-C (SIGINT) stopping a sweep
gracefully. Function-only trials (``trials.py``): what is checked is the sweep's bookkeeping."""

from __future__ import annotations

import itertools
import random
import signal
import time
from pathlib import Path

import pytest

from tests.search.test_sweep_integration import _spec

from .helpers import Figures, check_results, check_study, start_driver, trained, write_plan

pytestmark = pytest.mark.integration
KINDS = ("startup", "mid_trial", "before_row", "compaction", "after_row")
SCHEDULE_SEED = 13


def _study(tmp_path: Path, name: str, seeds: int, epochs: int) -> tuple[Path, list[tuple[str, int]]]:
    spec = _spec(
        tmp_path,
        name,
        seeds=list(range(seeds)),
        budget={"trials": 2 * seeds, "epochs": epochs},
        resources={"workers": 1, "concurrent_trials": 2},
    )
    arms = ["fusion.levels=none", "fusion.levels=4|fusion.injection=parallel"]
    return spec, [(a, s) for a in arms for s in range(seeds)]


def schedule(seed: int = SCHEDULE_SEED) -> list[str]:
    """Kill points, one per driver run: every kind once, in a seeded order, at a seeded occurrence."""
    rng = random.Random(seed)
    kinds = list(KINDS)
    rng.shuffle(kinds)
    kinds.insert(rng.randrange(1, len(kinds) + 1), "mid_trial")  # a sixth kill: mid-trial again
    most = {"startup": 1, "compaction": 2, "mid_trial": 3, "before_row": 2, "after_row": 2}
    return [f"{k}:{rng.randint(1, most[k])}" for k in kinds]


def test_driver_killed_at_seeded_points_then_resumed(tmp_path: Path) -> None:
    figures = Figures("driver SIGKILLed at 6 seeded points, each + resume")
    spec, planned = _study(tmp_path, "killed", seeds=5, epochs=3)
    storage, root = tmp_path / "runs", tmp_path / "runs" / "killed"
    log, rows = tmp_path / "trained.jsonl", tmp_path / "rows.jsonl"
    plan = write_plan(tmp_path / "plan.json", log=str(log), epoch_s=0.3)
    env = {"MDF_CHAOS_COMPACT_EVERY": "6"}  # compactions happen within this small study
    kills = schedule()
    history: list[list[int]] = []
    for run, kill in enumerate([*kills, None]):
        driver = start_driver(
            spec, storage, plan=plan, run=run, kill=kill, resume=run > 0, rows=rows, extra_env=env
        )
        code = driver.wait(timeout=300)
        figures.runs += 1
        if kill is None:
            assert code == 0, driver.tail()
            summary = driver.summary()
            assert not summary["errors"] and not summary["unfinished"], summary
        else:
            assert code == -signal.SIGKILL, f"{kill}: exit {code}\n{driver.tail()}"
            figures.faults += 1
        db = root / "optuna.db"
        if db.exists():
            import optuna

            study = optuna.load_study(study_name="killed", storage=f"sqlite:///{db}")
            history.append(sorted(t.number for t in study.trials))
    check_results(root, planned, 3, figures, statuses={"completed"})
    # no finished trial is rerun: nothing trained for a trial after the run that wrote its result row
    finished_in: dict[str, int] = {}
    for line in rows.read_text().splitlines():
        import json

        row = json.loads(line)
        if row["status"] == "completed":
            finished_in.setdefault(row["trial_id"], int(row["run"]))
    epochs = trained(log)
    late = [
        (r["trial_id"], r["epoch"], r["run"])
        for r in epochs.iter_rows(named=True)
        if r["trial_id"] in finished_in and int(r["run"]) > finished_in[r["trial_id"]]
    ]
    assert not late, late
    # the Optuna study: continuous numbers, each planned trial told once, earlier numbers kept
    check_study(f"sqlite:///{root / 'optuna.db'}", "killed", len(planned))
    for before, after in itertools.pairwise(history):
        assert after[: len(before)] == before
    figures.notes = (
        f"schedule {kills}; epochs trained again after a kill: {epochs.height - 3 * len(planned)}"
        + (f"; {figures.notes}" if figures.notes else "")
    )
    figures.record()


def test_ctrl_c_stops_gracefully_and_resume_finishes(tmp_path: Path) -> None:
    """SIGINT to the driver's whole process group (a terminal's Ctrl-C): Tune stops the trials, keeps
    their last checkpoints and its state; the driver exits cleanly and says what is unfinished; resume
    continues each trial from its checkpoint and finishes the study."""
    figures = Figures("Ctrl-C (SIGINT to the process group), then resume")
    spec, planned = _study(tmp_path, "interrupted", seeds=2, epochs=4)
    storage, root = tmp_path / "runs", tmp_path / "runs" / "interrupted"
    log = tmp_path / "trained.jsonl"
    plan = write_plan(tmp_path / "plan.json", log=str(log), epoch_s=1.0)
    driver = start_driver(spec, storage, plan=plan, run=0)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and trained(log).height < 3:
        time.sleep(0.5)
    assert trained(log).height >= 3, driver.tail()
    driver.kill(signal.SIGINT)
    figures.faults += 1
    code = driver.wait(timeout=120)
    figures.runs += 1
    assert code == 0, driver.tail()
    summary = driver.summary()
    assert summary["unfinished"] > 0 and not summary["errors"], summary
    before = trained(log)
    resumed = start_driver(spec, storage, plan=plan, run=1, resume=True)
    assert resumed.wait(timeout=300) == 0, resumed.tail()
    figures.runs += 1
    check_results(root, planned, 4, figures, statuses={"completed"})
    after = trained(log)
    # the checkpoints were kept: a resumed trial goes on after its last checkpointed epoch
    for trial_id in after.filter(after["run"] == "1")["trial_id"].unique().to_list():
        done = before.filter(before["trial_id"] == trial_id)["epoch"]
        again = after.filter((after["run"] == "1") & (after["trial_id"] == trial_id))["epoch"]
        if done.len():
            assert again.min() >= done.max(), (trial_id, done.to_list(), again.to_list())  # type: ignore[operator]
    check_study(f"sqlite:///{root / 'optuna.db'}", "interrupted", len(planned))
    figures.record()
