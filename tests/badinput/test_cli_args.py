"""The bad-input catalogue for command-line arguments of the app, the study commands (``validate``,
``sweep``, ``resume``) and the results commands (``leaderboard``, ``report``): each is refused with exit 2
and an error naming the option or path and the fix, before Ray starts, and changes no file."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.badinput.harness import Case, check, ids, layout, mkdir, write
from tests.badinput.test_spec_yaml import BASE, variant

EXPERIMENT = "runs/bad"  # where BASE's experiment lives under the default --storage runs


SPACE = write("spec.yaml", BASE)
# An experiment a sweep left: its recorded spec and Tune's experiment state.
STARTED = layout(
    write(f"{EXPERIMENT}/spec.yaml", BASE),
    write(f"{EXPERIMENT}/experiment_state-2026-01-01_00-00-00.json", "{}"),
)


def sweep(*extra: str) -> tuple[str, ...]:
    return ("sweep", "spec.yaml", *extra)


CASES: list[Case] = [
    # The app itself.
    Case("app-unknown-command", ("swep", "spec.yaml"), ("no such command", "swep")),
    Case("app-unknown-root-option", ("--verbose", "validate", "spec.yaml"), ("no such option", "--verbose")),
    # validate
    Case("validate-no-files", ("validate",), ("missing argument", "FILES")),
    Case(
        "validate-unknown-option",
        ("validate", "spec.yaml", "--dep"),
        ("no such option", "--dep", "--deep"),
        setup=SPACE,
    ),
    Case(
        "validate-deep-with-a-value",
        ("validate", "--deep=yes", "spec.yaml"),
        ("--deep", "does not take a value"),
        setup=SPACE,
    ),
    # sweep: arguments and options
    Case("sweep-no-space", ("sweep",), ("missing argument", "SPACE")),
    Case(
        "sweep-storage-without-value", sweep("--storage"), ("--storage", "requires an argument"), setup=SPACE
    ),
    Case("sweep-space-missing", ("sweep", "absent.yaml"), ("absent.yaml", "not found")),
    Case("sweep-space-a-directory", ("sweep", "spaces"), ("spaces", "directory"), setup=mkdir("spaces")),
    Case(
        "sweep-report-dir-without-report",
        sweep("--no-report", "--report-dir", "out"),
        ("--report-dir", "--no-report"),
        setup=SPACE,
    ),
    Case(
        "sweep-storage-a-file",
        sweep("--storage", "runs"),
        ("--storage", "runs", "not a directory"),
        setup=layout(SPACE, write("runs", "a file, not a folder\n")),
    ),
    Case(
        "sweep-storage-under-a-file",
        sweep("--storage", "notes.txt/runs"),
        ("--storage", "notes.txt", "not a directory"),
        setup=layout(SPACE, write("notes.txt", "x\n")),
    ),
    Case(
        "sweep-storage-unwritable",
        sweep("--storage", "/proc/mdf-runs"),
        ("--storage", "/proc", "writ"),
        setup=SPACE,
    ),
    Case("sweep-storage-empty", sweep("--storage", ""), ("--storage", "empty"), setup=SPACE),
    Case(
        "sweep-storage-unknown-scheme",
        sweep("--storage", "ftp://host/runs"),
        ("--storage", "ftp", "s3://"),
        setup=SPACE,
    ),
    Case(
        "sweep-experiment-path-a-file",
        sweep(),
        ("runs/bad", "not a directory"),
        setup=layout(SPACE, write(EXPERIMENT, "x\n")),
    ),
    Case(
        "sweep-fresh-on-an-existing-experiment",
        sweep("--fresh"),
        ("runs/bad", "exists", "mdf-search resume"),
        setup=layout(SPACE, STARTED),
    ),
    Case(
        "sweep-fresh-on-a-recorded-spec",
        sweep("--fresh"),
        ("runs/bad", "exists", "rename"),
        setup=layout(SPACE, write(f"{EXPERIMENT}/spec.yaml", BASE)),
    ),
    Case(
        "sweep-existing-experiment-with-another-spec",
        sweep(),
        ("runs/bad/spec.yaml", "differs", "mdf-search resume"),
        setup=layout(write("spec.yaml", variant(("epochs: 1,", "epochs: 2,"))), STARTED),
    ),
    Case(
        "sweep-report-dir-a-file",
        sweep("--report-dir", "report.md"),
        ("--report-dir", "report.md", "not a directory"),
        setup=layout(SPACE, write("report.md", "mine\n")),
    ),
    Case(
        "sweep-report-dir-a-users-folder",
        sweep("--report-dir", "notes"),
        ("--report-dir", "notes", "--out"),
        setup=layout(SPACE, write("notes/todo.txt", "mine")),
    ),
    Case(
        "sweep-report-dir-inside-the-experiment",
        sweep("--report-dir", f"{EXPERIMENT}/trials"),
        ("--report-dir", "inside"),
        setup=SPACE,
    ),
    Case(
        "sweep-address-http",
        sweep("--address", "http://127.0.0.1:8265"),
        ("--address", "submit"),
        setup=SPACE,
    ),
    Case("sweep-address-no-port", sweep("--address", "10.0.0.1"), ("--address", "port"), setup=SPACE),
    Case(
        "sweep-ray-address-env-bad-scheme",
        sweep(),
        ("RAY_ADDRESS", "scheme"),
        setup=SPACE,
        env={"RAY_ADDRESS": "ftp://head:6379"},
    ),
    Case(
        "resume-address-spaces",
        ("resume", EXPERIMENT, "--address", "head node:6379"),
        ("--address",),
        setup=STARTED,
    ),
    # resume
    Case("resume-no-argument", ("resume",), ("missing argument", "EXPERIMENT")),
    Case(
        "resume-missing-experiment", ("resume", "runs/absent"), ("runs/absent", "no such", "mdf-search sweep")
    ),
    Case(
        "resume-a-file",
        ("resume", "notes.txt"),
        ("notes.txt", "not a directory"),
        setup=write("notes.txt", "x\n"),
    ),
    Case(
        "resume-without-spec",
        ("resume", "runs/empty"),
        ("runs/empty", "no spec.yaml"),
        setup=mkdir("runs/empty"),
    ),
    Case(
        "resume-nothing-to-resume",
        ("resume", EXPERIMENT),
        ("runs/bad", "nothing to resume", "mdf-search sweep"),
        setup=write(f"{EXPERIMENT}/spec.yaml", BASE),
    ),
    Case(
        "resume-renamed-directory",
        ("resume", "runs/copy"),
        ("runs/copy", "experiment 'bad'", "rename"),
        setup=layout(
            write("runs/copy/spec.yaml", BASE),
            write("runs/copy/experiment_state-2026-01-01_00-00-00.json", "{}"),
        ),
    ),
    Case(
        "resume-unknown-option",
        ("resume", EXPERIMENT, "--fresh"),
        ("no such option", "--fresh"),
        setup=STARTED,
    ),
    # results commands
    Case("leaderboard-no-argument", ("leaderboard",), ("missing argument", "EXPERIMENT")),
    Case(
        "leaderboard-top-not-a-number",
        ("leaderboard", "runs/x", "--top", "ten"),
        ("--top", "valid integer"),
    ),
    Case("leaderboard-top-zero", ("leaderboard", "runs/x", "--top", "0"), ("--top", ">= 1")),
    Case("leaderboard-top-negative", ("leaderboard", "runs/x", "--top", "-3"), ("--top", ">= 1")),
    Case(
        "leaderboard-format-unknown",
        ("leaderboard", "runs/x", "--format", "xml"),
        ("--format", "table", "xml"),
    ),
    Case("leaderboard-missing-experiment", ("leaderboard", "runs/absent"), ("runs/absent",)),
    Case(
        "leaderboard-watch-with-a-value",
        ("leaderboard", "runs/x", "--watch=1"),
        ("--watch", "does not take a value"),
    ),
    Case("report-no-argument", ("report",), ("missing argument", "EXPERIMENT")),
    Case("report-missing-experiment", ("report", "runs/absent", "--out", "out"), ("runs/absent",)),
    Case("report-out-without-value", ("report", "runs/x", "--out"), ("--out", "requires an argument")),
]


@pytest.mark.parametrize("case", CASES, ids=ids(CASES))
def test_bad_input(case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    check(case, tmp_path, monkeypatch)
