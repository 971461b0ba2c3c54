"""``mdf-search data``: prepare a manifest, generate synthetic data, make splits, build the cache.

The library below (``mdf_search.data``) returns what it made and only logs; these commands print it
(rich tables, progress bars on stderr). A :class:`~mdf_search.data.schema.DataError` or ``ValueError``
becomes the one-paragraph ``error:`` message and exit code 2.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from mdf_search.cli.console import HELP_MARKUP, console, err_console, fail
from mdf_search.cli.options import SplitScheme
from mdf_search.config import SYNTHETIC_MAX_SIZE, SYNTHETIC_MIN_IMAGES, SYNTHETIC_MIN_SIZE, DataConfig
from mdf_search.data.cache import build_cache
from mdf_search.data.schema import DataError, Skipped, read_manifest
from mdf_search.data.sources import prepare as prepare_manifest
from mdf_search.data.splits import SPLIT_NAMES, make_split, write_split
from mdf_search.escape import terminal

app = typer.Typer(
    help="Prepare, generate, split and cache fundus data.", no_args_is_help=True, rich_markup_mode=HELP_MARKUP
)
F = TypeVar("F", bound=Callable[..., Any])


def _fail_cleanly(fn: F) -> F:
    """DataError / ValueError from the library → a clear message on stderr and exit code 2, no traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (DataError, ValueError) as err:
            raise fail(str(err)) from None
        except OSError as err:  # the file system refused something the checks did not foresee
            raise fail(
                f"{err.filename or 'a file'}: {err.strerror or err}; check the path and its permissions"
            ) from None

    return wrapper  # type: ignore[return-value]


@contextlib.contextmanager
def _progress(label: str) -> Iterator[Callable[[int, int], None]]:
    with Progress(
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
    ) as bar:
        task = bar.add_task(label, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def _print_skipped(skipped: list[Skipped]) -> None:
    if not skipped:
        return
    table = Table(title=f"Skipped {len(skipped)} file(s)", title_justify="left")
    table.add_column("file", overflow="fold")
    table.add_column("reason", overflow="fold")
    for s in skipped:
        table.add_row(terminal(s.path), terminal(s.reason))
    console.print(table)


@app.command()
@_fail_cleanly
def prepare(
    out: Annotated[Path, typer.Option("--out", help="manifest Parquet to write")],
    fives: Annotated[Path | None, typer.Option(help="FIVES dataset folder (train/, test/)")] = None,
    hrf: Annotated[Path | None, typer.Option(help="HRF folder (images/, manual1/, mask/)")] = None,
    stonerounds: Annotated[Path | None, typer.Option(help="StoneRounds manifest CSV/Parquet")] = None,
    manifest: Annotated[
        list[Path] | None, typer.Option(help="generic manifest CSV/Parquet (repeatable)")
    ] = None,
    skip_bad: Annotated[bool, typer.Option("--skip-bad", help="leave bad files out and list them")] = False,
    diagnosis: Annotated[
        list[str] | None, typer.Option(help="extra StoneRounds diagnosis 'NAME=label'")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="replace an existing --out (atomically)")] = False,
) -> None:
    """Combine sources into one manifest with one label vocabulary, and summarise it."""
    extra: dict[str, str] = {}
    for item in diagnosis or []:
        name, sep, label = item.partition("=")
        if not sep or not name.strip() or not label.strip():
            raise DataError(
                f"--diagnosis {item!r}: expected 'Diagnosis name=label', e.g. 'Cone dystrophy=cd'"
            )
        extra[name.strip()] = label.strip()
    result = prepare_manifest(
        out,
        fives=fives,
        hrf=hrf,
        stonerounds=stonerounds,
        manifests=manifest or [],
        skip_bad=skip_bad,
        extra_diagnoses=extra,
        force=force,
    )
    # Labels as rows, sources as columns: labels can be many, sources are few, so it fits 80 columns.
    sources = sorted({s for s, _ in result.counts})
    table = Table(title=f"{terminal(result.path)}: {result.rows} images", title_justify="left")
    table.add_column("label", no_wrap=True)
    for source in sources:
        table.add_column(terminal(source), justify="right", no_wrap=True)
    table.add_column("total", justify="right")
    for label in result.label_space.diseases:
        counts = [result.counts.get((source, label), 0) for source in sources]
        kind = result.label_space.type_of(label)
        table.add_row(terminal(f"{label} ({kind})"), *map(str, counts), str(sum(counts)))
    totals = [sum(result.counts.get((s, lb), 0) for lb in result.label_space.diseases) for s in sources]
    table.add_section()
    table.add_row("images", *map(str, totals), str(result.rows))
    table.add_row("with clinical text", *(f"{result.text_coverage[s]:.0%}" for s in sources), "")
    console.print(table)
    _print_skipped(result.skipped)


