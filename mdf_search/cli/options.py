"""Options and arguments that more than one command group reads: ``--set``, ``--address``, ``--storage``,
and the choices of every option whose values are a fixed set.

A choice is built from the library's own tuple (``choice(PRESETS)``), never retyped: ``--help`` lists
the values, shell completion offers them, and a value outside them is click's usage error naming them
(exit 2) before the command runs. typer reads a ``Literal`` of the tuple, so the command gets a plain
``str``; to mypy each choice is the ``str`` it is.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeAlias

import typer

from mdf_search.cli.console import fail
from mdf_search.config import PRECISIONS, SPLITS
from mdf_search.model.arch import FREEZE_STRATEGIES, INJECTIONS
from mdf_search.model.presets import PRESETS
from mdf_search.report.formats import FORMATS as LEADERBOARD_FORMATS


def choice(values: Iterable[str]) -> Any:
    """The annotation typer reads as a choice of ``values`` (a ``Literal`` of them, in their order)."""
    values = tuple(values)
    if not values or not all(isinstance(v, str) for v in values):
        raise ValueError(f"a choice needs one or more strings, got {values!r}")
    return Literal[values]


if TYPE_CHECKING:  # a choice is a str
    Preset: TypeAlias = str
    Injection: TypeAlias = str
    Freeze: TypeAlias = str
    Precision: TypeAlias = str
    SplitScheme: TypeAlias = str
    Format: TypeAlias = str
else:
    Preset = choice(PRESETS)  # model.preset
    Injection = choice(INJECTIONS)  # fusion.injection
    Freeze = choice(FREEZE_STRATEGIES)  # freeze
    Precision = choice(PRECISIONS)  # export --dtype: the precisions a trial trains in
    SplitScheme = choice(SPLITS)  # data split --scheme (data.splits.SCHEMES is the same tuple)
    Format = choice(LEADERBOARD_FORMATS)  # leaderboard --format

SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="A trial parameter KEY=VALUE (repeatable), e.g. -s fusion.levels=13"),
]
AddressOption = Annotated[
    str | None, typer.Option(help="Ray address (default: RAY_ADDRESS or an embedded Ray)")
]


def parse_sets(pairs: list[str] | None) -> dict[str, str]:
    """``--set KEY=VALUE`` pairs as a flat dict (exit 2 on a pair without ``=`` or without a key)."""
    out: dict[str, str] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise fail(f"--set expects KEY=VALUE, but got {pair!r}")
        out[key.strip()] = value.strip()
    return out


def storage_path(storage: str) -> str:
    """Local paths become absolute (Ray requires it); URIs (s3://, gs://) pass through."""
    return storage if "://" in storage else str(Path(storage).expanduser().resolve())
