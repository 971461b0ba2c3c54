"""The ablation report: ``write_report(experiment_dir, out)`` writes report.md, a self-contained
report.html, figures/ (PNG + SVG), tables/ (CSV) and deepcave/ from any experiment, finished or not.

Each section degrades to a note instead of failing: a running sweep, a resumed one, one arm, one seed,
no baseline. A section that raises anyway is replaced by a note naming the error (and logged), so one bad
column never costs the whole report.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from mdf_search.report import analysis, compare, exports, review
from mdf_search.report.document import Report, Section, Text, to_html, to_markdown, write_tables
from mdf_search.report.experiment import Experiment, load_experiment
from mdf_search.report.figures import FigureSink
from mdf_search.report.importance import importance_section

log = logging.getLogger(__name__)
REPORTS_LOG = "reports.log"


def count_report(exp: Experiment, out: Path) -> int:
    """Append this report to ``<experiment>/reports.log``; return how many reports exist, this one included."""
    path = Path(exp.root) / REPORTS_LOG
    shows_test = any(c.startswith("test/") for c in exp.trials.columns)
    line = f"{datetime.now(UTC).isoformat(timespec='seconds')}\t{out}\ttest_metrics={'yes' if shows_test else 'no'}\n"
    try:
        with path.open("a") as handle:
            handle.write(line)
        return sum(1 for text in path.read_text().splitlines() if text.strip())
    except OSError as err:  # a read-only experiment (e.g. a mounted bucket) still gets a report
        log.warning("cannot append %s: %s", path, err)
        return 1


def _guard(title: str, anchor: str, build: Callable[[], Section]) -> Section:
    try:
        return build()
    except Exception as err:
        log.exception("report section %r failed", title)
        section = Section(title, anchor=anchor)
        section.note(f"this section failed: {type(err).__name__}: {err}")
        return section


def build_report(exp: Experiment, out: Path, reports: int) -> Report:
    sink = FigureSink(out / "figures")
    cmp = compare.compare(exp)
    spec = exp.spec
    subtitle = (
        f"{spec.description if spec and spec.description else 'Ablation study'} — design {spec.design if spec else '?'}, "
        f"metric {exp.metric} ({exp.mode}), {exp.trials.height} trials, generated "
        f"{datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}."
    )
    report = Report(f"Ablation report: {exp.name}", subtitle)
    builders: list[tuple[str, str, Callable[[], Section]]] = [
        ("Provenance", "provenance", lambda: analysis.provenance_section(exp, reports, out)),
        ("Design matrix", "design", lambda: analysis.design_section(exp)),
        ("Main results", "main", lambda: analysis.main_section(exp, cmp)),
        ("Comparisons", "compare", lambda: compare.comparison_section(exp, cmp)),
        ("Factors", "factors", lambda: analysis.factor_section(exp, sink)),
        ("Per class", "classes", lambda: analysis.per_class_section(exp, cmp, sink)),
        ("Parameter importance", "importance", lambda: importance_section(exp, sink)),
        ("Ablation path", "path", lambda: review.path_section(exp, cmp, sink)),
        ("Cost: Pareto fronts", "pareto", lambda: review.pareto_section(exp, sink)),
        ("Learning curves", "curves", lambda: review.curves_section(exp, sink)),
        ("Warnings", "warnings", lambda: review.warnings_section(exp, cmp, reports)),
        ("Failure appendix", "failures", lambda: review.failures_section(exp)),
        ("Exports", "exports", lambda: exports.export_section(exp, out)),
    ]
    report.sections = [_guard(title, anchor, build) for title, anchor, build in builders]
    if exp.notes:
        report.sections[0].blocks[:0] = [Text(n, "note") for n in exp.notes]
    return report


def write_report(experiment_dir: str, out: str) -> Path:
    """Build and write the report; raise ``ExperimentError`` for a missing or empty experiment."""
    exp = load_experiment(experiment_dir)
    target = Path(out)
    for sub in ("figures", "tables", "deepcave"):
        shutil.rmtree(target / sub, ignore_errors=True)  # no stale figure from an earlier report
    target.mkdir(parents=True, exist_ok=True)
    reports = count_report(exp, target)
    report = build_report(exp, target, reports)
    write_tables(report, target / "tables")
    (target / "report.md").write_text(to_markdown(report))
    (target / "report.html").write_text(to_html(report))
    return target
