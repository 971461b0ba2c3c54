"""Matplotlib (Agg) figures of the report; each is saved as PNG (150 dpi, for report.md and the HTML),
SVG and PDF (vector, for a paper: TrueType fonts, which publishers accept where Type 3 is refused) under
stable names, and returned as a block. The files carry no date and fixed SVG ids, so the same report
writes the same bytes.

Labels are data (arm ids, parameter names and values): mathtext is off, so a ``$`` in a name is a
dollar sign, never a formula that fails to parse; captions mark their data with ``document.d``."""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib import ticker
from matplotlib.figure import Figure

from mdf_search.report.document import FigureBlock, d

log = logging.getLogger(__name__)
BASE, BEST, OTHER = "#8c959f", "#cf222e", "#0969da"
PALETTE = ["#0969da", "#cf222e", "#1a7f37", "#8250df", "#bc4c00", "#57606a", "#bf3989", "#0a3069"]
# matplotlib's defaults (not whatever the process holds now), then the report's own settings
STYLE: dict[str, Any] = {k: v for k, v in matplotlib.rcParamsDefault.items() if k != "backend"}
STYLE.update(
    {
        "figure.dpi": 110,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "axes.grid": True,
        "grid.alpha": 0.3,
        "font.size": 9,
        "axes.titlesize": 10,
        "svg.fonttype": "none",
        "svg.hashsalt": "mdf-search",  # stable element ids: the same figure, the same SVG
        "pdf.fonttype": 42,
        "text.parse_math": False,
    }
)


def report_style() -> contextlib.AbstractContextManager[None]:
    """The report's matplotlib settings for as long as it draws, whatever another library left in
    ``plt.rcParams`` (a style Optuna applied, a test's settings): the same experiment, the same bytes."""
    return plt.rc_context(STYLE)  # type: ignore[arg-type]  # (rc keys are typed as a Literal)


DPI = 150
FORMATS = ("png", "svg", "pdf")  # every figure is written in each, as figures/<name>.<format>


