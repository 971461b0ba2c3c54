"""Options and arguments that more than one command group reads: ``--set``, ``--address``, ``--storage``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mdf_search.cli.console import fail

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
