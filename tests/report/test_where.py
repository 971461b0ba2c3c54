"""The --where language: parses into polars expressions, and says where it went wrong."""

from __future__ import annotations

import time

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


def test_a_non_ascii_value_and_escapes_match_what_they_spell() -> None:
    frame = pl.DataFrame({"arm": ["fusion.levels=été", "a\\b", 'say "hi"', "ß", "x"], "flag": [True] * 5})
    for text, arm in [
        ('arm == "fusion.levels=été"', "fusion.levels=été"),
        ('arm == "fusion.levels=\\u00e9t\\u00e9"', "fusion.levels=été"),
        ('arm == "a\\\\b"', "a\\b"),
        ("arm == 'say \"hi\"'", 'say "hi"'),
        ('arm == "say \\"hi\\""', 'say "hi"'),
        ("arm in ['ß']", "ß"),
    ]:
        assert apply_where(frame, text)["arm"].to_list() == [arm], text
    assert apply_where(frame, "flag == true").height == 5
    unicode_column = pl.DataFrame({"größe": [1, 2]})
    assert apply_where(unicode_column, "größe > 1").height == 1


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("(" * 3000 + 'status == "x"' + ")" * 3000, "nested more than 50 deep; write a flatter expression"),
        ("not " * 3000 + 'status == "x"', "nested more than 50 deep"),
        ('status == "\\q"', r"bad escape '\\\\q' at position 11 .*write \\\\ for a backslash"),
        ('status == "\\u12"', "bad escape"),
        ('status == "compl', 'unterminated string starting at position 10 .* end the value with "'),
        ("status == 'compl", "unterminated string"),
        ("seed == true", "column 'seed' is Int64, but the value is true; compare it with a number"),
        ("when > 3", "column 'when' is Datetime.*is null"),
        ("flag == 1", "column 'flag' is Boolean, but the value is a number"),
        ('flag == "yes"', "compare it with true or false"),
        ("status == completed", "expected a value"),
        ("status ~ 'x'", "unexpected character '~' at position 7 .*e.g. --where"),
    ],
)
def test_hostile_expressions_are_a_where_error_naming_the_fix(text: str, match: str) -> None:
    frame = FRAME.with_columns(
        pl.lit(True).alias("flag"), pl.lit(0, dtype=pl.Datetime("us", "UTC")).alias("when")
    )
    with pytest.raises(WhereError, match=match) as caught:
        apply_where(frame, text)
    assert str(caught.value).startswith("--where: ") and len(str(caught.value)) < 600


def test_a_long_or_chain_stays_flat_and_fast() -> None:
    text = " or ".join(f"seed == {i}" for i in range(3000))
    started = time.perf_counter()
    assert apply_where(FRAME, text).height == FRAME.height
    assert time.perf_counter() - started < 5
    assert apply_where(FRAME, " and ".join(["seed >= 0"] * 3000)).height == FRAME.height