class FigureSink:
    """Saves figures under ``directory`` (PNG, SVG and PDF) and hands back report blocks."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    def save(self, fig: Figure, name: str, caption: str) -> FigureBlock:
        plain_log_ticks(fig)
        if not fig.get_layout_engine():
            with (
                warnings.catch_warnings()
            ):  # twin axes (Optuna's parallel coordinates): laid out as well as can be
                warnings.filterwarnings("ignore", message=".*not compatible with tight_layout")
                fig.tight_layout()
        buf = io.BytesIO()
        try:
            fig.savefig(buf, format="png", dpi=DPI)
            png = buf.getvalue()
            (self.directory / f"{name}.png").write_bytes(png)
            fig.savefig(self.directory / f"{name}.svg", format="svg", metadata={"Date": None})
            fig.savefig(
                self.directory / f"{name}.pdf", format="pdf", metadata={"CreationDate": None, "ModDate": None}
            )
        finally:
            plt.close(fig)
        return FigureBlock(name, caption, png)


class PlainLogFormatter(ticker.LogFormatter):
    """Labels the log-axis ticks matplotlib labels, as short plain text with three significant digits
    (``2e-4``, ``1.5e6``, ``0.01``, ``300``)."""

    def __call__(self, x: float, pos: int | None = None) -> str:
        if not super().__call__(x, pos):  # matplotlib leaves this tick unlabelled
            return ""
        if x == 0 or not math.isfinite(x):
            return f"{x:g}"
        exponent = math.floor(math.log10(abs(x)))
        return f"{x:.3g}" if -2 <= exponent < 4 else f"{x / 10**exponent:.3g}e{exponent}"


def plain_log_ticks(fig: Figure) -> None:
    """Log-scale tick labels as plain numbers: matplotlib's default writes them as mathtext
    (``$\\mathdefault{10^{-3}}$``), which with ``text.parse_math`` off would print as that source."""
    for ax in fig.axes:
        for axis, scale in ((ax.xaxis, ax.get_xscale()), (ax.yaxis, ax.get_yscale())):
            if scale == "log":
                axis.set_major_formatter(PlainLogFormatter())
                axis.set_minor_formatter(PlainLogFormatter(labelOnlyBase=False))


def short(label: Any, width: int = 28) -> str:
    text = str(label)
    return text if len(text) <= width else text[: width - 1] + "…"


def _err(lo: float, hi: float, mean: float) -> tuple[float, float]:
    if math.isnan(lo) or math.isnan(hi):
        return 0.0, 0.0
    return max(mean - lo, 0.0), max(hi - mean, 0.0)


def factor_figure(
    sink: FigureSink,
    factor: str,
    metric: str,
    levels: Sequence[str],
    points: Mapping[str, Sequence[float]],
    means: Mapping[str, tuple[float, float, float]],
    best: Mapping[str, float],
) -> FigureBlock:
    """Left: main effect (mean with 95 % CI over every completed trial, dots = trials). Right: isolation
    (best trial over nuisance values per level)."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.3))
    x = np.arange(len(levels))
    for i, level in enumerate(levels):
        values = list(points.get(level, []))
        jitter = np.linspace(-0.08, 0.08, len(values)) if len(values) > 1 else np.zeros(len(values))
        ax1.scatter(i + jitter, values, s=14, color=BASE, alpha=0.7, zorder=2)
        if level in means:
            mean, lo, hi = means[level]
            ax1.errorbar(
                [i],
                [mean],
                yerr=np.array([_err(lo, hi, mean)]).T,
                fmt="o",
                color=OTHER,
                capsize=5,
                ms=7,
                zorder=3,
            )
    mean_line = [means[lv][0] if lv in means else np.nan for lv in levels]
    ax1.plot(x, mean_line, color=OTHER, alpha=0.5, zorder=1)
    ax1.set_title(f"main effect of {factor} (mean, 95 % t-CI)")
    ax1.set_ylabel(metric)
    bars = [best.get(lv, np.nan) for lv in levels]
    top = np.nanmax(bars) if np.isfinite(bars).any() else np.nan
    ax2.bar(x, bars, color=[BEST if b == top else OTHER for b in bars], alpha=0.85)
    for i, b in enumerate(bars):
        if np.isfinite(b):
            ax2.annotate(f"{b:.3f}", (i, b), ha="center", va="bottom", fontsize=8)
    ax2.set_title("isolation: best trial over nuisance values")
    for ax in (ax1, ax2):
        ax.set_xticks(x, [short(v, 14) for v in levels])
        ax.set_xlabel(factor)
    finite = [b for b in bars if np.isfinite(b)]
    if finite:
        span = max(finite) - min(finite) or 0.05
        ax2.set_ylim(max(min(finite) - 0.5 * span, 0.0), max(finite) + 0.15 * span)
    return sink.save(fig, f"factor_{_slug(factor)}", f"{d(factor)}: main effect and isolation ({d(metric)})")


def interaction_figure(
    sink: FigureSink,
    a: str,
    b: str,
    metric: str,
    a_levels: Sequence[str],
    series: Mapping[str, Mapping[str, tuple[float, float, float]]],
) -> FigureBlock:
    fig, ax = plt.subplots(figsize=(5.5, 3.3))
    x = np.arange(len(a_levels))
    for k, (b_level, cells) in enumerate(series.items()):
        xs = [i + (k - len(series) / 2) * 0.04 for i, lv in enumerate(a_levels) if lv in cells]
        ms = [cells[lv][0] for lv in a_levels if lv in cells]
        errs = np.array([_err(cells[lv][1], cells[lv][2], cells[lv][0]) for lv in a_levels if lv in cells]).T
        color = PALETTE[k % len(PALETTE)]
        ax.errorbar(
            xs,
            ms,
            yerr=errs if errs.size else None,
            fmt="-o",
            capsize=4,
            color=color,
            label=f"{b}={short(b_level, 14)}",
        )
    ax.set_xticks(x, [short(v, 14) for v in a_levels])
    ax.set_xlabel(a)
    ax.set_ylabel(metric)
    ax.set_title(f"interaction {a} × {b} (mean, 95 % t-CI)")
    ax.legend(fontsize=8, frameon=False)
    return sink.save(
        fig, f"interaction_{_slug(a)}__{_slug(b)}", f"interaction of {d(a)} and {d(b)} ({d(metric)})"
    )


