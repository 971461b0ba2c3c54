"""The app itself: its commands, the console script, ``python -m``, Ctrl-C, and the one error printer."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import entry_points

import pytest

import mdf_search.cli
from mdf_search.cli.console import fail, print_error
from tests.cli.helpers import invoke, plain

COMMANDS = (
    "data", "model-summary", "train", "export", "plan", "validate", "sweep", "resume", "submit",
    "leaderboard", "report",
)  # fmt: skip


def test_every_command_is_mounted_at_the_top_level() -> None:
    result = invoke("--help")
    assert result.exit_code == 0, result.output
    # rich's help boxes on a terminal ("│ name  ..."), click's indented lines off one ("  name  ...")
    listed = [line.strip("│ ").split()[0] for line in result.stdout.splitlines() if line.strip("│ ")]
    assert set(COMMANDS) <= set(listed)
    data = invoke("data", "--help")
    assert data.exit_code == 0 and {"prepare", "synth", "split", "cache"} <= set(plain(data.stdout).split())


def test_the_console_script_is_main_and_python_m_runs_it() -> None:
    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "mdf-search"]
    assert script.value == "mdf_search.cli:main" and script.load() is mdf_search.cli.main
    done = subprocess.run(
        [sys.executable, "-m", "mdf_search.cli", "plan", "--set", "oops"], capture_output=True, text=True
    )
    assert done.returncode == 2 and done.stderr.startswith("error: --set expects KEY=VALUE")


def test_ctrl_c_exits_130_with_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def interrupted(**_: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(mdf_search.cli, "app", interrupted)
    with pytest.raises(SystemExit) as ended:
        mdf_search.cli.main()
    assert ended.value.code == 130 and capsys.readouterr().err == "interrupted\n"


def test_an_error_is_one_unfolded_paragraph_printed_as_written(capsys: pytest.CaptureFixture[str]) -> None:
    message = "x.yaml: fusion.levels: [bold]9[/] is not in 1..4; " + "long " * 40 + "end"
    print_error(message)
    err = capsys.readouterr().err
    assert err == f"error: {message}\n"  # markup-like text stays, no folding at 80 columns
    exit_ = fail("bad", code=1)
    assert exit_.exit_code == 1 and capsys.readouterr().err == "error: bad\n"
