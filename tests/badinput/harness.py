"""The bad-input catalogue's one check: a command given bad input exits 2 with a clear error and
changes nothing it is not documented to write.

Each area of input (CLI arguments, search-space YAML, dataset trees, checkpoints, results folders,
cluster addresses) keeps a table of :class:`Case` in its own ``test_*.py`` and runs every row through
:func:`check`. A case names the words its error must contain (the file, the field and the fix), and the
paths the command may write; every other file under the case's folder is hashed before and after.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path

import pytest

from tests.cli.helpers import invoke, plain


@dataclass(frozen=True)
class Case:
    """One bad input: the command line, how to lay out its folder, and what its error must say.

    ``args`` and ``expect`` may hold ``{tmp}``, replaced by the case's folder. ``expect`` are regular
    expressions, matched case-insensitively against stdout + stderr with colour codes removed and
    whitespace folded. ``may_write`` are glob patterns, relative to the folder, of paths the command is
    documented to write even when it refuses (none, for nearly every case).
    """

    id: str
    args: tuple[str, ...]
    expect: tuple[str, ...]
    setup: Callable[[Path], None] | None = None
    may_write: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    code: int = 2


def tree_state(root: Path) -> dict[str, str]:
    """Every path under ``root`` mapped to a digest of what it is: file bytes, link target, or ``dir``."""
    state: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            if path.is_symlink():
                state[rel] = "link:" + os.readlink(path)
            elif path.is_dir():
                state[rel] = "dir"
            else:
                state[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return state


def changed_paths(before: dict[str, str], after: dict[str, str], allowed: tuple[str, ...]) -> list[str]:
    """Paths added, removed or rewritten between two ``tree_state`` snapshots, minus the allowed ones."""
    paths = {p for p in before.keys() | after.keys() if before.get(p) != after.get(p)}
    return sorted(p for p in paths if not any(fnmatch(p, pattern) for pattern in allowed))


def check(case: Case, tmp: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run ``case`` in ``tmp`` (the working directory) and assert the contract; returns the plain output."""
    if case.setup is not None:
        case.setup(tmp)
    monkeypatch.chdir(tmp)
    for key, value in case.env.items():
        monkeypatch.setenv(key, value.format(tmp=tmp))
    before = tree_state(tmp)
    result = invoke(*(arg.format(tmp=tmp) for arg in case.args))
    output = plain(result.stdout + result.stderr)
    unexpected = result.exception if not isinstance(result.exception, SystemExit) else None
    assert unexpected is None, f"{case.id}: raised {unexpected!r} instead of a clear error; output: {output}"
    assert "Traceback" not in output, f"{case.id}: traceback on the terminal: {output}"
    assert result.exit_code == case.code, f"{case.id}: exit {result.exit_code}, not {case.code}: {output}"
    for pattern in case.expect:
        wanted = pattern.format(tmp=tmp)
        assert re.search(wanted, output, re.IGNORECASE), f"{case.id}: {wanted!r} not in: {output}"
    changed = changed_paths(before, tree_state(tmp), case.may_write)
    assert not changed, f"{case.id}: changed {changed}; output: {output}"
    return output


def ids(cases: list[Case]) -> list[str]:
    return [case.id for case in cases]


def layout(*steps: Callable[[Path], None]) -> Callable[[Path], None]:
    """A case's ``setup`` that runs ``steps`` in order."""

    def setup(tmp: Path) -> None:
        for step in steps:
            step(tmp)

    return setup


def write(name: str, text: str = "mine\n") -> Callable[[Path], None]:
    """A setup step: the file ``name`` (under the case's folder) holding ``text``."""

    def step(tmp: Path) -> None:
        path = tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    return step


def mkdir(name: str) -> Callable[[Path], None]:
    """A setup step: the folder ``name`` (and its parents)."""
    return lambda tmp: (tmp / name).mkdir(parents=True, exist_ok=True)