def per_class_figure(
    sink: FigureSink,
    classes: Sequence[str],
    rows: Mapping[str, Mapping[str, float]],
    labels: Mapping[str, str],
) -> FigureBlock:
    """Grouped bars: per-class recall and F1 of each named arm (rows: arm → {"recall/c": v, "f1/c": v})."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5), sharey=True)
    width = 0.8 / max(len(rows), 1)
    for ax, kind in zip(axes, ("recall", "f1"), strict=True):
        x = np.arange(len(classes))
        for k, (arm, values) in enumerate(rows.items()):
            ys = [values.get(f"{kind}/{c}", np.nan) for c in classes]
            ax.bar(
                x + (k - (len(rows) - 1) / 2) * width,
                ys,
                width,
                label=labels.get(arm, short(arm)),
                color=[BASE, BEST, OTHER][k % 3],
            )
        ax.set_xticks(x, list(classes))
        ax.set_ylim(0, 1.05)
        ax.set_title(f"per-class {kind} (val, mean over seeds)")
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, fontsize=8, frameon=False, loc="lower center", ncol=len(rows))
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return sink.save(fig, "per_class", "per-class recall and F1: best arm vs baseline")


def confusion_figure(
    sink: FigureSink, classes: Sequence[str], matrices: Mapping[str, np.ndarray], labels: Mapping[str, str]
) -> FigureBlock:
    fig, axes = plt.subplots(1, len(matrices), figsize=(3.9 * len(matrices), 3.5), squeeze=False)
    for ax, (arm, matrix) in zip(axes[0], matrices.items(), strict=True):
        norm = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
        ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
        for i in range(matrix.shape[0]):
            for j in range(matrix.shape[1]):
                ax.text(
                    j,
                    i,
                    f"{int(matrix[i, j])}",
                    ha="center",
                    va="center",
                    color="white" if norm[i, j] > 0.6 else "black",
                )
        ticks = list(classes) if len(classes) == matrix.shape[0] else [str(i) for i in range(matrix.shape[0])]
        ax.set_xticks(range(len(ticks)), ticks, rotation=30)
        ax.set_yticks(range(len(ticks)), ticks)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.grid(False)
        ax.set_title(labels.get(arm, short(arm)), fontsize=9)
    return sink.save(
        fig, "confusion", "validation confusion matrices summed over seeds (colour: row-normalised)"
    )


def pareto_figure(
    sink: FigureSink,
    name: str,
    xlabel: str,
    metric: str,
    xs: Sequence[float],
    ys: Sequence[float],
    arms: Sequence[str],
    front: Sequence[int],
    log_x: bool = False,
) -> FigureBlock:
    fig, ax = plt.subplots(figsize=(8, 3.6))
    names = sorted(set(arms))
    for k, arm in enumerate(names):
        idx = [i for i, a in enumerate(arms) if a == arm]
        ax.scatter(
            [xs[i] for i in idx],
            [ys[i] for i in idx],
            s=22,
            color=PALETTE[k % len(PALETTE)],
            label=short(arm, 40),
            alpha=0.8,
        )
    if front:
        order = sorted(front, key=lambda i: xs[i])
        ax.step(
            [xs[i] for i in order],
            [ys[i] for i in order],
            where="post",
            color="black",
            lw=1,
            ls="--",
            label="Pareto front",
        )
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(metric)
    ax.legend(fontsize=7, frameon=False, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return sink.save(fig, name, f"{d(metric)} vs {xlabel} (dashed: Pareto front)")


def curves_figure(
    sink: FigureSink,
    metric: str,
    curves: Mapping[str, Mapping[str, Sequence[tuple[int, int, float, float, float]]]],
    labels: Mapping[str, str],
    band: str,
) -> FigureBlock:
    """Per arm, the mean over seeds at each epoch with a shaded band: ``curves`` = {arm: {"metric" |
    "loss": [(epoch, n, mean, lo, hi), ...]}}; ``band`` names the band for the caption."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.4))
    losses = False
    for k, (arm, series) in enumerate(curves.items()):
        color = PALETTE[k % len(PALETTE)]
        for ax, key in ((ax1, "metric"), (ax2, "loss")):
            points = [p for p in series.get(key, ()) if np.isfinite(p[2])]
            if not points:
                continue
            losses |= key == "loss"
            epochs = [p[0] for p in points]
            ax.plot(epochs, [p[2] for p in points], "-o", ms=3, color=color,
                    label=labels.get(arm, short(arm, 48)) if key == "metric" else None)  # fmt: skip
            lo, hi = np.array([p[3] for p in points]), np.array([p[4] for p in points])
            shown = np.isfinite(lo) & np.isfinite(hi)
            if shown.any():
                ax.fill_between(np.array(epochs)[shown], lo[shown], hi[shown], color=color, alpha=0.18, lw=0)
    ax1.set_title(f"{metric} per epoch (mean over seeds)")
    ax2.set_title("train loss per epoch (mean over seeds)")
    if not losses:
        ax2.text(0.5, 0.5, "no train loss recorded", ha="center", va="center", transform=ax2.transAxes)
    for ax in (ax1, ax2):
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
    ax1.legend(fontsize=7, frameon=False)
    return sink.save(fig, "learning_curves", f"learning curves per arm: mean over seeds, shaded: {band}")


