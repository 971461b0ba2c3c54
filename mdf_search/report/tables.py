"""Formatting helpers shared by the report sections (numbers → short, honest text)."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import polars as pl

from mdf_search.report.stats import Summary


def num(value: Any, digits: int = 3) -> str:
    if value is None:
        return "—"
    if isinstance(value, float | np.floating):
        if math.isnan(value):
            return "—"
        return f"{value:.{digits}f}"
    return str(value)


def pvalue(p: float) -> str:
    if math.isnan(p):
        return "—"
    return f"{p:.3f}" if p >= 0.001 else "<0.001"


def mean_sd(s: Summary, digits: int = 3) -> str:
    if s.n == 0:
        return "—"
    if s.n == 1:
        return f"{s.mean:.{digits}f} (n=1)"
    return f"{s.mean:.{digits}f} ± {s.sd:.{digits}f}"


def ci(lo: float, hi: float, digits: int = 3) -> str:
    if math.isnan(lo) or math.isnan(hi):
        return "—"
    return f"[{lo:.{digits}f}, {hi:.{digits}f}]"


def signed(value: float, digits: int = 3, percent: bool = False) -> str:
    if math.isnan(value):
        return "—"
    if percent:
        return f"{value * 100:+.1f} %"
    return f"{value:+.{digits}f}"


def confusion(text: Any) -> np.ndarray | None:
    """A ``val/confusion`` JSON cell → a square int matrix (None when missing or malformed)."""
    if not isinstance(text, str) or not text:
        return None
    try:
        matrix = np.asarray(json.loads(text), dtype=np.int64)
    except (ValueError, TypeError):
        return None
    return matrix if matrix.ndim == 2 and matrix.shape[0] == matrix.shape[1] else None


def per_class_names(frame: pl.DataFrame, prefix: str = "val") -> list[str]:
    """Classes with per-class keys (``val/recall/<class>``), in column order (= the task's class order)."""
    head = f"{prefix}/recall/"
    return [c[len(head) :] for c in frame.columns if c.startswith(head) and "/" not in c[len(head) :]]


def pareto_front(xs: list[float], ys: list[float], maximize: bool = True) -> list[int]:
    """Indices on the front: no other point has lower-or-equal cost and a better metric."""
    order = sorted(range(len(xs)), key=lambda i: (xs[i], -ys[i] if maximize else ys[i]))
    front: list[int] = []
    best = -math.inf if maximize else math.inf
    for i in order:
        if (maximize and ys[i] > best) or (not maximize and ys[i] < best):
            front.append(i)
            best = ys[i]
    return front
