"""Where a sweep's report goes (issue 14): ``<storage>/<experiment>/report`` by default, the one folder
inside an experiment a report may write, and nothing that reads the experiment reads it; the committed
example (reports/smoke) is regenerated on purpose, by the documented command, keeping its README.md."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import typer
from polars.testing import assert_frame_equal

import mdf_search.cli.study as study
import mdf_search.report.live as live
from mdf_search.cli.results import report_command
from mdf_search.report.ablation import ReportError, write_report
from mdf_search.report.experiment import load_experiment
from mdf_search.report.outdir import MARKER
from mdf_search.report.synthetic import synthetic_experiment
from mdf_search.results.store import ResultsStore
from mdf_search.search.runner import SweepOutcome
from mdf_search.search.space import load_spec

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "search_spaces/smoke.yaml"


def _tables(root: Path) -> dict[str, pl.DataFrame]:
    store = ResultsStore(str(root))
    return {
        "trials": store.read("trials"),
        "epochs": store.read("epochs"),
        "predictions": store.predictions(),
        "experiment": load_experiment(str(root)).trials,
    }


class _View:
    """The live view, stubbed: ``_run_study`` runs without a terminal."""

    def __init__(self, *_: Any, **__: Any) -> None:
        pass

    def __enter__(self) -> _View:
        return self

    def __exit__(self, *_: Any) -> None:
        pass

    def on_event(self, *_: Any) -> None:
        pass


def _stub_sweep(monkeypatch: pytest.MonkeyPatch, outcome: SweepOutcome) -> None:
    """``_run_study`` with Ray, Tune and the live view stubbed: ``run_sweep`` returns ``outcome``."""
    monkeypatch.setattr(study, "connect", lambda *_, **__: None)
    monkeypatch.setattr(live, "LiveLeaderboard", _View)
    monkeypatch.setattr(study, "leaderboard_command", lambda *_, **__: 0)
    monkeypatch.setattr(study, "run_sweep", lambda *_, **__: outcome)


def test_sweep_writes_its_report_under_the_experiment_not_the_working_tree(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``_run_study`` with Ray, Tune and the live view stubbed: the report lands in runs/smoke/report."""
    spec = load_spec(SMOKE)
    root = synthetic_experiment(tmp_path / "runs" / spec.experiment, experiment=spec.experiment)
    monkeypatch.chdir(tmp_path)
    _stub_sweep(monkeypatch, SweepOutcome(str(root.resolve()), 0, [], ""))
    study._run_study(spec, str((tmp_path / "runs").resolve()), None, resume=None, report=True)
    assert (root / "report" / "report.md").is_file() and (root / "report" / MARKER).is_file()
    assert not (tmp_path / "reports").exists()  # the working tree is left as it was
    md = (root / "report" / "report.md").read_text(encoding="utf-8")
    assert "mdf-search report . --out report" in md  # the reproduce command names the same folder
    # a resume writes the same folder again: the marker says the earlier report made it
    study._run_study(spec, str((tmp_path / "runs").resolve()), None, resume=True, report=True)
    assert (root / "report" / "report.md").is_file()


def test_an_interrupted_sweep_says_so_exits_130_and_writes_no_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ctrl-C: Tune saves its state and returns; the command names what is left and how to resume it."""
    spec = load_spec(SMOKE)
    root = synthetic_experiment(tmp_path / "runs" / spec.experiment, experiment=spec.experiment)
    monkeypatch.chdir(tmp_path)
    _stub_sweep(monkeypatch, SweepOutcome(str(root.resolve()), 1, [], "", unfinished=2))
    with pytest.raises(typer.Exit) as stopped:
        study._run_study(spec, str((tmp_path / "runs").resolve()), None, resume=None, report=True)
    assert stopped.value.exit_code == 130
    err = " ".join(capsys.readouterr().err.split())
    assert "interrupted: 2 planned trials unfinished" in err and "mdf-search resume" in err
    assert not (root / "report").exists()


def test_nothing_that_reads_the_experiment_reads_its_report_folder(tmp_path: Path) -> None:
    root = synthetic_experiment(tmp_path / "exp")
    before = _tables(root)
    write_report(str(root), str(root / "report"))
    write_report(str(root), str(root / "report"))  # replaced in place, as a resume does
    after = _tables(root)
    for name, frame in before.items():
        assert_frame_equal(frame, after[name], check_row_order=False)
    store = ResultsStore(str(root))
    store.compact("trials")  # compaction folds the parts it lists; the report is none of them
    store.compact("epochs")
    assert_frame_equal(store.read("trials"), before["trials"], check_row_order=False)
    assert_frame_equal(store.read("epochs"), before["epochs"], check_row_order=False)
    assert not list((root / "report").rglob("*.parquet"))  # no plain Parquet glob can pick it up
    assert store.warnings() == []
    assert sorted(p.name for p in root.iterdir() if p.name.startswith(".")) == []  # no staging left


def test_only_the_experiments_own_report_folder_is_allowed_inside_it(tmp_path: Path) -> None:
    root = synthetic_experiment(tmp_path / "exp", predictions=False)
    for out in (root / "trials" / "report", root / "report" / "nested", root / "Report", root / "epochs"):
        with pytest.raises(ReportError, match="inside the experiment folder") as err:
            write_report(str(root), str(out))
        assert err.value.code == 2 and f"pass --out {root}/report" in str(err.value)
    assert write_report(str(root), str(root / "report")) == root / "report"


def test_the_committed_example_is_regenerated_by_the_documented_steps(tmp_path: Path) -> None:
    """reports/smoke as committed before issue 14: a report from before the marker plus a hand-written
    README.md. The README's steps: set the README aside, remove the folder, write the report, put the
    README back; from then on `mdf-search report runs/smoke --out reports/smoke` rewrites it and keeps
    the README."""
    root = synthetic_experiment(tmp_path / "runs" / "smoke", experiment="smoke")
    example = tmp_path / "reports" / "smoke"
    (example / "figures").mkdir(parents=True)
    (example / "report.md").write_text("# an old report\n")
    (example / "figures" / "old.png").write_bytes(b"png")
    readme = "# The smoke report\n\nWhat this example shows, written by hand.\n"
    (example / "README.md").write_text(readme)
    # as it is today, the command refuses the folder and says why
    assert report_command(str(root), str(example)) == 2
    assert (example / "README.md").read_text() == readme and (example / "figures" / "old.png").exists()
    # the one-time steps
    kept = tmp_path / "README.smoke.md"
    shutil.move(example / "README.md", kept)
    shutil.rmtree(example)
    assert report_command(str(root), str(example)) == 0
    shutil.move(kept, example / "README.md")
    # from then on: the documented command, again and again; the README is kept, the report replaced
    for _ in range(2):
        assert report_command(str(root), str(example)) == 0
        assert (example / "README.md").read_text() == readme
        assert not (example / "figures" / "old.png").exists()
        marker = json.loads((example / MARKER).read_text())["files"]
        assert "README.md" not in marker and "report.md" in marker  # the user's file, not the report's
    assert (example / "tables" / "main.tex").is_file() and (example / "figures" / "importance.pdf").is_file()
