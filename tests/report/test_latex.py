"""The report's LaTeX tables (issue 14): one booktabs ``tables/<name>.tex`` per CSV table, showing what
report.md shows, with every piece of data escaped. Always: the structure (balanced braces, one cell per
column, the rules) and the escaping (each cell decodes back to its CSV text, no special character left
bare). With pdflatex on PATH: a document including every table and every PDF figure compiles."""

from __future__ import annotations

import csv
import re
import shutil
import subprocess
import unicodedata
from pathlib import Path

import pytest

from mdf_search import escape
from mdf_search.report.ablation import write_report
from mdf_search.report.document import TableBlock
from mdf_search.report.latex import ACCENTS, SPECIAL, UNICODE, latex, table_tex
from mdf_search.report.synthetic import synthetic_experiment
from tests.report.conftest import write_hostile

BARE = set('\\{}&%$#_~^[]*<>|"')  # characters that never appear unescaped in a cell's text
UNICODE_ARMS = [  # arm ids a user could write: accents, other scripts, emoji, TeX that would run
    "fusion.levels=none é ü Ç ñ å",
    "Ω 漢字 🙂 a\u0301 \u202etxt",
    "\\end{document}\\input{/etc/hostname} #1 ^^5c %x $x$ ~ & _",
    "[0pt] *star --- -- ``quoted'' \"q\"",
]
REVERSE = sorted(
    {
        **{v: k for k, v in UNICODE.items() if k != "µ"},
        **{v: k for k, v in SPECIAL.items()},
        "-{}": "-",
    }.items(),
    key=lambda kv: -len(kv[0]),
)
ACCENT = re.compile(r"\\([`'^~=u.\"rHvc])\{(\\i|\\j|[A-Za-z]|\\.\{.*?\})\}")
CODEPOINT = re.compile(r"\\textless\{\}U\+([0-9A-F]{4,6})\\textgreater\{\}")


def decode(tex: str) -> str:
    """A cell's LaTeX back to its text; fails on any special character left bare."""
    tex = tex.replace("\\allowbreak{}", "")  # a break opportunity in a long word, not text
    out, i = [], 0
    while i < len(tex):
        if m := CODEPOINT.match(tex, i):
            out.append(chr(int(m.group(1), 16)))
            i = m.end()
            continue
        if m := ACCENT.match(tex, i):
            marks = {v: k for k, v in ACCENTS.items()}
            base = {"\\i": "i", "\\j": "j"}.get(m.group(2), m.group(2))
            out.append(base + marks[m.group(1)])
            i = m.end()
            continue
        for source, char in REVERSE:
            if tex.startswith(source, i):
                out.append(char)
                i += len(source)
                break
        else:
            assert tex[i] not in BARE, f"bare {tex[i]!r} at {i} in {tex!r}"
            out.append(tex[i])
            i += 1
    return "".join(out)


def expected(cell: str) -> str:
    """A CSV cell as the LaTeX shows it: no spreadsheet quote, one line, control characters shown."""
    if cell.startswith("'") and cell[1:2] in ("=", "+", "-", "@", "\t", "\r"):
        cell = cell[1:]
    flat = escape.visible(cell.replace("\r\n", " ").replace("\n", " ").replace("\r", " "))
    return unicodedata.normalize("NFC", flat.replace("µ", "μ"))


def braces_balanced(tex: str) -> bool:
    depth, i = 0, 0
    while i < len(tex):
        char = tex[i]
        if char == "\\":
            i += 2  # a control symbol (\{ \} \\ \&) or the first letter of a control word
            continue
        if char == "%":  # a comment runs to the end of the line
            i = tex.find("\n", i) if "\n" in tex[i:] else len(tex)
            continue
        depth += {"{": 1, "}": -1}.get(char, 0)
        if depth < 0:
            return False
        i += 1
    return depth == 0


NESTED = re.compile(r"\\begin\{tabular\}\[b\]\{@\{\}[lr]@\{\}\}(.*?)\\end\{tabular\}")
SPLIT = re.compile(r"(?<!\\) & ")


