"""``leaderboard`` and ``report`` over a small experiment written with the real results writer."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from mdf_search.report.synthetic import synthetic_experiment
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
        (("--format", "xml"), "--format must be one of table, csv, json, markdown, but got 'xml'"),
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
