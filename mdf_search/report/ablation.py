"""The ablation report: ``write_report(experiment_dir, out)`` writes report.md, a self-contained
report.html, figures/ (PNG, SVG and PDF), tables/ (CSV and booktabs LaTeX, ``report.latex``) and
deepcave/ from any experiment, finished or not.

Each section degrades to a note instead of failing: a running sweep, a resumed one, one arm, one seed,
no baseline, trials with non-finite metrics (``report.finite`` sets them aside and says so). A section
that raises anyway is replaced by a note naming the error (and logged), so one bad column never costs
the rest of the report; the report is still written, and ``write_report`` then raises ``ReportError``
(code 1) naming the failed sections, so the command never exits 0 on a broken report.

The report goes into ``--out`` only as ``report.outdir`` allows (a new or empty folder, or an earlier
report's), built beside it and swapped in whole.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from mdf_search.report import analysis, compare, curves, exports, outdir, review, sampler
from mdf_search.report.document import Report, Section, Text, d, plain, to_html, to_markdown, write_tables
from mdf_search.report.experiment import Experiment, load_experiment
from mdf_search.report.figures import FigureSink, report_style
from mdf_search.report.finite import SetAside, finite
from mdf_search.report.importance import importance_section
from mdf_search.report.latex import write_latex_tables
from mdf_search.report.outdir import ReportError

__all__ = ["ReportError", "build_report", "write_report"]

log = logging.getLogger(__name__)
REPORTS_LOG = "reports.log"


def reports_so_far(exp: Experiment) -> int:
    """How many reports ``<experiment>/reports.log`` counts (0 when it is absent or unreadable)."""
    try:
        text = (Path(exp.root) / REPORTS_LOG).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return 0
    return sum(1 for line in text.splitlines() if line.strip())


def log_report(exp: Experiment, out: Path) -> None:
    """Append a written report to ``<experiment>/reports.log`` (one line: when, where, test metrics)."""
    path = Path(exp.root) / REPORTS_LOG
    shows_test = any(c.startswith("test/") for c in exp.trials.columns)
    line = f"{datetime.now(UTC).isoformat(timespec='seconds')}\t{out}\ttest_metrics={'yes' if shows_test else 'no'}\n"
    try:
        with path.open("a", encoding="utf-8") as handle:
            handle.write(line)
    except OSError as err:  # a read-only experiment (e.g. a mounted bucket) still gets a report
        log.warning("cannot append %s: %s", path, err)


def _guard(title: str, anchor: str, build: Callable[[], Section], failed: list[str]) -> Section:
    try:
        return build()
    except Exception as err:
        log.exception("report section %r failed", title)
        failed.append(f"{title} ({type(err).__name__}: {plain(str(err))[:200]})")
        section = Section(title, anchor=anchor)
        section.note(f"this section failed: {type(err).__name__}: {d(err)}")
        return section


def build_report(
    exp: Experiment,
    out: Path,
    reports: int,
    final: Path | None = None,
    aside: SetAside | None = None,
) -> tuple[Report, list[str]]:
    """The report's sections, written (figures, deepcave/) under ``out``; ``final`` is where it will be
    published (for the reproduce command; ``out`` when None). Returns the report and its failed
    sections (title and error)."""
    failed: list[str] = []
    sink = FigureSink(out / "figures")
    try:
        cmp = compare.compare(exp)
    except Exception as err:
        log.exception("comparing the arms failed")
        failed.append(f"comparisons ({type(err).__name__}: {plain(str(err))[:200]})")
        cmp = compare.Comparison({}, None, [], image_notes=[f"comparing the arms failed: {d(err)}"])
    spec = exp.spec
    subtitle = (
        f"{d(spec.description) if spec and spec.description else 'Ablation study'} — design "
        f"{d(spec.design) if spec else '?'}, metric {d(exp.metric)} ({d(exp.mode)}), {exp.trials.height} "
        f"trials, generated {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}."
    )
    report = Report(f"Ablation report: {d(exp.name)}", subtitle)
    invalid = aside.trials if aside is not None else None
    builders: list[tuple[str, str, Callable[[], Section]]] = [
        ("Provenance", "provenance", lambda: analysis.provenance_section(exp, reports, final or out)),
        ("Design matrix", "design", lambda: analysis.design_section(exp)),
        ("Main results", "main", lambda: analysis.main_section(exp, cmp)),
        ("Comparisons", "compare", lambda: compare.comparison_section(exp, cmp)),
        ("Factors", "factors", lambda: analysis.factor_section(exp, sink)),
        ("Per class", "classes", lambda: analysis.per_class_section(exp, cmp, sink)),
        ("Parameter importance", "importance", lambda: importance_section(exp, sink)),
        *(
            [("Sampler", "sampler", lambda: sampler.sampler_section(exp, sink))]
            if sampler.is_sampler(exp)
            else []
        ),
        ("Ablation path", "path", lambda: review.path_section(exp, cmp, sink)),
        ("Cost: Pareto fronts", "pareto", lambda: review.pareto_section(exp, sink)),
        ("Learning curves", "curves", lambda: curves.curves_section(exp, cmp, sink)),
        ("Warnings", "warnings", lambda: review.warnings_section(exp, cmp, reports)),
        ("Failure appendix", "failures", lambda: review.failures_section(exp, invalid)),
        ("Exports", "exports", lambda: exports.export_section(exp, out)),
    ]
    report.sections = [_guard(title, anchor, build, failed) for title, anchor, build in builders]
    notes = [d(n) for n in exp.notes] + (aside.notes if aside is not None else [])
    if notes:
        report.sections[0].blocks[:0] = [Text(n, "note") for n in notes]
    return report, failed


def write_report(experiment_dir: str, out: str) -> Path:
    """Build the report and publish it at ``out``; return ``out``.

    Raises ``ExperimentError`` for a missing or empty experiment and ``ReportError`` (a subclass) for an
    ``--out`` the report may not write (``code`` 2, nothing written), a write that failed, or a report
    published with failed sections (``code`` 1).
    """
    exp = load_experiment(experiment_dir)
    target = outdir.check_out(out, exp.root)
    exp, aside = finite(exp)
    tmp = outdir.staging(target)
    try:
        with report_style():  # the same experiment draws the same figures, whatever the process set
            report, failed = build_report(exp, tmp, reports_so_far(exp) + 1, target.path, aside)
        write_tables(report, tmp / "tables")
        write_latex_tables(report, tmp / "tables")
        (tmp / "report.md").write_text(to_markdown(report), encoding="utf-8")
        (tmp / "report.html").write_text(to_html(report), encoding="utf-8")
        outdir.publish(tmp, target)
    except OSError as err:
        outdir.discard(tmp, target)
        raise ReportError(
            f"--out {out}: writing the report failed ({err.strerror or err}"
            f"{f': {err.filename}' if err.filename else ''}); nothing was replaced; free space or pass "
            "another --out",
            code=1,
        ) from None
    except BaseException:
        outdir.discard(tmp, target)
        raise
    log_report(exp, target.path)
    if failed:
        raise ReportError(
            f"{out}: the report was written, but {len(failed)} section(s) failed: {'; '.join(failed)}. "
            "Their notes in report.md say so; this is a bug: report it with the experiment",
            code=1,
        )
    return target.path