def path_figure(sink: FigureSink, metric: str, steps: Sequence[str], values: Sequence[float]) -> FigureBlock:
    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.plot(range(len(values)), values, "-o", color=OTHER)
    for i, v in enumerate(values):
        ax.annotate(f"{v:.3f}", (i, v), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)
    ax.set_xticks(range(len(steps)), [short(s, 22) for s in steps], rotation=15, ha="right")
    ax.set_ylabel(f"{metric} (mean over seeds)")
    ax.set_title("ablation path: baseline → best, one factor at a time")
    return sink.save(fig, "ablation_path", "ablation path from the baseline to the best arm")


def importance_figure(sink: FigureSink, table: Mapping[str, Mapping[str, float]]) -> FigureBlock:
    """table: evaluator → {param: importance}."""
    params = sorted({p for v in table.values() for p in v})
    fig, ax = plt.subplots(figsize=(6.5, 0.5 + 0.45 * len(params) * max(len(table), 1)))
    height = 0.8 / max(len(table), 1)
    y = np.arange(len(params))
    for k, (name, values) in enumerate(table.items()):
        ax.barh(
            y + k * height,
            [values.get(p, 0.0) for p in params],
            height,
            label=name,
            color=PALETTE[k % len(PALETTE)],
        )
    ax.set_yticks(y + height * (len(table) - 1) / 2, params)
    ax.set_xlabel("importance (normalised)")
    ax.legend(fontsize=8, frameon=False)
    return sink.save(fig, "importance", "parameter importance (Optuna evaluators)")


def _slug(text: str, width: int = 60) -> str:
    """A file-name part from a parameter name: ASCII letters and digits, ``_`` for the rest, and a short
    hash when that loses anything (so two names never share a figure, and no name is too long)."""
    slug = "".join(c if c.isascii() and c.isalnum() else "_" for c in text).strip("_")
    if slug == text.replace(".", "_") and len(slug) <= width:
        return slug
    return f"{slug[:width]}_{hashlib.sha256(text.encode()).hexdigest()[:8]}".lstrip("_")
