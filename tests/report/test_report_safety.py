"""A report writes only its own files, makes every piece of data inert in every output, and sets
non-finite metrics aside: hostile experiments written with the real results writer (issue 13, findings
2, 6 and 9)."""

from __future__ import annotations

import csv
import math
import re
import shlex
from pathlib import Path

import pytest

from mdf_search.cli.console import print_error, say
from mdf_search.cli.results import report_command
from mdf_search.report import review
from mdf_search.report.ablation import ReportError, write_report
from mdf_search.report.outdir import MARKER
from mdf_search.report.synthetic import synthetic_experiment
from tests.report.conftest import EVIL, HOSTILE_KEY, write_hostile

FORMULA = ("=", "+", "-", "@", "\t", "\r")


def _rendered(md: str) -> str:
    """report.md as a reader sees it: the backslash escapes that make data inert resolved."""
    return re.sub(r"\\(.)", r"\1", md)


def _csv_cells(out: Path) -> list[str]:
    cells = []
    for path in [*out.glob("tables/*.csv"), *out.glob("deepcave/*.csv")]:
        with path.open(newline="", encoding="utf-8") as handle:
            cells += [cell for row in csv.reader(handle) for cell in row]
    return cells


def _number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# -- finding 6: every output escapes its data ---------------------------------------------------------
def test_report_md_carries_no_markup_from_data(tmp_path: Path) -> None:
    root = write_hostile(tmp_path / "exp")
    out = tmp_path / "out $(touch pwned)"
    write_report(str(root), str(out))
    md = (out / "report.md").read_text(encoding="utf-8")
    assert "<script" not in md and "<img" not in md and "\x1b" not in md
    # the only links and images are the report's own: its anchors, CSV tables and figures
    targets = re.findall(r"\]\(([^)]*)\)", md)
    assert targets and all(t.startswith(("#", "tables/", "figures/")) for t in targets), targets
    assert "javascript:" not in "".join(targets) and "https://" not in "".join(targets)
    for line in md.splitlines():  # no data starts a heading or breaks a table row
        assert not line.startswith("# heading"), line
    # the data is still there, readable once markdown's escapes are resolved
    seen = _rendered(md)
    assert "&lt;script&gt;alert(1)" in seen and EVIL["link"] in seen and HOSTILE_KEY in seen
    assert "\\x1b[2J" in seen  # the ANSI escape shown, not run
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "<script>" not in html and "&lt;script&gt;" in html and "\x1b" not in html
    assert "\ue000" not in html + md  # no data mark leaks into an output


def test_reproduce_commands_are_shell_quoted(tmp_path: Path) -> None:
    root = write_hostile(tmp_path / "exp")
    out = tmp_path / "out $(touch pwned); rm -rf ~"
    write_report(str(root), str(out))
    md = (out / "report.md").read_text(encoding="utf-8")
    line = next(x for x in md.splitlines() if x.startswith("mdf-search report"))
    assert shlex.split(line) == ["mdf-search", "report", ".", "--out", "../out $(touch pwned); rm -rf ~"]


def test_csv_tables_hold_no_formula(tmp_path: Path) -> None:
    root = write_hostile(tmp_path / "exp")
    write_report(str(root), str(tmp_path / "out"))
    cells = _csv_cells(tmp_path / "out")
    assert any(c.startswith("'=HYPERLINK") for c in cells)  # the formula kept, as text
    bad = [c for c in cells if c.startswith(FORMULA) and not _number(c)]
    assert not bad, bad


def test_console_helpers_show_markup_and_control_characters(capsys: pytest.CaptureFixture[str]) -> None:
    print_error(f"bad {EVIL['rich']} {EVIL['ansi']}")
    say("report: {}", f"dir{EVIL['rich']}\x1b[2J")
    captured = capsys.readouterr()
    assert "[/][link=https://evil.example]x[/link]" in captured.err and "\x1b[2J" not in captured.err
    assert "dir[/][link=https://evil.example]x[/link]\\x1b[2J" in captured.out


# -- finding 9: non-finite metrics are not results ----------------------------------------------------
@pytest.mark.parametrize(
    "values",
    [
        {0: [math.inf, 0.5], 1: [0.6, 0.7]},  # an inf would rank the baseline first
        {0: [math.inf, math.inf], 1: [math.inf, math.inf]},  # every value inf: three sections crashed
        {0: [-math.inf, 0.5], 1: [math.nan, 0.7]},
    ],
    ids=["one_inf", "all_inf", "neg_inf_and_nan"],
)
def test_non_finite_metrics_are_set_aside_with_a_note(tmp_path: Path, values: dict[int, list[float]]) -> None:
    root = write_hostile(tmp_path / "exp", metrics=values)
    out = tmp_path / "out"
    assert report_command(str(root), str(out)) == 0
    md = _rendered((out / "report.md").read_text(encoding="utf-8"))
    assert "this section failed" not in md
    bad = sum(1 for vs in values.values() for v in vs if not math.isfinite(v))
    assert f"{bad} finished trial(s) recorded a non-finite val/macro_f1" in md
    assert "not a valid result" in md  # the failure appendix lists them
    main = []  # no main table when no trial has a finite value
    if (out / "tables" / "main.csv").is_file():
        with (out / "tables" / "main.csv").open(encoding="utf-8") as handle:
            main = list(csv.DictReader(handle))
    assert all("inf" not in v.lower() for row in main for v in row.values())
    if main:  # the ranking holds only finite means: the baseline's inf never ranks it first
        assert main[0]["arm"].startswith("=arm") or main[0]["arm"].startswith("'=arm")


