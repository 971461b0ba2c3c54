"""Command-line conventions (issue 14, item 10): ``--version``, shell completion, choices for every option
with a fixed set of values, no message folded off a terminal, and a live view that owns the terminal
(Ray's notices and worker chatter only with ``MDF_SEARCH_VERBOSE=1``, worker errors always)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any, get_args

import pytest

from mdf_search import cluster
from mdf_search.cli import PROG, STACK, options
from mdf_search.config import PRECISIONS, SPLITS
from mdf_search.model.arch import FREEZE_STRATEGIES, INJECTIONS
from mdf_search.model.presets import PRESETS
from tests.cli.helpers import invoke, plain

HEAVY = STACK  # seconds to import: never for --version


def run_cli(*args: str, env: dict[str, str] | None = None, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """``mdf-search ARGS`` in a subprocess, stdout and stderr pipes (not terminals), no COLUMNS or LINES."""
    clean = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "TERMINAL_WIDTH")}
    return subprocess.run(
        [sys.executable, "-m", "mdf_search.cli", *args],
        capture_output=True,
        text=True,
        env={**clean, **(env or {})},
        timeout=120,
        **kwargs,
    )


# -- --version ---------------------------------------------------------------------------------------


def test_version_names_the_package_and_the_stack_and_exits_0() -> None:
    result = invoke("--version")
    assert result.exit_code == 0, result.output
    line = result.stdout.strip()
    assert line.startswith(f"{PROG} {version(PROG)} (Python ")
    for dist in STACK:
        assert f"{dist} {version(dist)}" in line


def test_version_imports_none_of_the_stack() -> None:
    """The versions come from package metadata: ``--version`` loads no torch, Ray or DeepSpeed."""
    probe = (
        "import sys\n"
        "sys.argv = ['mdf-search', '--version']\n"
        "from mdf_search.cli import main\n"
        "try:\n    main()\nexcept SystemExit as done:\n    code = done.code\n"
        f"print(code, sorted(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.stderr.strip() == "0 []", done.stderr
    assert done.stdout.count("\n") == 1 and done.stdout.startswith(f"{PROG} ")


# -- completion ----------------------------------------------------------------------------------------


def test_completion_script_and_completions_of_commands_and_choices() -> None:
    script = run_cli("--show-completion", "bash", env={"_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"})
    assert script.returncode == 0, script.stderr
    assert "_MDF_SEARCH_COMPLETE=complete_bash" in script.stdout and f"-F _mdf_search_completion {PROG}" in (
        script.stdout
    )

    def complete(words: str) -> list[str]:
        env = {
            "_MDF_SEARCH_COMPLETE": "complete_bash",
            "COMP_WORDS": words,
            "COMP_CWORD": str(len(words.split()) - (not words.endswith(" "))),  # the word completed
        }
        done = run_cli(env=env)
        assert done.returncode == 0, done.stderr
        return done.stdout.split()

    assert complete("mdf-search lead") == ["leaderboard"]
    assert complete("mdf-search model-summary --preset ") == list(PRESETS)
    assert complete("mdf-search data split --scheme ") == list(SPLITS)


def test_help_offers_completion_install() -> None:
    out = plain(invoke("--help").stdout)
    assert "--install-completion" in out and "--show-completion" in out and "--version" in out


# -- choices -------------------------------------------------------------------------------------------

# (command, option, its values from the library, a wrong value, the arguments the command needs)
CHOICES = [
    (("model-summary",), "--preset", tuple(PRESETS), "13b", ()),
    (("model-summary",), "--injection", INJECTIONS, "sideways", ()),
    (("model-summary",), "--freeze", FREEZE_STRATEGIES, "everything", ()),
    (("export",), "--dtype", PRECISIONS, "int8", ("ck", "--out", "o")),
    (("data", "split"), "--scheme", SPLITS, "random", ("--manifest", "m.parquet", "--out", "o")),
    (("leaderboard",), "--format", options.LEADERBOARD_FORMATS, "xml", ("runs/x",)),
]
CHOICE_IDS = [option for _, option, *_ in CHOICES]


@pytest.mark.parametrize(("command", "option", "values", "wrong", "needs"), CHOICES, ids=CHOICE_IDS)
def test_help_lists_the_choices(
    command: tuple[str, ...], option: str, values: tuple[str, ...], wrong: str, needs: tuple[str, ...]
) -> None:
    result = invoke(*command, "--help")
    assert result.exit_code == 0, result.output
    assert f"{option} <{'|'.join(values)}>" in plain(result.stdout)


@pytest.mark.parametrize(("command", "option", "values", "wrong", "needs"), CHOICES, ids=CHOICE_IDS)
def test_a_value_outside_the_choices_is_a_usage_error_naming_them(
    command: tuple[str, ...],
    option: str,
    values: tuple[str, ...],
    wrong: str,
    needs: tuple[str, ...],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    result = invoke(*command, *needs, option, wrong)
    assert result.exit_code == 2, result.output
    err = plain(result.stderr)
    assert f"Invalid value for '{option}'" in err and repr(wrong) in err
    assert ", ".join(map(repr, values)) in err  # every choice, in the library's order
    assert "Traceback" not in result.output and result.stdout == "" and not list(tmp_path.iterdir())


def test_choices_come_from_the_library_s_tuples() -> None:
    from mdf_search.data.splits import SCHEMES
    from mdf_search.report.leaderboard import FORMATS

    built = {
        options.Preset: tuple(PRESETS),
        options.Injection: INJECTIONS,
        options.Freeze: FREEZE_STRATEGIES,
        options.Precision: PRECISIONS,
        options.SplitScheme: SCHEMES,
        options.Format: FORMATS,
    }
    for annotation, values in built.items():
        assert get_args(annotation) == tuple(values)
    with pytest.raises(ValueError, match="one or more strings"):
        options.choice(())


def test_by_stays_free_text_checked_by_the_library() -> None:
    result = invoke("leaderboard", "--help")
    assert "--by <str>" in plain(
        result.stdout
    )  # a metric name or 'phases'; a bad one: tests/cli/test_results


# -- no folding off a terminal -------------------------------------------------------------------------


def test_a_long_error_is_one_line_on_a_pipe(tmp_path: Path) -> None:
    long = tmp_path.joinpath(*(["a-rather-long-folder-name"] * 8), "checkpoint_000001")
    done = run_cli("export", str(long), "--out", str(tmp_path / "out"))
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and len(done.stderr) > 200, done.stderr
    assert done.stderr.startswith(f"error: CHECKPOINT {long}: missing; pass a trial's checkpoint_NNNNNN")


def test_a_usage_error_is_one_plain_line_on_a_pipe() -> None:
    done = run_cli("export", "ck", "--out", "o", "--dtype", "int8")
    assert done.returncode == 2
    last = done.stderr.rstrip("\n").splitlines()[-1]
    assert last.startswith("Error: Invalid value for '--dtype'") and last.endswith("'fp32', 'bf16'.")
    assert "╭" not in done.stderr and "│" not in done.stderr


def test_messages_and_results_are_not_folded_but_tables_keep_their_layout() -> None:
    probe = (
        "from rich.table import Table\n"
        "from mdf_search.cli.console import console, err_console, say\n"
        "from mdf_search.cli.results import print_warning\n"
        "say('wrote {}', '/x/' + 'long-name/' * 20)\n"
        "console.print('cache: ' + 'y' * 150)\n"
        "print_warning('part ' + 'z' * 150 + ' set aside')\n"
        "table = Table('module', 'parameters')\n"
        "table.add_row('a long module name ' * 8, '1')\n"
        "console.print(table)\n"
    )
    clean = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env=clean, timeout=120
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout.splitlines()
    assert out[0] == "wrote /x/" + "long-name/" * 20 and out[1] == "cache: " + "y" * 150
    assert done.stderr == "warning: part " + "z" * 150 + " set aside\n"
    table = out[2:]
    assert len(table) > 4 and all(len(line) <= 80 for line in table)  # the table wraps in its cells


# -- the live view owns the terminal -------------------------------------------------------------------


def batch(*lines: str, is_err: bool = True) -> dict[str, Any]:
    return {"lines": list(lines), "is_err": is_err, "pid": 7, "ip": "1.2.3.4"}


def test_quiet_worker_output_keeps_only_errors() -> None:
    printed: list[list[str]] = []
    handle = cluster.keeps_errors(lambda data: printed.append(data["lines"]))
    handle(batch("step 3 loss 0.4", "[WARNING] DeepSpeed: UserWarning: slow"))  # chatter
    handle(batch("Traceback (most recent call last):", is_err=False))  # stdout: never
    handle(
        batch(
            "epoch 2",
            "Traceback (most recent call last):",
            '  File "x.py", line 3',
            "ValueError: boom",
            "bye",
        )
    )
    handle(batch("2026-01-01 ERROR worker.py:9 -- a worker died"))
    handle(batch("ray.exceptions.RayTaskError(ValueError): failed"))
    assert printed == [
        ["Traceback (most recent call last):", '  File "x.py", line 3', "ValueError: boom"],
        ["2026-01-01 ERROR worker.py:9 -- a worker died"],
        ["ray.exceptions.RayTaskError(ValueError): failed"],
    ]


def test_quiet_tune_turns_off_the_box_and_the_incidental_loggers(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in (cluster.VERBOSE_ENV, cluster.TUNE_NEW_OUTPUT, cluster.TUNE_AUTO_LOGGERS_OFF):
        monkeypatch.delenv(key, raising=False)
    cluster.quiet_tune()
    assert os.environ[cluster.TUNE_NEW_OUTPUT] == "0" and os.environ[cluster.TUNE_AUTO_LOGGERS_OFF] == "1"
    assert logging.getLogger(cluster.TUNE_ANALYSIS_LOG).level == logging.ERROR
    monkeypatch.delenv(cluster.TUNE_NEW_OUTPUT)
    monkeypatch.setenv(cluster.VERBOSE_ENV, "1")
    monkeypatch.setenv(cluster.TUNE_AUTO_LOGGERS_OFF, "0")  # what the user set stays set
    cluster.quiet_tune()
    assert cluster.TUNE_NEW_OUTPUT not in os.environ and os.environ[cluster.TUNE_AUTO_LOGGERS_OFF] == "0"


def test_ray_s_token_notice_is_dropped_while_ray_starts_but_real_warnings_print() -> None:
    ((name, notice),) = cluster.RAY_NOTICES
    logger = logging.getLogger(name)  # its own handler: Ray's "ray" logger does not propagate to the root
    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage()[:38])  # type: ignore[method-assign]
    logger.addHandler(handler)
    try:
        with cluster._ray_notices_off():
            logger.warning(notice + " Ray cluster. Set RAY_AUTH_MODE=disabled to opt out.")
            logger.warning("Token authentication is disabled for this Ray cluster. Anyone ...")
        logger.warning(notice + " (after start-up: printed)")
    finally:
        logger.removeHandler(handler)
    assert seen == ["Token authentication is disabled for t", "Token authentication is enabled for th"]
    assert not logger.filters


QUIET_PROBE = """
import sys, tempfile
from mdf_search.cluster import connect, shutdown
import ray

@ray.remote
def chatty():
    print("WORKER-STDOUT-CHATTER")
    print("WORKER-STDERR-CHATTER", file=sys.stderr)
    try:
        raise ValueError("WORKER-ERROR")
    except ValueError:
        import traceback
        traceback.print_exc()

connect(temp_dir=tempfile.mkdtemp(prefix="mdfq-", dir="/tmp"), num_cpus=1, trial_slots=1)
ray.get(chatty.remote())
import time; time.sleep(3)  # worker output reaches the driver asynchronously
shutdown()
print("DONE")
"""


@pytest.mark.integration
def test_an_embedded_ray_prints_no_notices_and_only_worker_errors(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != cluster.VERBOSE_ENV}
    done = subprocess.run(
        [sys.executable, "-c", QUIET_PROBE],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=tmp_path,
    )
    both = done.stdout + done.stderr
    assert done.returncode == 0 and done.stdout.endswith("DONE\n"), both
    for notice in ("Started a local Ray instance", "Token authentication", "View the dashboard", "CHATTER"):
        assert notice not in both
    assert "Traceback (most recent call last)" in done.stderr and "ValueError: WORKER-ERROR" in done.stderr
