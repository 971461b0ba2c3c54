"""Data written into an output, made inert for that output: the one home of every escaper.

Names, descriptions, parameters and paths come from files anyone can write. Shown as they are, they
would run markup on the terminal (rich's ``[link=…]``, ANSI escapes that clear the screen), scripts and
remote images in report.md, formulas in a spreadsheet, or extra words in a printed shell command. Each
output calls the function for its kind on every piece of data it writes, never on its own text.
LaTeX tables have their own escaper beside the table writer (``report.latex.latex``: it carries tables of
accents and symbols that only the report needs).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable

from rich.markup import escape as _rich_escape

# C0 and C1 control characters (ESC, BEL, CR, backspace, CSI, ...) but tab and newline.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
# Markdown that links, embeds or formats: brackets, parens, emphasis, code, headings, tables, HTML.
_MARKDOWN = re.compile(r"([\\`*_{}\[\]()#+!|~>-])")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def visible(text: object) -> str:
    """``text`` with every control character shown as ``\\xNN`` (so an ANSI escape prints, not runs)."""
    return _CONTROL.sub(lambda match: f"\\x{ord(match.group()):02x}", str(text))


def terminal(text: object) -> str:
    """Data for a rich console: control characters made visible and rich markup escaped."""
    return _rich_escape(visible(text))


def markdown(text: object) -> str:
    """Data for a markdown document, as literal text on one line.

    HTML is entity-escaped (no ``<script>``, no ``<img src=…>``), every character markdown gives
    meaning to is backslash-escaped (no ``[x](javascript:…)`` link, no ``![](http://…)`` image, no
    table-breaking ``|``), and newlines become spaces so a value cannot start a heading or a block.
    """
    flat = visible(str(text).replace("\r\n", " ").replace("\n", " ").replace("\r", " "))
    html = flat.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _MARKDOWN.sub(r"\\\1", html)


def csv_cell(value: object) -> object:
    """A value for a CSV cell that no spreadsheet runs as a formula (OWASP: prefix with a quote).

    Numbers pass unchanged (``-0.5`` is a number, not a formula); a text that starts with ``=``,
    ``+``, ``-``, ``@``, tab or carriage return gets a leading ``'``.
    """
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def shell(words: Iterable[object]) -> str:
    """A command line that a POSIX shell splits back into exactly ``words``."""
    return shlex.join(str(word) for word in words)
