"""The report's tables as LaTeX: ``tables/<name>.tex`` beside each ``tables/<name>.csv``, in booktabs
style, showing each cell as report.md does (means ± sd, ``[lo, hi]`` intervals, ``<0.001`` p-values).

Each file is one ``table`` float (caption, ``\\label{tab:mdf-<name>}``, a ``tabular`` with
``\\toprule``/``\\midrule``/``\\bottomrule``) that a paper's appendix ``\\input``s; its preamble needs
``\\usepackage{booktabs,graphicx}``. Long headers break over lines; a table still wider than the text
is scaled down to ``\\linewidth`` (graphicx's ``\\resizebox``), a narrower one is left as it is; a
text column with long cells (a failure message) wraps. The files are plain ASCII, so they compile under
pdflatex whatever encoding the document declares.

**Escaping.** Every text, the report's own words and the data alike (an arm id, a factor's name, an
error message), goes through :func:`latex`: LaTeX's special characters ``& % $ # _ { } ~ ^ \\`` become
literal text, so a hostile name prints as written and never breaks compilation; ``[``, ``]`` and ``*``
are braced (a cell starting a row would otherwise be read as the optional argument of ``\\\\`` or
``\\midrule``); control characters are shown as ``\\xNN`` (``escape.visible``); other non-ASCII
characters are LaTeX commands (``±`` → ``$\\pm$``, ``é`` → ``\\'{e}``), or ``<U+XXXX>`` when LaTeX has
none in its base fonts.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

from mdf_search import escape
from mdf_search.report.document import Report, TableBlock, plain

PREAMBLE = "\\usepackage{booktabs,graphicx}"
SPECIAL = {
    "\\": "\\textbackslash{}",
    "{": "\\{",
    "}": "\\}",
    "&": "\\&",
    "%": "\\%",
    "$": "\\$",
    "#": "\\#",
    "_": "\\_",
    "~": "\\textasciitilde{}",
    "^": "\\textasciicircum{}",
    "<": "\\textless{}",  # in the OT1 encoding a bare < prints as an inverted exclamation mark
    ">": "\\textgreater{}",
    "|": "\\textbar{}",
    "[": "{[}",
    "]": "{]}",
    "*": "{*}",
    "`": "{`}",
    "'": "{'}",
    '"': "{''}",
}
UNICODE = {
    "±": "$\\pm$",
    "−": "$-$",
    "–": "--",
    "—": "---",
    "…": "\\ldots{}",
    "×": "$\\times$",
    "→": "$\\rightarrow$",
    "←": "$\\leftarrow$",
    "≤": "$\\leq$",
    "≥": "$\\geq$",
    "≠": "$\\neq$",
    "≈": "$\\approx$",
    "★": "$\\star$",
    "·": "$\\cdot$",
    "°": "$^{\\circ}$",
    "Δ": "$\\Delta$",
    "α": "$\\alpha$",
    "β": "$\\beta$",
    "σ": "$\\sigma$",
    "μ": "$\\mu$",
    "µ": "$\\mu$",
    "ß": "\\ss{}",
    "æ": "\\ae{}",
    "Æ": "\\AE{}",
    "œ": "\\oe{}",
    "Œ": "\\OE{}",
    "ø": "\\o{}",
    "Ø": "\\O{}",
    "ł": "\\l{}",
    "Ł": "\\L{}",
    "\u00a0": "~",
    "‘": "`",
    "’": "'",
    "“": "``",
    "”": "''",
    "⚠": "(!)",
}
ACCENTS = {  # combining mark → the OT1 accent command
    "\u0300": "`",
    "\u0301": "'",
    "\u0302": "^",
    "\u0303": "~",
    "\u0304": "=",
    "\u0306": "u",
    "\u0307": ".",
    "\u0308": '"',
    "\u030a": "r",
    "\u030b": "H",
    "\u030c": "v",
    "\u0327": "c",
}
_WIDE = 8  # columns above which a table is set smaller, with narrower column gaps
_LONG = 40  # characters above which a text column becomes a paragraph column that wraps
_HEADER = 16  # characters per line of a header cell
_PIECE = 12  # characters after which a long word in a paragraph column may break


def _accented(char: str) -> str | None:
    """``é`` → ``\\'{e}``: a Latin letter with accents LaTeX's base fonts set, else None."""
    parts = unicodedata.normalize("NFD", char)
    base, marks = parts[0], parts[1:]
    if not (base.isascii() and base.isalpha()) or not marks or any(m not in ACCENTS for m in marks):
        return None
    out = "\\i" if base == "i" else "\\j" if base == "j" else base
    for mark in marks:
        out = f"\\{ACCENTS[mark]}{{{out}}}"
    return out


def latex(text: object) -> str:
    """``text`` as literal LaTeX text on one line, plain ASCII (see the module doc)."""
    flat = escape.visible(plain(str(text)).replace("\r\n", " ").replace("\n", " ").replace("\r", " "))
    out: list[str] = []
    for i, char in enumerate(flat):
        if char == "-":
            out.append("-{}" if flat[i + 1 : i + 2] in ("-", "–", "—") else "-")  # no ligature with the next
        elif char in SPECIAL:
            out.append(SPECIAL[char])
        elif char.isascii():
            out.append(char)
        elif char in UNICODE:
            out.append(UNICODE[char])
        else:
            out.append(_accented(char) or f"\\textless{{}}U+{ord(char):04X}\\textgreater{{}}")
    return "".join(out)


def breakable(text: object) -> str:
    """:func:`latex` for a paragraph column: a word longer than :data:`_PIECE` characters (a git SHA,
    a path) may break every :data:`_PIECE` characters (``\\allowbreak``), so it wraps instead of
    running past the column."""
    words = plain(str(text)).split(" ")
    pieces = [[w[i : i + _PIECE] for i in range(0, len(w), _PIECE)] or [""] for w in words]
    return " ".join("\\allowbreak{}".join(latex(p) for p in word) for word in pieces)


def _numeric(cell: str) -> bool:
    """Whether a cell reads as a number as the tables write them (``0.512``, ``+1.2 %``, ``<0.001``,
    ``—``), so its column is right-aligned."""
    text = plain(cell).strip().removeprefix("<").removesuffix("%").strip()
    if text in ("—", ""):
        return True
    try:
        float(text)
    except ValueError:
        return False
    return True


def _columns(block: TableBlock) -> str:
    spec = []
    for i in range(len(block.headers)):
        cells = [row[i] for row in block.rows if i < len(row)]
        if i > 0 and cells and all(_numeric(c) for c in cells):
            spec.append("r")
        elif max((len(plain(c)) for c in cells), default=0) > _LONG:
            spec.append("p{5.5cm}")
        else:
            spec.append("l")
    return "".join(spec)


def label(name: str) -> str:
    """The ``\\label`` of a table: ``tab:mdf-<name>`` with only letters, digits, ``-`` and ``_``."""
    return "tab:mdf-" + re.sub(r"[^A-Za-z0-9_-]", "-", name)


def _wrap(text: str, width: int = _HEADER) -> list[str]:
    """A header's words in lines of about ``width`` characters (a long word keeps its own line)."""
    lines: list[str] = []
    for word in text.split(" "):
        if lines and len(lines[-1]) + 1 + len(word) <= width:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return lines or [""]