def parse(tex: str) -> tuple[str, list[str], list[list[str]]]:
    """(column spec, header cells, body rows) of one table file, checking its booktabs frame."""
    lines = tex.splitlines()
    assert lines[0].startswith("% tab:mdf-") and "\\usepackage{booktabs,graphicx}" in lines[0]
    assert [ln for ln in lines if ln in ("\\toprule", "\\midrule", "\\bottomrule")] == [
        "\\toprule",
        "\\midrule",
        "\\bottomrule",
    ]
    assert lines[1] == "\\begin{table}[htbp]" and lines[-1] == "\\end{table}"
    assert "\\hline" not in tex  # booktabs rules only
    spec = next(ln for ln in lines if ln.startswith("\\begin{tabular}{"))[len("\\begin{tabular}{") : -1]
    top, mid, bottom = lines.index("\\toprule"), lines.index("\\midrule"), lines.index("\\bottomrule")
    assert mid == top + 2
    header = lines[top + 1]
    body = lines[mid + 1 : bottom]
    for line in [header, *body]:
        assert line.endswith(" \\\\"), line
    cells = [NESTED.sub(lambda m: m.group(1).replace(" \\\\ ", " "), c) for c in SPLIT.split(header[:-3])]
    return spec, cells, [SPLIT.split(line[:-3]) for line in body]


