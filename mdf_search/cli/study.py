"""A study's commands: ``validate`` a search space, ``sweep`` it, ``resume`` a sweep.

A sweep runs in this process, on an embedded Ray or the one at ``--address``, with a live leaderboard;
when it ends it prints the leaderboard and writes the ablation report. ``mdf-search submit``
(``cli.cluster``) runs the same sweep as a job on a remote cluster.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mdf_search.cli.console import console, fail
from mdf_search.cli.options import AddressOption, storage_path
from mdf_search.cli.results import leaderboard_command, report_command
from mdf_search.cluster import connect
from mdf_search.search.runner import experiment_root, run_sweep
from mdf_search.search.space import SearchSpec, SpecError, load_spec
from mdf_search.search.validate import validate_files, validate_spec

app = typer.Typer()


def _load_spec(path: Path) -> SearchSpec:
    """The spec of a search-space file, checked completely (exit 2 with every problem listed)."""
    try:
        spec = load_spec(path)
    except SpecError as err:
        raise fail(str(err)) from None
    problems = validate_spec(spec)
    if problems:
        raise fail(f"{path}: {len(problems)} problem(s):\n" + "\n".join(f"  - {p}" for p in problems))
    return spec


@app.command()
def validate(
    files: Annotated[list[Path], typer.Argument(help="search-space YAML files")],
    deep: Annotated[
        bool,
        typer.Option(
            "--deep",
            help="also run every arm's model at full preset size through one forward, loss and backward on a "
            "Collator batch, with fake tensors (no weights; seconds per 11b arm)",
        ),
    ] = False,
) -> None:
    """Check search-space files completely without running anything (exit 2 on any problem)."""
    code, lines = validate_files(files)
    for line in lines:
        console.print(line, highlight=False)
    if deep and code == 0:
        from mdf_search.search.deep import check_files  # torch and transformers: only for --deep

        code, _ = check_files(files, emit=lambda line: console.print(line, highlight=False))
    raise typer.Exit(code)


def _run_study(
    spec: SearchSpec,
    storage: str,
    address: str | None,
    resume: bool | None,
    report: bool,
    report_dir: str | None = None,
) -> None:
    from mdf_search.report.live import LiveLeaderboard  # polars and scipy.stats: not for `validate`

    connect(address, trial_slots=spec.resources.concurrent_trials)
    root = experiment_root(storage_path(storage), spec.experiment)
    try:
        with LiveLeaderboard(root, spec, console=console) as view:
            outcome = run_sweep(spec, storage=storage_path(storage), on_event=view.on_event, resume=resume)
    except (FileNotFoundError, FileExistsError) as err:
        raise fail(str(err)) from None
    console.print(f"results: {outcome.experiment_root} ({outcome.trials} trials finished this session)")
    leaderboard_command(
        outcome.experiment_root, top=10, by=None, where=None, group_by="arm", fmt="table", watch=False
    )
    if report and "://" not in outcome.experiment_root:
        out = report_dir or f"reports/{spec.experiment}"
        report_command(outcome.experiment_root, out)  # prints where the report went
    if outcome.stopped_reason:
        raise fail(f"sweep stopped: {outcome.stopped_reason}", code=1)


@app.command()
def sweep(
    space: Annotated[Path, typer.Argument(help="search-space YAML (see search_spaces/)")],
    storage: Annotated[str, typer.Option(help="results root: a path or an s3:// / gs:// URI")] = "runs",
    address: AddressOption = None,
    fresh: Annotated[
        bool, typer.Option(help="refuse to continue an existing experiment of the same name")
    ] = False,
    report: Annotated[bool, typer.Option(help="write the ablation report when the sweep ends")] = True,
    report_dir: Annotated[
        str | None,
        typer.Option(
            help="where the report goes (default reports/<experiment>; in a Ray job use shared storage)"
        ),
    ] = None,
) -> None:
    """Run a study with a live leaderboard, then print the leaderboard and write the ablation report."""
    spec = _load_spec(space)
    _run_study(spec, storage, address, resume=False if fresh else None, report=report, report_dir=report_dir)


@app.command()
def resume(
    experiment: Annotated[Path, typer.Argument(help="an experiment directory, e.g. runs/smoke")],
    address: Annotated[str | None, typer.Option(help="Ray address")] = None,
) -> None:
    """Continue a sweep after a crash or Ctrl-C: finished trials are kept, unfinished ones resume."""
    spec_file = experiment / "spec.yaml"
    if not spec_file.is_file():
        raise fail(
            f"{experiment}: no spec.yaml; is this an experiment directory written by `mdf-search sweep`?"
        )
    spec = _load_spec(spec_file)
    _run_study(spec, str(experiment.resolve().parent), address, resume=True, report=True)
