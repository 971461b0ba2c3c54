"""Flat fields: a frozen-dataclass field that carries its flat key, its parser and its doc, and the parsers.

The configuration sections (``mdf_search.config`` for the trial, ``mdf_search.model.arch`` for the
architecture) declare every field with :func:`flat_field`; ``TrialConfig.from_flat`` reads the metadata.
A parser turns a flat value (what a sampler or a YAML file gives: a string, a number, a bool) into the
typed value, or raises ``ValueError`` with a readable reason.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

Parser = Callable[[Any], Any]


def flat_field(key: str, default: Any, parse: Parser, doc: str) -> Any:
    """A dataclass field with its flat key (a results column), its parser and a one-line doc."""
    return dataclasses.field(default=default, metadata={"key": key, "parse": parse, "doc": doc})


def choice(options: tuple[str, ...]) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        text = str(value).strip().lower()
        if text not in options:
            raise ValueError(f"must be one of {list(options)}, but got {value!r}")
        return text

    return parse


def int_range(low: int, high: int) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise ValueError(f"must be an integer in [{low}, {high}], but got {value!r}")
        try:
            number = int(value)
        except ValueError:
            raise ValueError(f"must be an integer in [{low}, {high}], but got {value!r}") from None
        if float(value) != number or not low <= number <= high:
            raise ValueError(f"must be an integer in [{low}, {high}], but got {value!r}")
        return number

    return parse


def float_range(low: float, high: float, *, open_low: bool = False) -> Callable[[Any], float]:
    def parse(value: Any) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"must be a number in [{low}, {high}], but got {value!r}") from None
        below = number <= low if open_low else number < low
        if math.isnan(number) or below or number > high:
            bracket = "(" if open_low else "["
            raise ValueError(f"must be a number in {bracket}{low}, {high}], but got {value!r}")
        return number

    return parse


def int_choice(options: tuple[int, ...]) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        if isinstance(value, bool) or str(value).strip() not in {str(o) for o in options}:
            raise ValueError(f"must be one of {list(options)}, but got {value!r}")
        return int(str(value).strip())

    return parse


def boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise ValueError(f"must be true or false, but got {value!r}")


def optional_str(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None
