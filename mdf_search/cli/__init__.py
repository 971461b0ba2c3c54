"""The ``mdf-search`` command line: the app, its groups of commands, and ``main`` (the console script).

Only this package prints. The commands sit in one module per group and are mounted here at the top
level (``data`` as a sub-command): ``trial`` (model-summary, train, export, plan), ``study`` (validate,
sweep, resume), ``cluster`` (submit), ``results`` (leaderboard, report) and ``data``. The consoles and
the ``error:`` printer are in ``cli.console``; the options several groups share, and the choices of
every option with a fixed set of values, in ``cli.options``.

The root takes ``--version`` (this package's version and those of the stack it runs on, read from the
installed distributions' metadata: nothing is imported for it) and typer's ``--install-completion`` /
``--show-completion`` (bash, zsh, fish, PowerShell): completion offers commands, options and choices.
"""

from __future__ import annotations

import logging
import platform
import sys
from importlib.metadata import PackageNotFoundError, version
from typing import Annotated

import typer

from mdf_search.cli import cluster, data, results, study, trial
from mdf_search.cli.console import HELP_MARKUP, console, err_console

PROG = "mdf-search"  # the console script's name: usage lines and the completion variable _MDF_SEARCH_COMPLETE
STACK = ("torch", "ray", "deepspeed", "transformers")  # what a run's results depend on, shown by --version

app = typer.Typer(
    name=PROG,
    help="Distributed ablation search over the MDF-MLLM fundus classifier.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,
    rich_markup_mode=HELP_MARKUP,
)
app.add_typer(data.app, name="data", help="Prepare manifests, generate synthetic data, splits and caches.")
for group in (trial, study, cluster, results):
    app.add_typer(group.app)  # no name: the group's commands are top-level commands


def _installed(dist: str) -> str:
    try:
        return version(dist)
    except PackageNotFoundError:
        return "not installed"


def version_line() -> str:
    """``mdf-search 0.1.0 (Python 3.11.9; torch 2.x, ray 2.60.0, ...)``: versions from package metadata."""
    stack = ", ".join(f"{dist} {_installed(dist)}" for dist in STACK)
    return f"{PROG} {_installed(PROG)} (Python {platform.python_version()}; {stack})"


def _print_version(value: bool) -> None:
    if value:
        console.print(version_line(), markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit()


@app.callback()
def _root(
    show_version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_print_version,
            is_eager=True,
            help="Print the version of mdf-search and of torch, ray, deepspeed and transformers, and exit.",
        ),
    ] = False,
) -> None:
    """Distributed ablation search over the MDF-MLLM fundus classifier."""


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        app(prog_name=PROG)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
