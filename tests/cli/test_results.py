"""``leaderboard`` and ``report`` over a small experiment written with the real results writer."""

from __future__ import annotations

import csv
import io
import itertools
import json
import time
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from mdf_search.report.synthetic import synthetic_experiment
from mdf_search.results.store import ResultsStore
from tests.cli.helpers import invoke, plain


@pytest.fixture(scope="module")
def experiment(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 arms x 2 seeds, 2 epochs; trial t00001 (the baseline, seed 1) ended in an error."""
    return synthetic_experiment(tmp_path_factory.mktemp("exp") / "small", seeds=(0, 1), only_arms=2, epochs=2)


def test_leaderboard_ranks_trials_by_the_study_metric(experiment: Path) -> None:
    result = invoke("leaderboard", str(experiment))
    assert result.exit_code == 0, result.output
    out = plain(result.stdout)
    assert "small: top val/macro_f1 (max)" in out and "error" in out and result.stderr == ""
    rows = json.loads(invoke("leaderboard", str(experiment), "--format", "json").stdout)
    assert [r["rank"] for r in rows] == [1, 2, 3, 4] and rows[-1]["status"] == "error"
    scores = [r["val/macro_f1"] for r in rows if r["val/macro_f1"] is not None]
    assert scores == sorted(scores, reverse=True)
    top = json.loads(invoke("leaderboard", str(experiment), "--format", "json", "--top", "1").stdout)
    assert [r["trial_id"] for r in top] == [rows[0]["trial_id"]]


def test_leaderboard_groups_seeds_by_arm(experiment: Path) -> None:
    result = invoke("leaderboard", str(experiment), "--group-by", "arm", "--format", "csv")
    assert result.exit_code == 0, result.output
    rows = {r["arm"]: r for r in csv.DictReader(io.StringIO(result.stdout))}
    assert set(rows) == {"fusion.levels=none", "fusion.levels=4"}
    assert rows["fusion.levels=4"]["n"] == "2" and rows["fusion.levels=none"]["n"] == "1"  # the error left
    markdown = invoke(
        "leaderboard", str(experiment), "--where", 'arm == "fusion.levels=4"', "--format", "markdown"
    )
    assert markdown.exit_code == 0 and markdown.stdout.count("| t0000") == 2


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("--top", "0"), "--top must be >= 1, but got 0"),
        (("--by", "val/nope"), "--by: no column 'val/nope'"),
        (("--group-by", "nope"), "--group-by: no column 'nope'"),
        (("--where", "fusion.levels =="), "where"),
    ],
)
def test_a_bad_leaderboard_option_exits_2_with_one_error(
    experiment: Path, args: tuple[str, ...], says: str
) -> None:
    result = invoke("leaderboard", str(experiment), *args)
    assert result.exit_code == 2, result.output
    err = plain(result.stderr)
    assert err.startswith("error: ") and err.count("error:") == 1 and says in err and result.stdout == ""


def test_a_missing_experiment_exits_2_for_both_commands(tmp_path: Path) -> None:
    for command in ("leaderboard", "report"):
        result = invoke(command, str(tmp_path / "missing"))
        assert result.exit_code == 2, result.output
        err = plain(result.stderr)
        assert err.startswith("error: ") and str(tmp_path / "missing") in err and "Traceback" not in err


def test_report_writes_markdown_and_html_under_reports_of_the_experiment_name(
    experiment: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the default --out is reports/<experiment name>, relative to here
    result = invoke("report", f"{experiment}/")
    assert result.exit_code == 0, result.output
    assert plain(result.stdout) == "report: reports/small/report.md and reports/small/report.html"
    out = tmp_path / "reports/small"
    assert (out / "report.md").read_text().startswith("# Ablation report: small")
    assert (out / "report.html").is_file() and any((out / "figures").iterdir())


def _bomb(levels: int = 9) -> str:
    lines = ["a: &a [" + ", ".join(["lol"] * 9) + "]"]
    names = "abcdefghijklmnop"[:levels]
    for prev, name in itertools.pairwise(names):
        lines.append(f"{name}: &{name} [" + ", ".join([f"*{prev}"] * 9) + "]")
    return "\n".join([*lines, f"scientific: {{fusion.levels: *{names[-1]}}}"]) + "\n"


def test_watch_reads_the_spec_once_per_change_and_goes_on_past_a_bad_part(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from mdf_search.cli import results as cli_results
    from mdf_search.report import experiment as experiment_module

    root = synthetic_experiment(tmp_path / "w", seeds=(0, 1), only_arms=2, epochs=1, predictions=False)
    (root / "arms.json").unlink()  # the spec comes from spec.yaml: an alias bomb
    (root / "spec.yaml").write_text(_bomb())
    reads: list[Path] = []
    load = experiment_module.load_spec_record

    def counted(where: Path, trials: pl.DataFrame) -> Any:
        reads.append(where)
        return load(where, trials)

    polls = iter(range(100))

    def poll(seconds: float) -> None:
        n = next(polls)
        if n == 1:
            (root / "trials" / "t00002-a1.parquet").write_bytes(b"")  # a bad part appears mid-watch
        if n == 3:
            (root / "spec.yaml").write_text(_bomb(8))  # the spec changes once
        if n == 6:
            raise KeyboardInterrupt

    monkeypatch.setattr(experiment_module, "load_spec_record", counted)
    monkeypatch.setattr(cli_results.time, "sleep", poll)
    started = time.perf_counter()
    assert cli_results.leaderboard_command(str(root), 20, None, None, None, "table", True) == 0
    assert time.perf_counter() - started < 30
    assert len(reads) == 2  # 7 reads of the results, 2 of the spec: at the start and after its change
    out = plain(capsys.readouterr().out)
    assert "t00002-a1.parquet" in out and "quarantine" in out and "t00003" in out
    assert "spec.yaml does not load" in out and "alias" in out
    assert (root / "quarantine" / "trials" / "t00002-a1.parquet").exists()


def test_json_has_no_infinity_and_csv_no_formula(tmp_path: Path) -> None:
    root = synthetic_experiment(
        tmp_path / "j",
        seeds=(0,),
        only_arms=2,
        epochs=1,
        predictions=False,
        arm_names=("=1+2", "@x"),
        failures=False,
    )
    store = ResultsStore(str(root))
    row = store.trials().filter(pl.col("trial_id") == "t00000").row(0, named=True)
    row.pop("written_at")
    store.write_trial({**row, "val/macro_f1": float("inf"), "status": "completed"})
    result = invoke("leaderboard", str(root), "--format", "json")

    def refuse(token: str) -> None:
        raise AssertionError(f"{token} is not JSON")

    rows = json.loads(result.stdout, parse_constant=refuse)
    assert rows[-1]["val/macro_f1"] == "inf" and "non-finite" in result.stderr
    csv_text = invoke("leaderboard", str(root), "--format", "csv").stdout
    assert "'=1+2" in csv_text and "'@x" in csv_text
    assert invoke("leaderboard", str(root), "--by", "").exit_code == 2
