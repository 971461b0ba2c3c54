"""Flat fields: a frozen-dataclass field that carries its flat key, its parser and its doc, and the parsers.

The configuration sections (``mdf_search.config`` for the trial, ``mdf_search.model.arch`` for the
architecture) declare every field with :func:`flat_field`; ``TrialConfig.from_flat`` reads the metadata.
A parser turns a flat value (what a sampler or a YAML file gives: a string, a number, a bool) into the
typed value, or raises ``ValueError`` with a readable reason.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import reprlib
from collections.abc import Callable
from typing import Any

Parser = Callable[[Any], Any]
SHORT = 60  # characters of a value an error message shows


class _Bounded(reprlib.Repr):
    def repr_dict(self, x: dict[Any, Any], level: int) -> str:
        """As reprlib's, but in the mapping's own order (reprlib sorts the keys)."""
        if not x:
            return "{}"
        if level <= 0:
            return "{...}"
        pieces = [
            f"{self.repr1(k, level - 1)}: {self.repr1(v, level - 1)}"
            for k, v in itertools.islice(x.items(), self.maxdict)
        ]
        return "{" + ", ".join(pieces + (["..."] if len(x) > self.maxdict else [])) + "}"


_bounded = _Bounded()
_bounded.maxstring = _bounded.maxother = _bounded.maxlong = SHORT
_bounded.maxlist = _bounded.maxtuple = _bounded.maxset = _bounded.maxdict = 6
_bounded.maxlevel = 3


def short_repr(value: Any, limit: int = SHORT) -> str:
    """``repr(value)`` cut to about ``limit`` characters, in bounded time and memory whatever the value
    (``reprlib``: a few items of a container, a few levels deep; never the repr of a whole value)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 4 * SHORT:
        return f"<an integer of about {int(value.bit_length() * 0.30103) + 1} digits>"
    try:
        text = _bounded.repr(value)
    except Exception:  # a value whose repr fails: name its type
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def flat_field(key: str, default: Any, parse: Parser, doc: str) -> Any:
    """A dataclass field with its flat key (a results column), its parser and a one-line doc."""
    return dataclasses.field(default=default, metadata={"key": key, "parse": parse, "doc": doc})


def choice(options: tuple[str, ...]) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        text = str(value).strip().lower()
        if text not in options:
            raise ValueError(f"must be one of {list(options)}, but got {short_repr(value)}")
        return text

    return parse


def int_range(low: int, high: int) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        bad = ValueError(f"must be an integer in [{low}, {high}], but got {short_repr(value)}")
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise bad
        if isinstance(value, float) and not value.is_integer():  # 2.5, inf and nan
            raise bad
        try:
            number = int(value)
        except (ValueError, OverflowError):  # "2.5", "x", or more digits than Python converts
            raise bad from None
        if not low <= number <= high:
            raise bad
        return number

    return parse


def float_range(low: float, high: float, *, open_low: bool = False) -> Callable[[Any], float]:
    def parse(value: Any) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"must be a number in [{low}, {high}], but got {short_repr(value)}") from None
        below = number <= low if open_low else number < low
        if math.isnan(number) or below or number > high:
            bracket = "(" if open_low else "["
            raise ValueError(f"must be a number in {bracket}{low}, {high}], but got {short_repr(value)}")
        return number

    return parse


def int_choice(options: tuple[int, ...]) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        if isinstance(value, bool) or str(value).strip() not in {str(o) for o in options}:
            raise ValueError(f"must be one of {list(options)}, but got {short_repr(value)}")
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
    raise ValueError(f"must be true or false, but got {short_repr(value)}")


def optional_str(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None
