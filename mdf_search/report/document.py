"""The report as data (sections of text, tables and figures), rendered to Markdown and to one HTML file.

Sections build blocks; the renderers never compute anything, so report.md and report.html say the same
thing. Figures are inlined in the HTML as base64 PNG (no external URL anywhere).

**Data in text.** Every piece of data a section puts into a text, table cell or caption (an arm id, a
parameter name or value, the description, a metric name, a path, an error message) is wrapped with
:func:`d`, which marks it with two private-use characters. Each renderer makes the marked spans inert
for its output: report.md escapes them with ``escape.markdown`` (no raw HTML, no link, no image, no
table-breaking ``|``), the CSV tables pass every text cell through ``escape.csv_cell``, and the HTML
(jinja2, autoescape on) drops the marks, shows control characters and entity-escapes everything. The report's own words around
them stay as written.
"""

from __future__ import annotations

import base64
import csv
import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import jinja2

from mdf_search import escape

OPEN, CLOSE = "\ue000", "\ue001"  # marks around data (Unicode private use: never in the report's own text)
_SPAN = re.compile(f"{OPEN}(.*?){CLOSE}", re.DOTALL)


def d(value: object) -> str:
    """``value`` as data: marked, so each renderer escapes it for its output (see the module doc)."""
    text = str(value).replace(OPEN, "").replace(CLOSE, "")
    return f"{OPEN}{text}{CLOSE}"


def plain(text: str) -> str:
    """The text with the data marks removed (for HTML, CSV, logs and error messages)."""
    return text.replace(OPEN, "").replace(CLOSE, "")


@dataclass
class Text:
    text: str
    kind: str = "p"  # p | note | warning | code


@dataclass
class TableBlock:
    name: str  # tables/<name>.csv and .tex
    headers: list[str]
    rows: list[list[str]]
    caption: str = ""


@dataclass
class FigureBlock:
    name: str  # figures/<name>.png, .svg and .pdf
    caption: str
    png: bytes = b""

    @property
    def data_uri(self) -> str:
        return "data:image/png;base64," + base64.b64encode(self.png).decode("ascii")


Block = Text | TableBlock | FigureBlock


@dataclass
class Section:
    title: str
    blocks: list[Block] = field(default_factory=list)
    anchor: str = ""

    def text(self, text: str, kind: str = "p") -> None:
        self.blocks.append(Text(text, kind))

    def note(self, text: str) -> None:
        self.blocks.append(Text(text, "note"))


@dataclass
class Report:
    title: str
    subtitle: str
    sections: list[Section] = field(default_factory=list)


def _own(text: str) -> str:
    """The report's own words on one markdown line (no raw HTML, no table-breaking ``|``)."""
    return text.replace("|", "\\|").replace("\n", " ").replace("<", "&lt;").replace(">", "&gt;")


def _md(text: str) -> str:
    """A text for report.md: its own words as written, every data span through ``escape.markdown``."""
    out, end = [], 0
    for match in _SPAN.finditer(text):
        out += [_own(text[end : match.start()]), escape.markdown(match.group(1))]
        end = match.end()
    out.append(_own(text[end:]))
    return plain("".join(out))  # an unpaired mark (never written by d) is dropped


def _code(text: str) -> list[str]:
    """A fenced block that no backtick run inside it can close; control characters shown, not run."""
    body = escape.visible(plain(text))
    runs = [len(m) for m in re.findall(r"`+", body)]
    fence = "`" * max(3, max(runs, default=0) + 1)
    return [f"{fence}bash", body, fence, ""]


def _link(name: str) -> str:
    return quote(name, safe="")


