"""``--where``: a small, safe filter language over the results columns, parsed into polars expressions.

Grammar (keywords are lower case; no Python is ever evaluated)::

    expr       := term ("or" term)*
    term       := factor ("and" factor)*
    factor     := "not" factor | "(" expr ")" | comparison
    comparison := column OP value | column "in" "[" value ("," value)* "]" | column "is" ["not"] "null"
    OP         := == | != | < | <= | > | >=
    column     := name like fusion.levels or val/macro_f1, or `back quoted` for anything else
    value      := "text" | 'text' | number | true | false | null

Inside quotes a backslash escapes a backslash, a quote, ``n`` (newline), ``t`` (tab) or ``uXXXX``; any
other character, non-ASCII ones included, stands for itself. Parentheses and ``not`` nest at most
``MAX_DEPTH`` deep, and a chain of ``or``/``and`` becomes one flat polars expression, so no expression
can exhaust the stack.

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
    | (?P<name>[^\W\d][\w./<>:+-]*)
    )""",
    re.VERBOSE,
)
_ESCAPE = re.compile(r"""\\(u[0-9a-fA-F]{4}|["'\\nt])|\\(.?)""", re.DOTALL)
KEYWORDS = {"and", "or", "not", "in", "is", "null", "true", "false"}
COMPARISONS = {"==", "!=", "<", "<=", ">", ">="}
MAX_DEPTH = 50  # parentheses and `not`s inside each other
FIX = "e.g. --where 'status == \"completed\" and val/macro_f1 >= 0.6'"


def _quote(text: str) -> str:
    """The expression for an error message: whole when short, else its start and end around ``...``."""
    return repr(text) if len(text) <= 160 else f"{text[:80]!r} ... {text[-60:]!r} ({len(text)} characters)"


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
            at = len(text) - len(text[pos:].lstrip())
            char = text[at]
            if char in "\"'":
                raise WhereError(
                    f"--where: unterminated string starting at position {at} in {_quote(text)}; end the value with "
                    f"{char} (write \\{char} for a {char} inside it)"
                )
            raise WhereError(
                f"--where: unexpected character {char!r} at position {at} in {_quote(text)}; {FIX}"
            )
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
        self.depth = 0

    def error(self, what: str) -> WhereError:
        tok = self.toks[self.i]
        near = f"near {tok.text!r}" if tok.kind != "end" else "at the end"
        return WhereError(f"--where: {what} {near} (position {tok.pos}) in {_quote(self.text)}")

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
        terms = [self.term()]
        while self.peek().kind == "or":
            self.i += 1
            terms.append(self.term())
        return terms[0] if len(terms) == 1 else pl.any_horizontal(terms)  # flat: a long chain stays fast

    def term(self) -> pl.Expr:
        factors = [self.factor()]
        while self.peek().kind == "and":
            self.i += 1
            factors.append(self.factor())
        return factors[0] if len(factors) == 1 else pl.all_horizontal(factors)

    def factor(self) -> pl.Expr:
        tok = self.peek()
        if tok.kind != "not" and tok.text != "(":
            return self.comparison()
        if self.depth >= MAX_DEPTH:
            raise self.error(
                f"parentheses and `not` nested more than {MAX_DEPTH} deep; write a flatter expression"
            )
        self.depth += 1
        self.i += 1
        try:
            if tok.kind == "not":
                return ~self.factor()
            inner = self.expr()
            self.take(")")
            return inner
        finally:
            self.depth -= 1

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

    def unescape(self, tok: _Tok) -> str:
        """A quoted value's text: its escapes resolved, every other character as written."""

        def one(match: re.Match[str]) -> str:
            code = match.group(1)
            if code is None:
                position = tok.pos + 1 + match.start()
                raise WhereError(
                    f"--where: bad escape {match.group()!r} at position {position} in {_quote(self.text)}; inside "
                    "quotes write \\\\ for a backslash, \\\" or \\' for a quote, \\uXXXX for a character"
                )
            if code[0] == "u":
                return chr(int(code[1:], 16))
            return {"n": "\n", "t": "\t"}.get(code, code)

        return _ESCAPE.sub(one, tok.text[1:-1])

    def value(self, name: str, dtype: pl.DataType) -> Any:
        tok = self.peek()
        if tok.kind not in ("str", "num", "true", "false"):
            raise self.error('expected a value ("text", a number, true or false)')
        text_column = dtype in (pl.String, pl.Categorical)
        if not (text_column or dtype.is_numeric() or dtype == pl.Boolean):
            raise self.error(
                f"column {name!r} is {dtype}: --where compares text, numbers and true/false only; test it "
                f"with `{name} is null` / `is not null`, or filter on another column"
            )
        if tok.kind == "str" and not text_column:
            kind = "true or false" if dtype == pl.Boolean else f"a number, e.g. {name} >= 0.5"
            raise self.error(f"column {name!r} is {dtype}, but the value is text; compare it with {kind}")
        if tok.kind == "num" and dtype == pl.Boolean:
            raise self.error(
                f"column {name!r} is {dtype}, but the value is a number; compare it with true or false"
            )
        if tok.kind in ("true", "false") and dtype.is_numeric():
            raise self.error(
                f"column {name!r} is {dtype}, but the value is {tok.kind}; compare it with a number"
            )
        self.i += 1
        if tok.kind == "str":
            return self.unescape(tok)
        if tok.kind == "num":
            number = float(tok.text)
            if text_column:
                return tok.text
            if dtype.is_integer() and number.is_integer():
                return int(number)
            return number
        return tok.kind == "true" if not text_column else tok.kind

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
    """The rows of ``frame`` that ``text`` keeps (all of them for no or a blank text)."""
    if not text or not text.strip():
        return frame
    expr = parse_where(text, frame.schema)
    try:
        return frame.filter(expr)
    except pl.exceptions.PolarsError as err:
        raise WhereError(
            f"--where: {_quote(text)} cannot be applied to these columns ({err}); {FIX}"
        ) from None