def test_a_section_that_fails_makes_the_report_fail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_: object) -> None:
        raise ValueError("Axis limits cannot be NaN or Inf")

    monkeypatch.setattr(review, "pareto_section", broken)
    root = write_hostile(tmp_path / "exp")
    with pytest.raises(ReportError) as caught:
        write_report(str(root), str(tmp_path / "out"))
    assert caught.value.code == 1 and "1 section(s) failed" in str(caught.value)
    assert "Cost: Pareto fronts (ValueError" in str(caught.value)
    md = (tmp_path / "out" / "report.md").read_text(encoding="utf-8")
    assert "this section failed: ValueError" in md  # written, and says so
    assert report_command(str(root), str(tmp_path / "out")) != 0  # never exit 0


# -- finding 2: a report writes only its own files ----------------------------------------------------
def _siblings(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.parent.iterdir() if p.name.startswith(f".{folder.name}."))


def test_a_folder_the_report_did_not_write_is_refused_untouched(tmp_path: Path) -> None:
    root = write_hostile(tmp_path / "exp")
    out = tmp_path / "mine"
    (out / "figures").mkdir(parents=True)
    (out / "figures" / "plot.png").write_bytes(b"mine")
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ReportError, match=r"already holds files no report wrote.*another --out.*remove"):
        write_report(str(root), str(out))
    assert (out / "figures" / "plot.png").read_bytes() == b"mine" and (out / "notes.txt").is_file()
    assert sorted(p.name for p in out.iterdir()) == ["figures", "notes.txt"] and not _siblings(out)
    assert not (root / "reports.log").exists()  # a refused report is not counted


def test_a_report_replaces_its_own_folder_and_keeps_what_the_user_added(tmp_path: Path) -> None:
    big = synthetic_experiment(tmp_path / "big", seeds=(0, 1), epochs=2)
    out = tmp_path / "out"
    write_report(str(big), str(out))
    assert (out / MARKER).is_file() and (out / "figures" / "importance.png").is_file()
    (out / "README.md").write_text("what this report is for")
    (out / "notes").mkdir()
    (out / "notes" / "a.txt").write_text("a")
    small = write_hostile(tmp_path / "small", metrics={0: [0.5], 1: [0.6]})
    write_report(str(small), str(out))
    assert not (out / "figures" / "importance.png").exists()  # the earlier report's figure: replaced
    assert (out / "README.md").read_text() == "what this report is for"
    assert (out / "notes" / "a.txt").read_text() == "a"
    assert "small" in (out / "report.md").read_text() and not _siblings(out)
    (out / "report.md").write_text("my edits")  # a changed report file is not replaced silently
    with pytest.raises(ReportError, match=r"changed since the report wrote them: report\.md"):
        write_report(str(small), str(out))
    assert (out / "report.md").read_text() == "my edits"


def test_a_failed_write_leaves_the_earlier_report_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = write_hostile(tmp_path / "exp")
    out = tmp_path / "out"
    write_report(str(root), str(out))
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def full(*_: object) -> str:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("mdf_search.report.ablation.to_html", full)
    with pytest.raises(ReportError, match=r"No space left on device.*nothing was replaced") as caught:
        write_report(str(root), str(out))
    assert caught.value.code == 1
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before and not _siblings(out)


def test_out_inside_or_around_the_experiment_is_refused(tmp_path: Path) -> None:
    """Inside the experiment only its own report folder, ``<experiment>/report``, takes a report
    (``test_report_folder.py``); every other folder there, and one around it, is refused."""
    root = write_hostile(tmp_path / "exp")
    for out, words in ((root / "trials" / "report", "inside the experiment folder"),
                       (root / "reports", "inside the experiment folder"),
                       (root / "report" / "sub", "inside the experiment folder"),
                       (root, "inside the experiment"),
                       (tmp_path, "holds the experiment folder")):  # fmt: skip
        with pytest.raises(ReportError, match=words):
            write_report(str(root), str(out))
    assert sorted(p.name for p in root.iterdir()) == ["arms.json", "epochs", "trials"]
