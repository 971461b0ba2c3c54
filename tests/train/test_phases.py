"""The phase clock (``train/phases.py``) on a fake monotonic clock, and the trial row's phase columns."""

from __future__ import annotations

import itertools
import pstats
from pathlib import Path
from typing import Any

import pytest

from mdf_search.results.schema import PHASE_COLUMNS
from mdf_search.train import phases
from mdf_search.train.phases import OTHER, PHASES, PROFILE_ENV, PhaseClock, trial_phases


class FakeTime:
    """``time.perf_counter`` and ``time.time`` that move only when the test says."""

    def __init__(self) -> None:
        self.now = 1000.0

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def perf_counter(self) -> float:
        return self.now

    def time(self) -> float:
        return self.now


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeTime:
    clock = FakeTime()
    monkeypatch.setattr(phases.time, "perf_counter", clock.perf_counter)
    monkeypatch.setattr(phases.time, "time", clock.time)
    return clock


def test_the_phases_are_exclusive_and_add_up_to_the_elapsed_time(fake: FakeTime) -> None:
    clock = PhaseClock(launched_unix=fake.now - 7.0)  # the workers took 7 s to start
    fake.advance(0.5)  # glue before any phase: other_s
    with clock.phase("init_s"):
        fake.advance(3.0)
        with clock.phase("data_s"):  # an inner phase takes over while it runs
            fake.advance(1.0)
        fake.advance(2.0)

    def batches() -> Any:
        for i in range(3):
            fake.advance(0.25)  # waiting for the loader
            yield i

    with clock.phase("train_s"):
        for _ in clock.iterate(batches()):
            clock.step_started()
            fake.advance(1.0)  # the step
    report = clock.report()
    assert report["launch_s"] == 7.0
    assert report["init_s"] == 5.0 and report["data_s"] == 1.75 and report["train_s"] == 3.0
    assert report[OTHER] == 0.5 and report["eval_s"] == report["ckpt_s"] == report["report_s"] == 0.0
    assert report["elapsed_s"] == pytest.approx(sum(report[k] for k in (*PHASES, OTHER)))
    assert report["elapsed_s"] == pytest.approx(7.0 + 0.5 + 5.0 + 1.75 + 3.0)
    # the first step began after launch, 0.5 s of glue, init and the first batch's wait
    assert report["startup_s"] == pytest.approx(7.0 + 0.5 + 6.0 + 0.25)
    assert report["loop_start_unix"] == 1000.0


def test_startup_is_unknown_before_the_first_step_and_unknown_phases_are_refused(fake: FakeTime) -> None:
    clock = PhaseClock()
    assert clock.report()["startup_s"] is None and clock.report()["launch_s"] == 0.0
    with pytest.raises(ValueError, match="unknown phase 'training'"), clock.phase("training"):
        pass


def test_a_phase_ends_when_its_block_raises(fake: FakeTime) -> None:
    clock = PhaseClock()
    with pytest.raises(RuntimeError), clock.phase("eval_s"):
        fake.advance(2.0)
        raise RuntimeError("boom")
    fake.advance(1.0)
    report = clock.report()
    assert report["eval_s"] == 2.0 and report[OTHER] == 1.0


def _last(**override: Any) -> dict[str, Any]:
    """A last report as the worker sends it: launched 5 s before its loop started at t=100."""
    values = dict(zip(PHASES, itertools.count(5.0), strict=False))  # launch 5, init 6, ..., report 11
    return {**values, OTHER: 0.5, "startup_s": 12.0, "loop_start_unix": 100.0, **override}


def test_the_row_counts_from_the_driver_s_start_and_the_phases_add_up_to_wall() -> None:
    row = trial_phases(_last(), started_unix=93.0, arrived_unix=160.0, tune_wall_s=55.0)
    assert row["wall_s"] == 67.0  # start until the last report arrived, not Tune's time_total_s
    assert row["launch_s"] == 7.0  # 93 → 100 on the driver's clock, not the worker's 5 s
    assert row["startup_s"] == 14.0  # the worker's 12 s, shifted by the 2 s launched before Train's launch
    assert sum(row[k] for k in PHASE_COLUMNS) == pytest.approx(row["wall_s"])
    assert row[OTHER] == pytest.approx(67.0 - 7.0 - sum(range(6, 12)))


def test_without_the_driver_s_start_the_worker_s_numbers_stand() -> None:
    row = trial_phases(_last(), started_unix=None, arrived_unix=160.0, tune_wall_s=70.0)
    assert row["wall_s"] == 70.0 and row["launch_s"] == 5.0 and row["startup_s"] == 12.0
    assert sum(row[k] for k in PHASE_COLUMNS) == pytest.approx(70.0)
    # a report that arrived before this attempt started is an earlier attempt's: not this one's end
    stale = trial_phases(_last(), started_unix=170.0, arrived_unix=160.0, tune_wall_s=70.0)
    assert stale["wall_s"] == 70.0 and stale["launch_s"] == 5.0


def test_a_report_without_phases_gives_the_wall_time_only() -> None:
    infeasible = {"status": "infeasible", "epoch": 0}
    assert trial_phases(infeasible, started_unix=1.0, arrived_unix=3.5, tune_wall_s=2.0) == {"wall_s": 2.5}
    assert trial_phases(infeasible, started_unix=None, arrived_unix=None, tune_wall_s=2.0) == {"wall_s": 2.0}


def test_profiling_keeps_one_profile_per_phase(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PROFILE_ENV, str(tmp_path / "profiles"))
    clock = PhaseClock()

    def busy() -> int:
        return sum(range(20_000))

    with clock.phase("train_s"):
        busy()
        with clock.phase("eval_s"):
            busy()
    clock.dump_profiles(rank=0)
    files = sorted(p.name for p in (tmp_path / "profiles").iterdir())
    assert files == ["rank0-eval.prof", "rank0-other.prof", "rank0-train.prof"]
    calls = {
        name: pstats.Stats(str(tmp_path / "profiles" / f"rank0-{name}.prof")) for name in ("train", "eval")
    }
    for stats in calls.values():  # busy ran once in each phase: each profile saw exactly its own call
        counts = {func[2]: value[1] for func, value in stats.stats.items()}  # type: ignore[attr-defined]
        assert counts["busy"] == 1