def _header(text: str, align: str) -> str:
    """A header cell, broken over lines in a nested one-column tabular when it is long."""
    lines = _wrap(plain(text))
    if len(lines) == 1:
        return latex(lines[0])
    column = "l" if align.startswith("p") else align
    body = " \\\\ ".join(latex(line) for line in lines)
    return f"\\begin{{tabular}}[b]{{@{{}}{column}@{{}}}}{body}\\end{{tabular}}"


def table_tex(block: TableBlock) -> str:
    """One table as a booktabs ``table`` float (see the module doc)."""
    width = len(block.headers)
    rows = [[*row[:width], *[""] * (width - len(row))] for row in block.rows]
    columns = _columns(block)
    aligns = re.findall(r"p\{[^}]*\}|[lr]", columns)
    lines = [
        f"% {label(block.name)}: written by mdf-search report; the preamble needs {PREAMBLE}",
        "\\begin{table}[htbp]",
        "\\centering",
        "\\scriptsize\\setlength{\\tabcolsep}{3pt}" if width > _WIDE else "\\small",
    ]
    if block.caption:
        lines.append(f"\\caption{{{latex(block.caption)}}}")
    lines.append(f"\\label{{{label(block.name)}}}")
    lines += ["\\setbox0=\\hbox{%", f"\\begin{{tabular}}{{{columns}}}", "\\toprule"]
    lines.append(" & ".join(_header(h, a) for h, a in zip(block.headers, aligns, strict=True)) + " \\\\")
    lines.append("\\midrule")
    cell = [breakable if a.startswith("p") else latex for a in aligns]
    lines += [" & ".join(cell[i](c) for i, c in enumerate(row)) + " \\\\" for row in rows]
    lines += [
        "\\bottomrule",
        "\\end{tabular}}%",
        "\\ifdim\\wd0>\\linewidth\\resizebox{\\linewidth}{!}{\\box0}\\else\\box0\\fi",
        "\\end{table}",
        "",
    ]
    return "\n".join(lines)


def write_latex_tables(report: Report, directory: Path) -> list[str]:
    """Write ``<name>.tex`` for every table of the report; return the names written, in report order."""
    directory.mkdir(parents=True, exist_ok=True)
    names = []
    for section in report.sections:
        for block in section.blocks:
            if isinstance(block, TableBlock):
                (directory / f"{block.name}.tex").write_text(table_tex(block), encoding="ascii")
                names.append(block.name)
    return names
