"""A study's commands: ``validate`` a search space, ``sweep`` it, ``resume`` a sweep.

A sweep runs in this process, on an embedded Ray or the one at ``--address``, with a live leaderboard;
when it ends it prints the leaderboard and writes the ablation report. ``mdf-search submit``
(``cli.cluster``) runs the same sweep as a job on a remote cluster.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from mdf_search.cli.console import console, fail
from mdf_search.cli.options import AddressOption, storage_path
from mdf_search.cli.results import leaderboard_command, report_command
from mdf_search.cluster import AddressError, connect, ray_address
from mdf_search.config import ConfigError
from mdf_search.data import storage as store
from mdf_search.search.runner import experiment_root, run_sweep
from mdf_search.search.space import SearchSpec, SpecError, load_spec
from mdf_search.search.validate import validate_files, validate_spec
from mdf_search.yamlio import read_yaml_mapping

app = typer.Typer()


def _load_spec(path: Path | str) -> SearchSpec:
    """The spec of a search-space file, checked completely (exit 2 with every problem listed). A URI
    (``s3://bucket/runs/name/spec.yaml``: an experiment's recorded spec) is read through the storage's
    filesystem; its messages and ``spec.path`` name the URI."""
    if not store.is_uri(str(path)):
        return _checked(Path(path), str(path))
    uri = str(path)
    root, _, name = uri.rpartition("/")
    try:
        with store.local_copy(root, name) as local:
            spec = _checked(local, uri)
    except FileNotFoundError:
        raise fail(f"{uri}: no such file; give a search-space file, or an experiment's spec.yaml") from None
    except OSError as err:
        raise fail(f"{uri}: cannot be read ({err}); check the URI and its credentials") from None
    return dataclasses.replace(spec, path=uri)


def _checked(path: Path, shown: str) -> SearchSpec:
    """``load_spec`` and ``validate_spec`` of ``path``; messages name ``shown`` (a URI it was copied from)."""

    def named(text: str) -> str:
        return text.replace(str(path), shown) if str(path) != shown else text

    try:
        spec = load_spec(path)
    except SpecError as err:
        raise fail(named(str(err))) from None
    problems = validate_spec(spec)
    if problems:
        raise fail(named(f"{path}: {len(problems)} problem(s):\n" + "\n".join(f"  - {p}" for p in problems)))
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
    storage: Annotated[
        str | None,
        typer.Option(
            help="the --storage the sweep will use (with a cluster: where the data reach other nodes)"
        ),
    ] = None,
    address: Annotated[
        str | None,
        typer.Option(
            help="the Ray cluster the sweep will run on (default RAY_ADDRESS): warn when the trials' data "
            "cannot reach its other nodes; nothing is contacted"
        ),
    ] = None,
) -> None:
    """Check search-space files completely without running anything (exit 2 on any problem)."""
    cluster = bool(address or os.environ.get("RAY_ADDRESS"))
    code, lines = validate_files(files, cluster=cluster, storage=storage)
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
SPEC_FILE = "spec.yaml"  # the spec a sweep records beside its results (search.record)


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


def _read_mapping(path: str) -> dict[str, object]:
    """A YAML file's mapping, the file a local path or a URI (exit 2 naming it when it does not load)."""
    if not store.is_uri(path):
        try:
            return read_yaml_mapping(path)
        except ConfigError as err:
            raise fail(str(err)) from None
    root, _, name = path.rpartition("/")
    try:
        with store.local_copy(root, name) as local:
            try:
                return read_yaml_mapping(local)
            except ConfigError as err:
                raise fail(str(err).replace(str(local), path)) from None
    except OSError as err:
        raise fail(f"{path}: cannot be read ({err}); check the URI and its credentials") from None


def _differences(recorded: str, space: str) -> list[str]:
    """Top-level keys whose values differ between the recorded spec and ``space`` (paths or URIs)."""
    old, new = _read_mapping(recorded), _read_mapping(space)
    return [key for key in (*old, *(k for k in new if k not in old)) if old.get(key) != new.get(key)]


def _check_report_dir(out: str, root: str) -> None:
    """A ``--report-dir`` (default ``<root>/report``) the report would refuse is refused before Ray
    starts, not after the whole sweep; a URI is checked through its filesystem."""
    from mdf_search.report.outdir import ReportError, check_out, check_remote_out  # polars: not for validate

    try:
        if store.is_uri(out):
            check_remote_out(out, root)
        else:
            _writable_dir(Path(out), "--report-dir")
            check_out(out, root)
    except ReportError as err:
        raise fail(f"--report-dir: {err}") from None
    except OSError as err:
        raise fail(
            f"--report-dir {out}: cannot be listed ({err}); check the URI and its credentials"
        ) from None


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
    try:
        recorded = store.is_file(root, SPEC_FILE)
    except OSError as err:
        raise fail(
            f"--storage {storage}: cannot be listed ({err}); check the URI and its credentials"
        ) from None
    if fresh and (recorded or _started(root)):
        raise fail(
            f"{root}: the experiment exists (--fresh refuses to continue it); continue it with "
            f"`mdf-search resume {root}`, or rename `experiment:` in {spec.path}, or choose another --storage"
        )
    if recorded and (changed := _differences(store.join(root, SPEC_FILE), str(spec.path))):
        raise fail(
            f"{store.join(root, SPEC_FILE)}: experiment {spec.experiment!r} was started from a spec that "
            f"differs from {spec.path} in {', '.join(changed[:8])}; continue it as it was with `mdf-search "
            f"resume {root}`, or rename `experiment:` to start a new study"
        )
    if report:
        _check_report_dir(report_dir or store.join(root, REPORT_FOLDER), root)
    return root


def _check_resume(experiment: str) -> tuple[SearchSpec, str]:
    """Everything ``resume`` can check without a cluster: the spec, and the storage it lives in.
    ``experiment``: a directory or a URI (``s3://bucket/runs/name``)."""
    if store.is_uri(experiment):
        return _check_remote_resume(experiment.rstrip("/"))
    directory = Path(experiment)
    if not directory.exists():
        raise fail(
            f"{experiment}: no such directory; give an experiment directory (e.g. runs/smoke), or start "
            "the study with `mdf-search sweep SPACE.yaml`"
        )
    if not directory.is_dir():
        raise fail(f"{experiment}: is not a directory; give an experiment directory, e.g. runs/smoke")
    spec_file = directory / SPEC_FILE
    if not spec_file.is_file():
        raise fail(
            f"{experiment}: no spec.yaml; is this an experiment directory written by `mdf-search sweep`?"
        )
    spec = _load_spec(spec_file)
    if spec.experiment != directory.resolve().name:
        raise fail(
            f"{spec_file}: names experiment {spec.experiment!r}, but the directory is "
            f"{directory.resolve().name!r}; Tune restores an experiment under its own name: rename the "
            f"directory back to {spec.experiment!r}"
        )
    storage = str(directory.resolve().parent)
    if not _started(str(directory.resolve())):
        raise fail(
            f"{experiment}: nothing to resume (no Tune state {TUNE_STATE}: the sweep stopped before its "
            f"first trial); start it again with `mdf-search sweep {spec_file}`"
        )
    _writable_dir(directory, "resume")
    return spec, storage


def _check_remote_resume(root: str) -> tuple[SearchSpec, str]:
    """``_check_resume`` of an experiment on object storage, read through its filesystem."""
    _storage(root)  # a known scheme
    try:
        has_spec = store.is_file(root, SPEC_FILE)
    except OSError as err:
        raise fail(f"{root}: cannot be listed ({err}); check the URI and its credentials") from None
    if not has_spec:
        raise fail(
            f"{root}: no spec.yaml there; give the URI of an experiment written by `mdf-search sweep` "
            "(--storage, then the experiment's name: e.g. s3://bucket/runs/smoke)"
        )
    spec = _load_spec(store.join(root, SPEC_FILE))
    name = root.rsplit("/", 1)[-1]
    if spec.experiment != name:
        raise fail(
            f"{store.join(root, SPEC_FILE)}: names experiment {spec.experiment!r}, but the folder is "
            f"{name!r}; Tune restores an experiment under its own name: move it back to {spec.experiment!r}"
        )
    if not _started(root):
        raise fail(
            f"{root}: nothing to resume (no Tune state {TUNE_STATE}: the sweep stopped before its first "
            f"trial); start it again with `mdf-search sweep {store.join(root, SPEC_FILE)}`"
        )
    return spec, root.rsplit("/", 1)[0]


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
    if report:
        out = report_dir or store.join(outcome.experiment_root, REPORT_FOLDER)  # beside the results it reads
        code = report_command(outcome.experiment_root, out)  # prints where the report went
        if code:
            raise typer.Exit(code)  # the report printed its error; the results are kept
    if outcome.stopped_reason:
        raise fail(f"sweep stopped: {outcome.stopped_reason}", code=1)


@app.command()
def sweep(
    space: Annotated[
        str,
        typer.Argument(
            help="search-space YAML (see search_spaces/), or an experiment's recorded spec.yaml URI"
        ),
    ],
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
    experiment: Annotated[
        str, typer.Argument(help="an experiment directory or URI, e.g. runs/smoke or s3://bucket/runs/smoke")
    ],
    address: Annotated[str | None, typer.Option(help="Ray address")] = None,
) -> None:
    """Continue a sweep after a crash or Ctrl-C: finished trials are kept, unfinished ones resume."""
    spec, storage = _check_resume(experiment)
    _check_address(address)
    _run_study(spec, storage, address, resume=True, report=True)
