"""A study's commands: ``validate`` a search space, ``sweep`` it, ``resume`` a sweep.

A sweep runs in this process, on an embedded Ray or the one at ``--address``, with a live leaderboard;
when it ends it prints the leaderboard and writes the ablation report. ``mdf-search submit``
(``cli.cluster``) runs the same sweep as a job on a remote cluster.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated

import typer

from mdf_search.cli.console import console, fail
from mdf_search.cli.options import AddressOption, storage_path
from mdf_search.cli.results import leaderboard_command, report_command
from mdf_search.cluster import AddressError, connect, ray_address
from mdf_search.config import ConfigError
from mdf_search.search.runner import experiment_root, run_sweep
from mdf_search.search.space import SearchSpec, SpecError, load_spec
from mdf_search.search.validate import validate_files, validate_spec
from mdf_search.yamlio import read_yaml_mapping

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


# Schemes of the object stores and file systems Tune's storage (pyarrow) takes.
STORAGE_SCHEMES = ("s3", "gs", "gcs", "hdfs", "abfs", "abfss", "file")
REPORT_FOLDER = "report"  # the sweep's report: <storage>/<experiment>/report (report.outdir.OWN_FOLDER)
TUNE_STATE = "experiment_state-*.json"  # Tune's experiment checkpoint: what `resume` restores


def _writable_dir(path: Path, option: str) -> None:
    """Exit 2 unless ``path`` is a directory, or could be made one, that this process can write."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise fail(
            f"{option} {path}: {probe} is not a directory; choose a directory (it is created if missing)"
        )
    try:  # the one reliable test (read-only mounts, /proc, ACLs): make and remove an empty directory
        Path(tempfile.mkdtemp(prefix=".mdf-search-probe-", dir=probe)).rmdir()
    except OSError as err:
        raise fail(
            f"{option} {path}: cannot write under {probe} ({err.strerror or err}); choose a writable directory"
        ) from None


def _storage(storage: str) -> str:
    """``--storage`` checked and made absolute (Ray requires it); a URI only by its scheme."""
    if not storage.strip():
        raise fail("--storage: is empty; give a results directory (default runs) or an s3:// or gs:// URI")
    if "://" in storage:
        scheme = storage.split("://", 1)[0].lower()
        if scheme not in STORAGE_SCHEMES:
            raise fail(
                f"--storage {storage}: unknown scheme {scheme!r}; give a local directory or a URI starting "
                f"with one of {', '.join(s + '://' for s in STORAGE_SCHEMES)} (e.g. s3://bucket/runs)"
            )
        return storage
    _writable_dir(Path(storage).expanduser(), "--storage")
    return storage_path(storage)


def _started(root: str) -> bool:
    """Whether Tune has recorded an experiment at ``root`` (what ``Tuner.can_restore`` tests)."""
    if "://" in root:
        from ray import tune  # pyarrow's file systems; starts no cluster

        try:
            return bool(tune.Tuner.can_restore(root))
        except Exception as err:  # credentials or network: the runner asks again once Ray is up
            raise fail(
                f"--storage {root}: cannot be listed ({err}); check the URI and its credentials"
            ) from None
    return any(Path(root).glob(TUNE_STATE))


def _differences(recorded: Path, space: Path) -> list[str]:
    """Top-level keys whose values differ between the recorded spec and ``space``."""
    try:
        old, new = read_yaml_mapping(recorded), read_yaml_mapping(space)
    except ConfigError as err:
        raise fail(str(err)) from None
    return [key for key in (*old, *(k for k in new if k not in old)) if old.get(key) != new.get(key)]


def _check_sweep(spec: SearchSpec, storage: str, fresh: bool, report: bool, report_dir: str | None) -> str:
    """Everything ``sweep`` can check without a cluster; the experiment root on success (exit 2 else)."""
    if report_dir is not None and not report:
        raise fail("--report-dir: is given with --no-report, which writes no report; drop one of them")
    storage = _storage(storage)
    root = experiment_root(storage, spec.experiment)
    if "://" not in root:
        directory = Path(root)
        if directory.exists() and not directory.is_dir():
            raise fail(
                f"{root}: is not a directory, so experiment {spec.experiment!r} cannot be written there; "
                "move the file away, rename `experiment:`, or choose another --storage"
            )
        recorded = directory / "spec.yaml"
        if fresh and (recorded.exists() or _started(root)):
            raise fail(
                f"{root}: the experiment exists (--fresh refuses to continue it); continue it with "
                f"`mdf-search resume {root}`, or rename `experiment:` in {spec.path}, or choose another --storage"
            )
        if recorded.is_file() and (changed := _differences(recorded, Path(spec.path))):
            raise fail(
                f"{recorded}: experiment {spec.experiment!r} was started from a spec that differs from "
                f"{spec.path} in {', '.join(changed[:8])}; continue it as it was with `mdf-search resume "
                f"{root}`, or rename `experiment:` to start a new study"
            )
    elif fresh and _started(root):
        raise fail(
            f"{root}: the experiment exists (--fresh refuses to continue it); continue it with "
            f"`mdf-search resume {root}`, or rename `experiment:`"
        )
    if report and "://" not in root:
        out = report_dir or f"{root}/{REPORT_FOLDER}"
        _writable_dir(Path(out), "--report-dir")
        from mdf_search.report.outdir import ReportError, check_out  # polars: not for `validate`

        try:  # a folder the report would refuse is refused now, not after the whole sweep
            check_out(out, root)
        except ReportError as err:
            raise fail(f"--report-dir: {err}") from None
    return root


