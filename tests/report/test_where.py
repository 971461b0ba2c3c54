"""The --where language: parses into polars expressions, and says where it went wrong."""

from __future__ import annotations

import polars as pl
import pytest

from mdf_search.report.where import WhereError, apply_where

FRAME = pl.DataFrame(
    {
        "status": ["completed", "error", "completed", "running"],
        "fusion.levels": ["1234", "4", "none", "1234"],
        "val/macro_f1": [0.7, None, 0.5, 0.6],
        "seed": [0, 1, 2, 0],
        "message": [None, "boom", None, None],
    }
)


@pytest.mark.parametrize(
    ("text", "rows"),
    [
        ('status == "completed" and fusion.levels == "1234"', [0]),
        ("fusion.levels == 1234", [0, 3]),  # a number against a text column compares as text
        ("val/macro_f1 >= 0.6 or seed == 1", [0, 1, 3]),
        ('not (status == "completed")', [1, 3]),
        ("fusion.levels in ['4', 'none']", [1, 2]),
        ("message is not null", [1]),
        ("val/macro_f1 is null", [1]),
        ("`val/macro_f1` < 0.6", [2]),
        ("seed != 0 and val/macro_f1 > 0.1", [2]),
    ],
)
def test_filters(text: str, rows: list[int]) -> None:
    out = apply_where(FRAME.with_row_index(), text)
    assert out["index"].to_list() == rows


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("fusion.level == 3", "unknown column 'fusion.level'; did you mean 'fusion.levels'"),
        ("status == ", "expected a value"),
        ('status = "x"', "unexpected character|expected a comparison"),
        ('seed == "zero"', "column 'seed' is Int64, but the value is text"),
        ("status == null", "is null"),
        ("(status == 'a'", "expected \\)"),
        ("__import__('os')", "unknown column|expected a comparison"),
        ("", None),
    ],
)
def test_errors_say_what_and_where(text: str, match: str | None) -> None:
    if match is None:
        assert apply_where(FRAME, text).height == FRAME.height
        return
    with pytest.raises(WhereError, match=match):
        apply_where(FRAME, text)
