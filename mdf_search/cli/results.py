"""Commands that read an experiment's results: ``leaderboard`` and ``report``.

``leaderboard_command`` and ``report_command`` return the exit status, so a sweep can print the
leaderboard and write the report when it ends without leaving the process.

A results part that cannot be read (0-byte, truncated, not Parquet, wrong types) does not stop either
command: the store moves it to ``quarantine/<table>/`` (a rename, never a deletion), and the command
shows what is readable and warns, naming the file and the rows set aside: on stderr (``warning: ...``)
and, for the table and the report, beside the results too. A reader that may not write the experiment
folder leaves the part where it is, skips it and warns the same way; so does every later read.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.live import Live

from mdf_search.cli.console import console, err_console, print_error, wide_console
from mdf_search.cli.options import Format
from mdf_search.escape import terminal, visible

app = typer.Typer()
POLL_S = 2.0  # --watch: seconds between two reads of the results
MAX_TOP = 1 << 31  # a larger --top shows every row just the same


def print_warning(message: str) -> None:
    """``warning: <message>`` on stderr, the message shown as text (it names files from the data)."""
    err_console.print(f"[yellow]warning:[/] {terminal(message)}", highlight=False, soft_wrap=True)


def leaderboard_command(
    experiment_dir: str,
    top: int = 20,
    by: str | None = None,
    where: str | None = None,
    group_by: str | None = None,
    fmt: str = "table",
    watch: bool = False,
) -> int:
    """Print the leaderboard; 0 on success, 2 on a missing/empty experiment or a bad option."""
    # polars and scipy.stats: loaded by the commands that read results, not by `mdf-search --help`
    from mdf_search.report.experiment import ExperimentError, load_experiment
    from mdf_search.report.leaderboard import FORMATS, Board, leaderboard_frame, render_text, rich_table
    from mdf_search.report.where import WhereError

    out = wide_console()
    if fmt not in FORMATS:
        print_error(f"--format must be one of {', '.join(FORMATS)}, but got {fmt!r}")
        return 2
    if top < 1:
        print_error(f"--top must be >= 1, but got {top}")
        return 2

    top = min(top, MAX_TOP)
    warnings: list[str] = []

    def build() -> Board:
        exp = load_experiment(experiment_dir)
        warnings[:] = exp.warnings
        return leaderboard_frame(exp, top, by, where, group_by)

    try:
        board = build()
    except (ExperimentError, WhereError) as error:
        print_error(visible(error))
        return 2
    if not watch:
        if fmt == "table":
            out.print(rich_table(board))  # its caption holds the warnings
        else:  # the data alone on stdout; the caption's notes and warnings on stderr
            for note in board.notes:
                if note not in warnings:
                    err_console.print(f"note: {terminal(note)}", highlight=False, soft_wrap=True)
            for message in warnings:
                print_warning(message)
            sys.stdout.write(render_text(board, fmt))
        return 0
    try:
        with Live(rich_table(board), console=out, refresh_per_second=1, auto_refresh=False) as live:
            while True:
                time.sleep(POLL_S)
                try:
                    board = build()
                except (ExperimentError, WhereError) as error:
                    board.notes = [f"refresh failed: {error}"]  # shown as text by rich_table
                live.update(rich_table(board), refresh=True)
    except KeyboardInterrupt:
        return 0


def report_command(experiment_dir: str, out: str) -> int:
    """Write the ablation report and say where it went: 0 when written, 2 for a missing or empty experiment
    or a refused ``--out``, 1 when the report was written with failed sections (``ReportError.code``).

    ``experiment_dir`` and ``out`` are local paths or URIs (``s3://``, ``gs://``): a report for a URI is
    built in a local temporary folder and uploaded there (``report.outdir``)."""
    # matplotlib, polars and scipy: loaded when a report is written, not by `mdf-search --help`
    from mdf_search.report.ablation import write_report
    from mdf_search.report.experiment import ExperimentError
    from mdf_search.report.outdir import MARKER, ReportError, check_remote_out, fetch_remote, publish_remote
    from mdf_search.results.store import TABLES, ResultsError, ResultsStore

    remote = "://" in out
    staging = Path(tempfile.mkdtemp(prefix="mdf-search-report-")) if remote else None
    local = staging / Path(out.rstrip("/")).name if staging is not None else None

    tables = (*TABLES, "predictions")
    store = ResultsStore(experiment_dir) if "://" in experiment_dir or Path(experiment_dir).is_dir() else None

    def warn() -> None:  # what the check set aside, and what the report's own reads did
        for message in store.warnings(tables) if store is not None else ():
            print_warning(message)

    try:
        if store is not None:
            store.check(tables)  # unreadable parts set aside (and named) before the report reads them
        if local is not None:
            check_remote_out(out, experiment_dir if "://" in experiment_dir else "")
            fetch_remote(out, local)
        try:
            target = write_report(experiment_dir, str(local or out))
        except ReportError as error:  # written with failed sections (code 1): uploaded all the same
            if local is not None and error.code == 1 and (local / MARKER).is_file():
                publish_remote(local, out)
            raise
        if local is not None:
            publish_remote(local, out)
    except (ExperimentError, ResultsError) as error:
        warn()
        print_error(visible(error))
        return int(getattr(error, "code", 2))  # ReportError: 1 when the report itself failed
    except OSError as error:  # the storage of a URI --out could not be listed or read
        warn()
        print_error(visible(ReportError(f"--out {error}; check the URI and its credentials")))
        return 2
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    warn()
    where = out.rstrip("/") if remote else str(target)
    console.print(
        f"report: {terminal(where + '/report.md')} and {terminal(where + '/report.html')}",
        highlight=False,
        soft_wrap=True,
    )
    return 0


@app.command()
def leaderboard(
    experiment: Annotated[str, typer.Argument(help="experiment directory or URI, e.g. runs/smoke")],
    top: Annotated[int, typer.Option(help="rows to show")] = 20,
    by: Annotated[
        str | None,
        typer.Option(
            help="metric to rank by (default: the study's); a cost (wall_s, train_s, ...) ranks the "
            "cheapest first; 'phases': median seconds per phase, per arm (or --group-by)"
        ),
    ] = None,
    where: Annotated[
        str | None, typer.Option(help='filter, e.g. \'status == "completed" and fusion.levels == "1234"\'')
    ] = None,
    group_by: Annotated[
        str | None, typer.Option("--group-by", help="arm: collapse seeds into mean ± 95% CI")
    ] = None,
    fmt: Annotated[Format, typer.Option("--format", help="a rich table, or text for other tools")] = "table",
    watch: Annotated[bool, typer.Option(help="refresh every 2 s while a sweep runs elsewhere")] = False,
) -> None:
    """The leaderboard of an experiment, from its Parquet results only."""
    raise typer.Exit(leaderboard_command(experiment, top, by, where, group_by, fmt, watch))


@app.command()
def report(
    experiment: Annotated[
        str, typer.Argument(help="experiment directory or URI, e.g. runs/smoke or s3://bucket/runs/smoke")
    ],
    out: Annotated[
        str | None,
        typer.Option(help="output directory or URI (default: reports/<experiment name>)"),
    ] = None,
) -> None:
    """The ablation report: report.md, a self-contained report.html, figures/ and tables/."""
    target = out if out is not None else f"reports/{Path(experiment.rstrip('/')).name}"
    raise typer.Exit(report_command(experiment, target))
