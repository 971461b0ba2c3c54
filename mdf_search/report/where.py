"""``--where``: a small, safe filter language over the results columns, parsed into polars expressions.

Grammar (keywords are lower case; no Python is ever evaluated)::

    expr       := term ("or" term)*
    term       := factor ("and" factor)*
    factor     := "not" factor | "(" expr ")" | comparison
    comparison := column OP value | column "in" "[" value ("," value)* "]" | column "is" ["not"] "null"
    OP         := == | != | < | <= | > | >=
    column     := name like fusion.levels or val/macro_f1, or `back quoted` for anything else
    value      := "text" | 'text' | number | true | false | null

Examples: ``status == "completed" and fusion.levels == "1234"``,
``val/macro_f1 >= 0.6 or arm in ["fusion.levels=none", "fusion.levels=4"]``, ``message is not null``.
A number compared with a text column is compared as its text (``fusion.levels == 1234`` works).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import polars as pl

_TOKEN = re.compile(
    r"""\s*(?:
      (?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
    | (?P<num>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?(?![A-Za-z_]))
    | (?P<op>==|!=|<=|>=|<|>|\(|\)|\[|\]|,)
    | (?P<quoted>`[^`]+`)
    | (?P<name>[A-Za-z_][A-Za-z0-9_./<>:+-]*)
    )""",
    re.VERBOSE,
)
KEYWORDS = {"and", "or", "not", "in", "is", "null", "true", "false"}
COMPARISONS = {"==", "!=", "<", "<=", ">", ">="}


class WhereError(ValueError):
    """A --where expression that does not parse or names an unknown column."""


@dataclass(frozen=True)
class _Tok:
    kind: str
    text: str
    pos: int


def _tokens(text: str) -> list[_Tok]:
    out, pos = [], 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        match = _TOKEN.match(text, pos)
        if not match or match.end() == pos:
            raise WhereError(f"--where: unexpected character {text[pos:].lstrip()[:1]!r} at {pos}: {text!r}")
        kind = match.lastgroup or ""
        value = match.group(kind)
        start = match.start(kind)
        if kind == "name" and value in KEYWORDS:
            kind = value
        out.append(_Tok(kind, value, start))
        pos = match.end()
    out.append(_Tok("end", "", len(text)))
    return out


class _Parser:
    def __init__(self, text: str, schema: Mapping[str, pl.DataType]) -> None:
        self.text = text
        self.schema = schema
        self.toks = _tokens(text)
        self.i = 0

    def error(self, what: str) -> WhereError:
        tok = self.toks[self.i]
        near = f"near {tok.text!r}" if tok.kind != "end" else "at the end"
        return WhereError(f"--where: {what} {near} (position {tok.pos}) in {self.text!r}")

    def peek(self) -> _Tok:
        return self.toks[self.i]

    def take(self, *kinds: str) -> _Tok:
        tok = self.toks[self.i]
        if tok.kind not in kinds and tok.text not in kinds:
            raise self.error(f"expected {' or '.join(kinds)}")
        self.i += 1
        return tok

    def parse(self) -> pl.Expr:
        if self.peek().kind == "end":
            raise self.error("empty expression")
        expr = self.expr()
        if self.peek().kind != "end":
            raise self.error("unexpected token")
        return expr

    def expr(self) -> pl.Expr:
        out = self.term()
        while self.peek().kind == "or":
            self.i += 1
            out = out | self.term()
        return out

    def term(self) -> pl.Expr:
        out = self.factor()
        while self.peek().kind == "and":
            self.i += 1
            out = out & self.factor()
        return out

    def factor(self) -> pl.Expr:
        tok = self.peek()
        if tok.kind == "not":
            self.i += 1
            return ~self.factor()
        if tok.text == "(":
            self.i += 1
            inner = self.expr()
            self.take(")")
            return inner
        return self.comparison()

    def column(self) -> tuple[str, pl.DataType]:
        tok = self.peek()
        if tok.kind not in ("name", "quoted"):
            raise self.error("expected a column name")
        name = tok.text.strip("`") if tok.kind == "quoted" else tok.text
        if name not in self.schema:
            close = difflib.get_close_matches(name, list(self.schema), n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise self.error(f"unknown column {name!r}{hint}")
        self.i += 1
        return name, self.schema[name]

    def value(self, name: str, dtype: pl.DataType) -> Any:
        tok = self.peek()
        self.i += 1
        if tok.kind == "str":
            text = bytes(tok.text[1:-1], "utf-8").decode("unicode_escape")
            if dtype.is_numeric() or dtype == pl.Boolean:
                self.i -= 1
                raise self.error(f"column {name!r} is {dtype}, but the value is text")
            return text
        if tok.kind == "num":
            number = float(tok.text)
            if dtype == pl.String:
                return tok.text
            if dtype.is_integer() and number.is_integer():
                return int(number)
            return number
        if tok.kind in ("true", "false"):
            return tok.kind == "true" if dtype != pl.String else tok.kind
        self.i -= 1
        raise self.error('expected a value ("text", a number, true or false)')

    def comparison(self) -> pl.Expr:
        name, dtype = self.column()
        col = pl.col(name)
        tok = self.peek()
        if tok.kind == "is":
            self.i += 1
            negate = self.peek().kind == "not"
            if negate:
                self.i += 1
            self.take("null")
            return col.is_not_null() if negate else col.is_null()
        if tok.kind == "in":
            self.i += 1
            self.take("[")
            values = [self.value(name, dtype)]
            while self.peek().text == ",":
                self.i += 1
                values.append(self.value(name, dtype))
            self.take("]")
            return col.is_in(values)
        if tok.text not in COMPARISONS:
            raise self.error("expected a comparison (==, !=, <, <=, >, >=, in, is)")
        self.i += 1
        if self.peek().kind == "null":
            raise self.error("compare with null using `is null` / `is not null`")
        value = self.value(name, dtype)
        lit = pl.lit(value)
        return {
            "==": col == lit,
            "!=": col != lit,
            "<": col < lit,
            "<=": col <= lit,
            ">": col > lit,
            ">=": col >= lit,
        }[tok.text]


def parse_where(text: str, schema: Mapping[str, pl.DataType]) -> pl.Expr:
    """Parse ``text`` against a frame's ``schema``; raise ``WhereError`` saying where and why."""
    return _Parser(text, schema).parse()


def apply_where(frame: pl.DataFrame, text: str | None) -> pl.DataFrame:
    if not text or not text.strip():
        return frame
    return frame.filter(parse_where(text, frame.schema))
