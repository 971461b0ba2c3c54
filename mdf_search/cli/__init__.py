"""The ``mdf-search`` command line: the app, its groups of commands, and ``main`` (the console script).

Only this package prints. The commands sit in one module per group and are mounted here at the top
level (``data`` as a sub-command): ``trial`` (model-summary, train, export, plan), ``study`` (validate,
sweep, resume), ``cluster`` (submit), ``results`` (leaderboard, report) and ``data``. The consoles and
the ``error:`` printer are in ``cli.console``.
"""

from __future__ import annotations

import logging
import sys

import typer

from mdf_search.cli import cluster, data, results, study, trial
from mdf_search.cli.console import err_console

app = typer.Typer(
    name="mdf-search",
    help="Distributed ablation search over the MDF-MLLM fundus classifier.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(data.app, name="data", help="Prepare manifests, generate synthetic data, splits and caches.")
for group in (trial, study, cluster, results):
    app.add_typer(group.app)  # no name: the group's commands are top-level commands


@app.callback()
def _root() -> None:
    """Distributed ablation search over the MDF-MLLM fundus classifier."""


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        app()
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
