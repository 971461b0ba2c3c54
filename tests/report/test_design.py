"""arms.json, the design a sweep records: what the writer puts in it, that the synthetic experiments
record the same, that a report and the live view need no search code to read it, and what a report of
an experiment without it reconstructs."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import yaml
from rich.console import Console

from mdf_search.report.ablation import write_report
from mdf_search.report.design import ARMS_FILE, DesignError, read_record, same_value
from mdf_search.report.experiment import load_experiment
from mdf_search.report.live import LiveLeaderboard
from mdf_search.report.synthetic import synthetic_experiment, write_spec
from mdf_search.search.designs import arms, trial_params
from mdf_search.search.record import design_record, write_design_record
from mdf_search.search.runner import _record_spec
from mdf_search.search.space import load_spec

SAMPLER = {
    "experiment": "tuned",
    "description": "two arms, tuned lr and warmup",
    "metric": "val/macro_f1",
    "mode": "max",
    "design": "tpe",
    "seeds": [0, 1, 2],
    "budget": {"trials": 12, "trials_per_arm": 5, "epochs": 4, "max_wall_time": "2h"},
    "baseline": {"fusion.levels": "none"},
    "scientific": {"fusion.levels": ["none", "1234"]},
    "nuisance": {
        "optim.lr": {"low": 1.0e-4, "high": 1.0e-2, "log": True},
        "optim.micro_batch": {"low": 2, "high": 8, "step": 2, "int": True},
        "fusion.injection": {"choices": ["concat", "parallel"], "when": {"fusion.levels": {"not": "none"}}},
    },
    "fixed": {"model.preset": "tiny", "run.device": "cpu"},
    "study": {"storage": "sqlite:///elsewhere.db"},
}


def _spec_file(tmp_path: Path, body: dict[str, object]) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


# -- the writer -----------------------------------------------------------------------------------------
def test_the_record_holds_the_resolved_design(tmp_path: Path) -> None:
    record = design_record(load_spec(_spec_file(tmp_path, SAMPLER)))
    assert json.loads(json.dumps(record)) == record  # JSON-ready as it is
    assert {
        k: record[k] for k in ("format", "experiment", "design", "metric", "mode", "seeds", "trials")
    } == {
        "format": 1,
        "experiment": "tuned",
        "design": "tpe",
        "metric": "val/macro_f1",
        "mode": "max",
        "seeds": [0, 1, 2],
        "trials": 2 * 5,  # arms x trials_per_arm
    }
    assert record["budget"] == {
        "epochs": 4,
        "trials": 12,
        "trials_per_arm": 5,
        "max_wall_time_s": 7200.0,
        "max_gpu_hours": None,
        "price_per_gpu_hour": None,
    }
    assert record["storage"] == "sqlite:///elsewhere.db"
    assert record["scientific"] == {"fusion.levels": {"choices": ["none", "1234"], "default": "none"}}
    nuisance = record["nuisance"]
    assert list(nuisance) == ["optim.lr", "optim.micro_batch", "fusion.injection"]  # file order
    assert nuisance["optim.lr"]["log"] is True and nuisance["optim.lr"]["default"] == pytest.approx(1e-3)
    assert nuisance["optim.micro_batch"] == {
        "low": 2.0,
        "high": 8.0,
        "log": False,
        "step": 2.0,
        "integer": True,
        "default": 6,  # the midpoint 5 on the step grid from low: 2 + round(1.5) * 2
    }
    assert nuisance["fusion.injection"] == {"choices": ["concat", "parallel"], "default": "concat"}
    assert record["arms"] == [
        {"id": "fusion.levels=none", "order": 0, "baseline": True, "params": {"fusion.levels": "none"}},
        {"id": "fusion.levels=1234", "order": 1, "baseline": False, "params": {"fusion.levels": "1234"}},
    ]


def test_the_record_is_written_once_and_read_back(tmp_path: Path) -> None:
    spec = load_spec(_spec_file(tmp_path, SAMPLER))
    path = write_design_record(spec, tmp_path / "exp")
    assert path == tmp_path / "exp" / ARMS_FILE and json.loads(path.read_text()) == design_record(spec)
    assert [p.name for p in path.parent.iterdir()] == [ARMS_FILE]  # no temporary file left behind
    path.write_text(path.read_text().replace('"tuned"', '"kept"'))
    write_design_record(spec, tmp_path / "exp")  # a resumed sweep keeps the first record
    recorded = read_record(tmp_path / "exp")
    assert recorded.experiment == "kept" and recorded.arm_ids() == [
        "fusion.levels=none",
        "fusion.levels=1234",
    ]
    assert recorded.baseline_ids() == ["fusion.levels=none"] and recorded.trials == 10
    lr = recorded.nuisance["optim.lr"]
    assert lr.is_range and lr.log and not recorded.nuisance["fusion.injection"].is_range
    assert recorded.budget.max_wall_time_s == 7200.0 and not recorded.reconstructed


def test_the_sweep_records_spec_and_design_where_it_keeps_the_spec(tmp_path: Path) -> None:
    spec = load_spec(_spec_file(tmp_path, SAMPLER))
    root = tmp_path / "runs" / "tuned"
    _record_spec(spec, str(root))
    assert json.loads((root / ARMS_FILE).read_text()) == design_record(spec)
    assert (root / "spec.yaml").read_text() == (tmp_path / "space.yaml").read_text()
    priced_file = _spec_file(
        tmp_path, {**SAMPLER, "budget": {**SAMPLER["budget"], "price_per_gpu_hour": 2.5}}
    )
    priced = load_spec(priced_file)
    assert read_record(root).budget.price_per_gpu_hour is None  # the price reaches the record...
    _record_spec(priced, str(tmp_path / "runs" / "priced"))
    assert read_record(tmp_path / "runs" / "priced").budget.price_per_gpu_hour == 2.5  # ...and is read back


@pytest.mark.parametrize("text", ["{", "[]", '{"format": 2}', '{"format": 1, "arms": []}'])
def test_an_unreadable_record_says_why(tmp_path: Path, text: str) -> None:
    (tmp_path / ARMS_FILE).write_text(text)
    with pytest.raises(DesignError, match=r"^arms\.json: "):
        read_record(tmp_path)


# -- the synthetic experiments record what a sweep would ------------------------------------------------
def test_synthetic_design_is_the_design_code_s(tmp_path: Path) -> None:
    write_spec(tmp_path / "plain", "plain")
    root = synthetic_experiment(
        tmp_path / "edited", seeds=(0, 1), epochs=2, failures=False, predictions=False
    )
    for directory in (tmp_path / "plain", root):
        spec = load_spec(directory / "spec.yaml")
        assert json.loads((directory / ARMS_FILE).read_text()) == design_record(spec)
    spec = load_spec(root / "spec.yaml")
    trials = load_experiment(str(root)).trials
    for arm in arms(spec):
        for seed in spec.seeds:
            expected = {k: v for k, v in trial_params(spec, arm, seed).items() if k != "optim.lr"}
            row = trials.filter((pl.col("arm") == arm.id) & (pl.col("seed") == seed)).row(0, named=True)
            assert all(same_value(row[k], v) for k, v in expected.items()), (arm.id, seed)


# -- reading needs no search code -----------------------------------------------------------------------
BLOCKED = """
import sys
sys.modules["mdf_search.search"] = None  # any import of the search package (or train) now fails
sys.modules["mdf_search.train"] = None
import io
from rich.console import Console
from mdf_search.report.ablation import write_report
from mdf_search.report.experiment import load_experiment
from mdf_search.report.leaderboard import leaderboard_frame
from mdf_search.report.live import LiveLeaderboard