def _check_resume(experiment: Path) -> tuple[SearchSpec, str]:
    """Everything ``resume`` can check without a cluster: the spec, and the storage it lives in."""
    if not experiment.exists():
        raise fail(
            f"{experiment}: no such directory; give an experiment directory (e.g. runs/smoke), or start "
            "the study with `mdf-search sweep SPACE.yaml`"
        )
    if not experiment.is_dir():
        raise fail(f"{experiment}: is not a directory; give an experiment directory, e.g. runs/smoke")
    spec_file = experiment / "spec.yaml"
    if not spec_file.is_file():
        raise fail(
            f"{experiment}: no spec.yaml; is this an experiment directory written by `mdf-search sweep`?"
        )
    spec = _load_spec(spec_file)
    if spec.experiment != experiment.resolve().name:
        raise fail(
            f"{spec_file}: names experiment {spec.experiment!r}, but the directory is "
            f"{experiment.resolve().name!r}; Tune restores an experiment under its own name: rename the "
            f"directory back to {spec.experiment!r}"
        )
    storage = str(experiment.resolve().parent)
    if not _started(str(experiment.resolve())):
        raise fail(
            f"{experiment}: nothing to resume (no Tune state {TUNE_STATE}: the sweep stopped before its "
            f"first trial); start it again with `mdf-search sweep {spec_file}`"
        )
    _writable_dir(experiment, "resume")
    return spec, storage


def _check_address(address: str | None) -> None:
    """A bad ``--address`` or ``RAY_ADDRESS`` is refused before Ray starts or anything is written."""
    try:
        ray_address(address)
    except AddressError as err:
        raise fail(str(err)) from None


def _run_study(
    spec: SearchSpec,
    storage: str,
    address: str | None,
    resume: bool | None,
    report: bool,
    report_dir: str | None = None,
) -> None:
    """Run the study; every check that needs no cluster has passed (``_check_sweep``/``_check_resume``)."""
    from mdf_search.report.live import LiveLeaderboard  # polars and scipy.stats: not for `validate`

    connect(address, trial_slots=spec.resources.concurrent_trials)
    root = experiment_root(storage, spec.experiment)
    try:
        with LiveLeaderboard(root, spec, console=console) as view:
            outcome = run_sweep(spec, storage=storage, on_event=view.on_event, resume=resume)
    except (FileNotFoundError, FileExistsError) as err:
        raise fail(str(err)) from None
    console.print(f"results: {outcome.experiment_root} ({outcome.trials} trials finished this session)")
    leaderboard_command(
        outcome.experiment_root, top=10, by=None, where=None, group_by="arm", fmt="table", watch=False
    )
    if outcome.unfinished and not outcome.stopped_reason:  # Ctrl-C: Tune saved its state and returned
        raise fail(
            f"interrupted: {outcome.unfinished} planned trials unfinished (no report written); continue "
            f"with `mdf-search resume {outcome.experiment_root}`",
            code=130,
        )
    if report and "://" not in outcome.experiment_root:
        out = report_dir or f"{outcome.experiment_root}/{REPORT_FOLDER}"  # beside the results it reads
        code = report_command(outcome.experiment_root, out)  # prints where the report went
        if code:
            raise typer.Exit(code)  # the report printed its error; the results are kept
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
            help="where the report goes (default <storage>/<experiment>/report, beside the results, so a "
            "Ray job's report lands on the study's storage, not in its working directory)"
        ),
    ] = None,
) -> None:
    """Run a study with a live leaderboard, then print the leaderboard and write the ablation report.

    An existing experiment of the same name is continued when its recorded spec is the same; every check
    that needs no cluster (the spec, --storage, an existing experiment) runs before Ray starts."""
    spec = _load_spec(space)
    root = _check_sweep(spec, storage, fresh, report, report_dir)
    _check_address(address)
    storage = root.rsplit("/", 1)[0]
    _run_study(spec, storage, address, resume=False if fresh else None, report=report, report_dir=report_dir)


@app.command()
def resume(
    experiment: Annotated[Path, typer.Argument(help="an experiment directory, e.g. runs/smoke")],
    address: Annotated[str | None, typer.Option(help="Ray address")] = None,
) -> None:
    """Continue a sweep after a crash or Ctrl-C: finished trials are kept, unfinished ones resume."""
    spec, storage = _check_resume(experiment)
    _check_address(address)
    _run_study(spec, storage, address, resume=True, report=True)
