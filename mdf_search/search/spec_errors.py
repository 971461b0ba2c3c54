"""Pydantic's errors about a search-space file in words: ``<key path>: <what is wrong>; <fix>``
(``spec_schema`` checks the file's shape, ``space`` its parameter blocks; both word their problems here)."""

from __future__ import annotations

import difflib
import re
from typing import Any

from pydantic import BaseModel, ValidationError

from mdf_search.fields import short_repr


# ---------------------------------------------------------------------------------------------------
# Words for errors (shared with space.py's parameter parsing).
# ---------------------------------------------------------------------------------------------------
def suggest_name(word: str, options: list[str]) -> str:
    """``did you mean 'x'?`` for a close option, else ``choose among a, b, c``."""
    word = word[:200]  # a hostile key is not compared in full
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    close = close or [o for o in options if o and word.lower().startswith(o.lower())][:1]
    return f"did you mean {close[0]!r}?" if close else f"choose among {', '.join(sorted(options))}"


# ---------------------------------------------------------------------------------------------------
# Pydantic errors → "<key path>: <what>; <fix>".
# ---------------------------------------------------------------------------------------------------
def _allowed_keys(model: type[BaseModel], parent: tuple[Any, ...]) -> list[str] | None:
    cls: Any = model
    for part in parent:
        info = cls.model_fields.get(part) if isinstance(part, str) else None
        ann = getattr(info, "annotation", None)
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return None
        cls = ann
    return [f.alias or name for name, f in cls.model_fields.items()]


_TYPES = {
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "string": "a string",
    "list": "a list",
    "dict": "a mapping of keys to values",
    "model": "a mapping of keys to values",
}


def _explain(err: Any, model: type[BaseModel]) -> str:
    kind, loc, got = err["type"], err["loc"], err.get("input")
    ctx = err.get("ctx") or {}
    last = str(loc[-1]) if loc else ""
    if kind == "missing":
        return f"is required; add `{last}: ...`"
    if kind == "extra_forbidden":
        allowed = _allowed_keys(model, tuple(loc[:-1])) or []
        return f"unknown key; {suggest_name(last, allowed)}"
    if kind == "literal_error":
        options = re.findall(r"'([^']*)'", str(ctx.get("expected", "")))
        return f"must be one of {', '.join(options)}, but got {short_repr(got)}; {suggest_name(str(got), options)}"
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        op, bound = {
            "greater_than_equal": (">=", ctx.get("ge")),
            "greater_than": (">", ctx.get("gt")),
            "less_than_equal": ("<=", ctx.get("le")),
            "less_than": ("<", ctx.get("lt")),
        }[kind]
        what = "an integer" if isinstance(bound, int) and isinstance(got, int) else "a number"
        return f"must be {what} {op} {bound}, but got {short_repr(got)}"
    if kind == "finite_number":
        return f"must be a finite number, but got {short_repr(got)}"
    if kind == "string_too_long":
        return (
            f"must be at most {ctx.get('max_length')} characters (it names a directory), but got "
            f"{len(got) if isinstance(got, str) else '?'}; choose a shorter name"
        )
    if kind == "string_pattern_mismatch":
        return f"must be letters, digits, '_', '.', '-' (it names a directory), but got {short_repr(got)}"
    if kind == "string_too_short":
        return f"must not be empty, but got {short_repr(got)}; give a value or remove the key"
    if kind == "too_short":
        return f"must not be empty, but got {short_repr(got)}"
    if kind in ("value_error", "assertion_error"):
        return str(ctx.get("error", err["msg"]))
    for prefix, text in _TYPES.items():
        if kind.startswith(prefix):
            return f"must be {text}, but got {short_repr(got)}"
    return f"{err['msg'][0].lower()}{err['msg'][1:]}, but got {short_repr(got)}"


def pydantic_problems(err: ValidationError, model: type[BaseModel], prefix: str = "") -> list[str]:
    """One ``<prefix>.<key path>: <what>; <fix>`` line per pydantic error of ``model``."""
    out = []
    for e in err.errors():
        path = ".".join(str(p) if len(str(p)) <= 80 else str(p)[:77] + "..." for p in e["loc"])
        out.append(f"{prefix}{'.' if prefix and path else ''}{path}: {_explain(e, model)}")
    return out