def columns(spec: str) -> int:
    return len(re.findall(r"p\{[^}]*\}|[lr]", spec))


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three reports under one folder: a complete study, one with markup in every name and one with
    arm ids in other scripts, with TeX in them, and a long hostile failure message."""
    tmp = tmp_path_factory.mktemp("latex")
    write_report(str(synthetic_experiment(tmp / "exp_grid")), str(tmp / "grid"))
    write_report(str(write_hostile(tmp / "exp_hostile")), str(tmp / "hostile"))
    unicode_root = synthetic_experiment(
        tmp / "exp_unicode",
        arm_names=UNICODE_ARMS,
        messages={1: "x" * 50 + " \\def\\x{y} " + UNICODE_ARMS[2]},
    )
    write_report(str(unicode_root), str(tmp / "unicode"))
    return tmp


def test_latex_escapes_every_special_character() -> None:
    for char in "&%$#_{}~^\\[]*<>|":
        assert latex(char) == SPECIAL[char] and decode(latex(char)) == char
    text = "a & b % c $d$ #1 _x {y} ~z ^w \\end{document} [opt] *s 50% <i> a|b --- 'q' \"q\""
    assert decode(latex(text)) == text
    assert latex("±Δ★—") == "$\\pm$$\\Delta$$\\star$---"
    assert latex("é ñ Ç") == "\\'{e} \\~{n} \\c{C}" and decode(latex("é")) == "e\u0301"
    assert latex("🙂") == "\\textless{}U+1F642\\textgreater{}"
    assert latex("a\x1b[2J\nb") == "a\\textbackslash{}x1b{[}2J b"  # shown, on one line
    assert latex("--") == "-{}-" and latex("\ue000x\ue001") == "x"  # no ligature; data marks dropped
    assert all(ord(c) < 128 for c in latex("".join(UNICODE_ARMS)))


def test_table_tex_pads_short_rows_and_right_aligns_numbers() -> None:
    block = TableBlock(
        "t", ["arm", "n", "p", "message"], [["a", "3", "<0.001", "x " * 30], ["b", "—"]], "cap"
    )
    spec, header, rows = parse(table_tex(block))
    assert spec == "lrrp{5.5cm}" and header == ["arm", "n", "p", "message"]
    assert rows[1] == ["b", "---", "", ""] and "\\caption{cap}" in table_tex(block)
    sha = "0123456789abcdef" * 2
    tex = table_tex(TableBlock("t", ["k", "v"], [["git SHA", f"{sha} " + "x " * 29 + "x"]]))
    assert "0123456789ab\\allowbreak{}cdef01234567\\allowbreak{}89abcdef x x" in tex  # may wrap
    assert decode(parse(tex)[2][0][1]) == f"{sha} " + "x " * 29 + "x"


@pytest.mark.parametrize("name", ["grid", "hostile", "unicode"])
def test_every_table_has_its_tex_twin_with_the_same_cells(reports: Path, name: str) -> None:
    out = reports / name
    csvs = sorted(p.stem for p in (out / "tables").glob("*.csv"))
    assert csvs and csvs == sorted(p.stem for p in (out / "tables").glob("*.tex"))
    for stem in csvs:
        tex = (out / "tables" / f"{stem}.tex").read_text(encoding="ascii")  # plain ASCII
        assert braces_balanced(tex), stem
        assert f"\\label{{tab:mdf-{stem}}}" in tex
        spec, header, rows = parse(tex)
        with (out / "tables" / f"{stem}.csv").open(newline="", encoding="utf-8") as handle:
            table = list(csv.reader(handle))
        assert columns(spec) == len(header) == len(table[0]), stem
        assert len(rows) == len(table) - 1, stem
        for tex_row, csv_row in zip([header, *rows], table, strict=True):
            assert len(tex_row) == len(csv_row), (stem, tex_row)
            for cell, text in zip(tex_row, csv_row, strict=True):
                assert unicodedata.normalize("NFC", decode(cell)) == expected(text), (stem, cell, text)
        caption = re.search(r"^\\caption\{(.*)\}$", tex, re.M)
        assert caption is None or braces_balanced(caption.group(1))


def test_tex_tables_show_intervals_and_p_values_as_the_markdown_does(reports: Path) -> None:
    tex = (reports / "grid" / "tables" / "compare_seeds.tex").read_text()
    md = (reports / "grid" / "report.md").read_text()
    assert re.search(r"\{\[\}-?\d\.\d{3}, -?\d\.\d{3}\{\]\}", tex)  # [lo, hi] as in report.md
    _, header, rows = parse(tex)
    assert "p (sign-flip, Holm)" in header and "p (paired t)" in header
    assert all(re.fullmatch(r"\\textless\{\}0\.001|\d\.\d{3}|---", row[4]) for row in rows)  # as tb.pvalue
    main = (reports / "grid" / "tables" / "main.tex").read_text()
    assert re.search(r"\d\.\d{3} \$\\pm\$ \d\.\d{3}", main) and "± " in md
    assert "$\\star$ fusion.levels=none" in main  # the baseline's star, as in report.md
    assert "[tex](tables/main.tex)" in md


def test_tables_and_figures_compile_with_pdflatex(reports: Path) -> None:
    pdflatex = shutil.which("pdflatex")
    if pdflatex is None:
        pytest.skip("pdflatex is not on PATH (apt-get install texlive-latex-recommended to run this)")
    body = []
    for name in ("grid", "hostile", "unicode"):
        for table in sorted((reports / name / "tables").glob("*.tex")):
            body += [f"\\input{{{name}/tables/{table.name}}}", "\\clearpage"]
        for figure in sorted((reports / name / "figures").glob("*.pdf")):
            body += [
                f"\\noindent\\includegraphics[width=\\linewidth]{{{name}/figures/{figure.name}}}",
                "\\clearpage",
            ]
    doc = reports / "appendix.tex"
    doc.write_text(
        "\\documentclass{article}\n\\usepackage{booktabs,graphicx}\n\\begin{document}\n"
        + "\n".join(body)
        + "\n\\end{document}\n",
        encoding="ascii",
    )
    run = subprocess.run(
        [pdflatex, "-interaction=nonstopmode", "-halt-on-error", "-no-shell-escape", doc.name],
        cwd=reports,
        capture_output=True,
        text=True,
        errors="replace",
        timeout=300,
    )
    log = (reports / "appendix.log").read_text(errors="replace")
    assert run.returncode == 0, run.stdout[-3000:]
    assert "Undefined control sequence" not in log and "\n! " not in log
    assert (reports / "appendix.pdf").stat().st_size > 10_000
    assert "(/etc/hostname" not in log  # the arm id's \input{/etc/hostname} is text, never read
    pages = re.search(r"Output written on appendix\.pdf \((\d+) pages", log)
    assert pages and int(pages.group(1)) >= len([b for b in body if b != "\\clearpage"])