def to_markdown(report: Report) -> str:
    out = [f"# {_md(report.title)}", "", _md(report.subtitle), "", "## Contents", ""]
    out += [f"{i}. [{s.title}](#{s.anchor})" for i, s in enumerate(report.sections, 1)]
    for i, section in enumerate(report.sections, 1):
        out += ["", f'<a id="{section.anchor}"></a>', "", f"## {i}. {section.title}", ""]
        for block in section.blocks:
            if isinstance(block, Text):
                if block.kind == "code":
                    out += _code(block.text)
                elif block.kind == "note":
                    out += [f"> **Note.** {_md(block.text)}", ""]
                elif block.kind == "warning":
                    out += [f"- ⚠️ {_md(block.text)}"]
                else:
                    out += [_md(block.text), ""]
            elif isinstance(block, TableBlock):
                if block.caption:
                    name = _link(block.name)
                    out += [
                        f"*{_md(block.caption)}* ([csv](tables/{name}.csv), [tex](tables/{name}.tex))",
                        "",
                    ]
                out += ["| " + " | ".join(_md(h) for h in block.headers) + " |"]
                out += ["| " + " | ".join("---" for _ in block.headers) + " |"]
                out += ["| " + " | ".join(_md(c) for c in row) + " |" for row in block.rows]
                out += [""]
            else:
                caption, name = _md(block.caption), _link(block.name)
                out += [f"![{caption}](figures/{name}.png)", ""]
                out += [f"*{caption}* ([pdf](figures/{name}.pdf), [svg](figures/{name}.svg))", ""]
        if section.blocks and isinstance(section.blocks[-1], Text) and section.blocks[-1].kind == "warning":
            out.append("")
    return "\n".join(out).rstrip() + "\n"


_HTML = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ report.title }}</title>
<style>
body{font:15px/1.5 -apple-system,"Segoe UI",Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#1f2328}
h1{border-bottom:1px solid #d0d7de;padding-bottom:.3em}h2{border-bottom:1px solid #d0d7de;margin-top:2em}
table{border-collapse:collapse;margin:1em 0;font-size:13px;display:block;overflow-x:auto}
th,td{border:1px solid #d0d7de;padding:4px 8px;text-align:left;white-space:nowrap}
th{background:#f6f8fa}tr:nth-child(even) td{background:#fbfbfc}
.note{background:#f6f8fa;border-left:4px solid #8c959f;padding:.5em 1em}
.warning{background:#fff8c5;border-left:4px solid #d4a72c;padding:.4em 1em;margin:.3em 0}
pre{background:#f6f8fa;padding:1em;overflow-x:auto}figure{margin:1em 0}
figure img{max-width:100%;border:1px solid #eee}figcaption{color:#57606a;font-size:13px}
.caption{color:#57606a;font-style:italic}
</style></head><body>
<h1>{{ report.title }}</h1><p>{{ report.subtitle }}</p>
<nav><ol>{% for s in report.sections %}<li><a href="#{{ s.anchor }}">{{ s.title }}</a></li>{% endfor %}</ol></nav>
{% for s in report.sections %}<section id="{{ s.anchor }}"><h2>{{ loop.index }}. {{ s.title }}</h2>
{% for b in s.blocks %}{% if b.kind is defined %}{% if b.kind == "code" %}<pre><code>{{ b.text }}</code></pre>
{% elif b.kind == "note" %}<p class="note"><b>Note.</b> {{ b.text }}</p>
{% elif b.kind == "warning" %}<p class="warning">⚠ {{ b.text }}</p>
{% else %}<p>{{ b.text }}</p>{% endif %}
{% elif b.headers is defined %}{% if b.caption %}<p class="caption">{{ b.caption }}</p>{% endif %}
<table><thead><tr>{% for h in b.headers %}<th>{{ h }}</th>{% endfor %}</tr></thead><tbody>
{% for row in b.rows %}<tr>{% for c in row %}<td>{{ c }}</td>{% endfor %}</tr>{% endfor %}</tbody></table>
{% else %}<figure><img alt="{{ b.caption }}" src="{{ b.data_uri }}"><figcaption>{{ b.caption }}</figcaption></figure>
{% endif %}{% endfor %}</section>
{% endfor %}
</body></html>
"""


def _finalize(value: object) -> object:
    """Each value the HTML shows: data marks dropped, control characters shown (jinja escapes the rest)."""
    return escape.visible(plain(value)) if isinstance(value, str) else value


def to_html(report: Report) -> str:
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, finalize=_finalize)
    return env.from_string(_HTML).render(report=report)


def csv_text(cell: str) -> str:
    """A table cell for CSV: a number as written, any other text through ``escape.csv_cell``."""
    text = plain(cell)
    try:
        float(text)
    except ValueError:
        return str(escape.csv_cell(text))
    return text


def write_tables(report: Report, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for section in report.sections:
        for block in section.blocks:
            if isinstance(block, TableBlock):
                buf = io.StringIO()
                writer = csv.writer(buf)
                writer.writerow([csv_text(h) for h in block.headers])
                writer.writerows([csv_text(c) for c in row] for row in block.rows)
                (directory / f"{block.name}.csv").write_text(buf.getvalue(), encoding="utf-8")
