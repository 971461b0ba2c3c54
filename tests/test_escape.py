"""Each escaper makes hostile data inert for its output and leaves plain data readable."""

from __future__ import annotations

import csv
import io
import shlex

from rich.console import Console

from mdf_search import escape


def test_terminal_shows_markup_and_ansi_as_text() -> None:
    hostile = "[link=http://evil]x[/link] [/] \x1b[2J\x1b[H [bold]"
    out = io.StringIO()
    Console(file=out, force_terminal=False, width=200).print(escape.terminal(hostile))
    printed = out.getvalue()
    assert "[link=http://evil]x[/link]" in printed and "[/]" in printed and "[bold]" in printed
    assert "\x1b" not in printed and "\\x1b[2J" in printed


def test_markdown_disarms_html_links_and_images() -> None:
    text = escape.markdown("<script>alert(1)</script> [a](javascript:x) ![i](http://e/i.png) |x|\n# h")
    assert "<script>" not in text and "&lt;script&gt;" in text
    assert "](" not in text.replace("\\](", "").replace("\\(", "")
    assert "\\!\\[i\\]\\(http://e/i.png\\)" in text and "\\|x\\|" in text
    assert "\n" not in text
    assert escape.markdown("fusion.levels=1234") == "fusion.levels=1234"


def test_csv_cells_never_start_a_formula() -> None:
    rows = [escape.csv_cell(v) for v in ('=HYPERLINK("http://e")', "+1", "-x", "@SUM(A1)", "ok", -0.5, 3)]
    assert rows == ['\'=HYPERLINK("http://e")', "'+1", "'-x", "'@SUM(A1)", "ok", -0.5, 3]
    buffer = io.StringIO()
    csv.writer(buffer).writerow(rows)
    assert not any(
        cell.startswith(("=", "+", "@")) for cell in next(csv.reader(io.StringIO(buffer.getvalue())))
    )


def test_shell_round_trips_hostile_words() -> None:
    words = ["mdf-search", "sweep", "spec; rm -rf ~", "$(reboot)", "a b", "it's"]
    assert shlex.split(escape.shell(words)) == words