root, out = sys.argv[1], sys.argv[2]
exp = load_experiment(root)
assert exp.notes == [], exp.notes
assert exp.baseline_arm() == "fusion.levels=none" and exp.factors == ["fusion.levels", "film.placement"]
write_report(root, out)
leaderboard_frame(exp, top=5)
class Spec:
    experiment, metric, mode, budget = "blocked", "val/macro_f1", "max", None
buf = io.StringIO()
with LiveLeaderboard(root, Spec(), console=Console(file=buf, force_terminal=False)) as view:
    pass
assert buf.getvalue().startswith("sweep blocked: 8 trials"), buf.getvalue()
assert not [m for m in sys.modules if m.startswith(("mdf_search.search.", "mdf_search.train."))]
print("ok")
"""


def test_a_report_reads_the_record_without_the_search_package(tmp_path: Path) -> None:
    root = synthetic_experiment(tmp_path / "blocked", seeds=(0, 1))
    run = subprocess.run(
        [sys.executable, "-c", BLOCKED, str(root), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "MPLBACKEND": "Agg"},
    )
    assert run.returncode == 0 and run.stdout.strip().endswith("ok"), run.stderr[-3000:]
    md = (tmp_path / "out" / "report.md").read_text()
    assert "this section failed" not in md and "★ fusion.levels=none" in md


# -- experiments without arms.json ----------------------------------------------------------------------
def test_an_experiment_without_the_record_is_reconstructed_from_spec_and_results(tmp_path: Path) -> None:
    root = synthetic_experiment(tmp_path / "old", seeds=(0, 1))
    recorded = load_experiment(str(root))
    (root / ARMS_FILE).unlink()
    old = load_experiment(str(root))
    assert old.spec is not None and old.spec.reconstructed
    assert (
        "no arms.json" in old.notes[0] and "reconstructed from spec.yaml and the trials table" in old.notes[0]
    )
    assert (
        old.arms() == recorded.arms()
        and old.baseline_arm() == recorded.baseline_arm() == "fusion.levels=none"
    )
    assert old.factors == recorded.factors and old.nuisance == recorded.nuisance
    assert (old.metric, old.mode, old.name) == (recorded.metric, recorded.mode, recorded.name)
    assert old.spec.nuisance["optim.lr"].is_range and old.spec.trials is None
    write_report(str(root), str(tmp_path / "out"))
    md = (tmp_path / "out" / "report.md").read_text()
    assert "no arms.json" in md and "this section failed" not in md and "★ fusion.levels=none" in md


def test_without_record_or_spec_the_metric_is_the_default_and_factors_are_unknown(tmp_path: Path) -> None:
    root = synthetic_experiment(tmp_path / "bare", seeds=(0,))
    (root / ARMS_FILE).unlink()
    (root / "spec.yaml").unlink()
    exp = load_experiment(str(root))
    assert exp.spec is None and exp.factors == [] and exp.baseline_arm() is None
    assert (exp.metric, exp.mode) == ("val/macro_f1", "max") and "no arms.json and no spec.yaml" in exp.notes[
        0
    ]
    assert exp.arms() == sorted(exp.arms())


def test_a_broken_record_falls_back_with_a_note(tmp_path: Path) -> None:
    root = synthetic_experiment(tmp_path / "broken", seeds=(0,))
    (root / ARMS_FILE).write_text('{"format": 99}')
    exp = load_experiment(str(root))
    assert exp.spec is not None and exp.spec.reconstructed
    assert exp.notes[0].startswith("arms.json: format must be 1, but got 99")


def test_the_live_header_waits_for_the_record(tmp_path: Path) -> None:
    root = synthetic_experiment(tmp_path / "live", seeds=(0, 1), running=1)
    record = (root / ARMS_FILE).read_text()
    (root / ARMS_FILE).unlink()  # as when the sweep has not started yet
    buf = io.StringIO()
    with LiveLeaderboard(
        str(root), load_spec(root / "spec.yaml"), console=Console(file=buf, width=400)
    ) as view:
        assert buf.getvalue() == "" and view.total is None
        (root / ARMS_FILE).write_text(record)  # the sweep records its design before the first trial
        view.on_event("completed", {"trial_id": "t00000", "arm": "x"})
    lines = buf.getvalue().splitlines()
    assert lines[0].startswith("sweep live: 8 trials") and "7/8 trials, 1 left" in lines[-1]