@app.command()
@_fail_cleanly
def synth(
    out: Annotated[Path, typer.Option("--out", help="folder to write FIVES/, HRF/, StoneRounds/ into")],
    images: Annotated[
        int, typer.Option(min=SYNTHETIC_MIN_IMAGES, help="number of images")
    ] = DataConfig.synthetic_images,
    size: Annotated[
        int,
        typer.Option(
            min=SYNTHETIC_MIN_SIZE, max=SYNTHETIC_MAX_SIZE, help="image side in px (2048 = FIVES's full size)"
        ),
    ] = DataConfig.synthetic_size,
    seed: Annotated[int, typer.Option(min=0)] = 0,
    severity: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="strength of disease signs")
    ] = DataConfig.synthetic_severity,
    control_size: Annotated[
        int,
        typer.Option(min=0, help="U-Net input side the planted positive control is tuned for (0: none)"),
    ] = 128,
    with_manifest: Annotated[
        bool, typer.Option("--manifest/--no-manifest", help="also write manifest.parquet")
    ] = True,
    force: Annotated[bool, typer.Option("--force", help="replace a study already under --out")] = False,
) -> None:
    """Generate a synthetic fundus study in the real datasets' layouts (with a planted positive control)."""
    from mdf_search.data.study import check_study_out, write_study  # scipy.ndimage: only for drawing

    check_study_out(out, force=force)
    with _progress("drawing fundus images") as update:
        path = write_study(
            out,
            force=force,
            manifest=with_manifest,
            images=images,
            size=size,
            seed=seed,
            severity=severity,
            control_size=control_size,
            progress=update,
        )
    console.print(f"wrote {images} images ({size} px, severity {severity:g}, seed {seed}) to {terminal(out)}")
    if path is not None:
        console.print(f"manifest: {terminal(path)}")


@app.command()
@_fail_cleanly
def split(
    manifest: Annotated[Path, typer.Option(help="manifest Parquet")],
    out: Annotated[Path, typer.Option(help="folder for split-<hash>.parquet")],
    scheme: Annotated[
        SplitScheme, typer.Option(help="how images are split into train/val/test")
    ] = "stratified",
    seed: Annotated[int, typer.Option(min=0)] = 0,
    val_frac: Annotated[float, typer.Option()] = 0.2,
    test_frac: Annotated[float, typer.Option()] = 0.2,
    folds: Annotated[int, typer.Option(min=2)] = 5,
    fold: Annotated[int, typer.Option(min=0)] = 0,
    test_source: Annotated[
        str | None, typer.Option(help="the source held out as test (--scheme leave_source_out)")
    ] = None,
) -> None:
    """Make a grouped, stratified split and write it under its content hash."""
    table, space = read_manifest(manifest)
    made = make_split(
        table,
        scheme,
        seed=seed,
        val_frac=val_frac,
        test_frac=test_frac,
        folds=folds,
        fold=fold,
        test_source=test_source,
    )
    path = write_split(made, out)
    counts = made.counts()
    summary = Table(title=f"split {made.hash} ({scheme}) → {path}", title_justify="left")
    summary.add_column("split")
    for label in space.diseases:
        summary.add_column(label, justify="right")
    summary.add_column("total", justify="right")
    for name in SPLIT_NAMES:
        row = [counts.get((name, lb), 0) for lb in space.diseases]
        summary.add_row(name, *map(str, row), str(sum(row)))
    console.print(summary)


@app.command()
@_fail_cleanly
def cache(
    manifest: Annotated[Path, typer.Option(help="manifest Parquet")],
    root: Annotated[Path, typer.Option(help="cache root folder")],
    size: Annotated[int, typer.Option(min=16, max=8192, help="cached image side (px)")] = 128,
    workers: Annotated[int, typer.Option(min=1, help="preprocessing processes")] = 1,
) -> None:
    """Decode, crop and resize every image once into a memory-mappable cache."""
    with _progress("preprocessing") as update:
        path = build_cache(manifest, root, size, workers=workers, progress=update)
    total = sum(f.stat().st_size for f in path.iterdir())
    console.print(f"cache: {path} ({total / 2**20:.1f} MiB)")
