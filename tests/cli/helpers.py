"""What the command-line tests share: one CliRunner over the real app, and plain output."""

from __future__ import annotations

import re

from typer.testing import CliRunner, Result

from mdf_search.cli import app

# Wide enough that rich folds no path: the tests read what a line says, not where the terminal wraps it.
runner = CliRunner(env={"COLUMNS": "1000"})


def invoke(*args: str) -> Result:
    """``mdf-search ARGS...`` in this process; stdout and stderr apart (``result.stdout``/``.stderr``)."""
    return runner.invoke(app, list(args))


def plain(text: str) -> str:
    """The text without colour codes, its whitespace runs folded to one space (rich wraps to the width)."""
    return " ".join(re.sub(r"\x1b\[[0-9;]*m", "", text).split())
