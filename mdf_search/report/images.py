"""Arms compared with the baseline on the same test images, from the per-sample predictions table.

Seeds are the unit of replication for training; images are the unit for the test set. This module is
the second: for each arm, the test predictions of the trial validation selected for each seed are
paired image by image with the baseline's selected trial of the same seed.

``paired_case_bootstrap`` resamples **cases** (a patient or eye, ``case_id``: images of one case are
not independent), with replacement, and applies the *same* resampled cases to both arms. Seeds are
strata: the statistic is the mean over seeds of the per-seed difference. Seeds whose test sets hold the
same cases (a split that does not depend on the training seed, the usual design) share one resampling,
because a hard case is hard for every seed; seeds with different test sets are resampled separately.
It returns Δ (arm − baseline) of test accuracy and of macro-F1 (the same definition as
``mdf_search.metrics``: classes present in labels or predictions, zero division 0), the 95 % percentile
interval and a two-sided p: the share of resampled Δ at least as far from the observed Δ as the
observed Δ is from 0 (the bootstrap distribution shifted to the null), with the +1 correction, so
``p >= 1 / (n_boot + 1)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

from mdf_search.report.document import d
from mdf_search.report.experiment import Experiment, metric_task
from mdf_search.report.stats import holm

NAN = float("nan")
N_BOOT = 4000
REQUIRED = ("trial_id", "attempt", "split", "sample_id", "label", "pred")


@dataclass(frozen=True)
class Estimate:
    """A paired difference (arm − baseline) with its 95 % percentile bootstrap interval and p."""

    diff: float
    lo: float
    hi: float
    p: float


@dataclass
class ImageComparison:
    arm: str
    seeds: int  # seed strata with paired test images
    cases: int  # distinct test cases
    pairs: int  # (seed, image) pairs
    arm_only: int  # pairs the arm classifies correctly and the baseline does not
    base_only: int  # the reverse
    accuracy: Estimate
    macro_f1: Estimate
    accuracy_p_holm: float = NAN
    macro_f1_p_holm: float = NAN


def _case_counts(case: np.ndarray, cls: np.ndarray, n_cases: int, k: int) -> np.ndarray:
    return np.bincount(case * k + cls, minlength=n_cases * k).reshape(n_cases, k).astype(np.float64)


def _metrics(
    weights: np.ndarray, case: np.ndarray, label: np.ndarray, pred: np.ndarray, n_cases: int, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Accuracy and macro-F1 for each row of case weights (rows: resamples)."""
    hit = label == pred
    correct = np.bincount(case, weights=hit.astype(np.float64), minlength=n_cases)
    count = np.bincount(case, minlength=n_cases).astype(np.float64)
    tp = _case_counts(case[hit], label[hit], n_cases, k)
    both = _case_counts(case, label, n_cases, k) + _case_counts(case, pred, n_cases, k)
    accuracy = (weights @ correct) / (weights @ count)
    tp_w, den = weights @ tp, weights @ both
    f1 = np.divide(2 * tp_w, den, out=np.zeros_like(den), where=den > 0)
    present = den > 0
    macro = (f1 * present).sum(axis=1) / np.maximum(present.sum(axis=1), 1)
    return accuracy, macro


def _estimate(observed: float, boot: np.ndarray) -> Estimate:
    lo, hi = (float(v) for v in np.quantile(boot, [0.025, 0.975]))
    if observed == 0:
        return Estimate(0.0, lo, hi, 1.0)
    tol = 1e-12 * max(1.0, abs(observed))
    extreme = int(np.sum(np.abs(boot - observed) >= abs(observed) - tol))
    return Estimate(observed, lo, hi, (1 + extreme) / (boot.size + 1))


def paired_case_bootstrap(
    seed: Sequence[int] | np.ndarray,
    case: Sequence[str] | np.ndarray,
    label: Sequence[str] | np.ndarray,
    pred_arm: Sequence[str] | np.ndarray,
    pred_base: Sequence[str] | np.ndarray,
    n_boot: int = N_BOOT,
    rng_seed: int = 0,
) -> tuple[Estimate, Estimate]:
    """Δ test accuracy and Δ macro-F1 (arm − baseline) over paired (seed, image) rows; see the module
    docstring. Every argument has one entry per pair; ``case`` groups images of one patient or eye."""
    seeds, cases = np.asarray(seed), np.asarray(case, dtype=object)
    labels, p_arm, p_base = (np.asarray(v, dtype=object) for v in (label, pred_arm, pred_base))
    if not seeds.size:
        raise ValueError("paired_case_bootstrap needs at least one pair, but got none")
    classes = {c: i for i, c in enumerate(sorted({*labels.tolist(), *p_arm.tolist(), *p_base.tolist()}))}
    k = len(classes)
    code = np.vectorize(classes.__getitem__, otypes=[np.int64])
    y, a, b = code(labels), code(p_arm), code(p_base)
    rng = np.random.default_rng(rng_seed)
    strata: dict[tuple[str, ...], list[int]] = {}
    for s in np.unique(seeds).tolist():
        strata.setdefault(tuple(sorted(set(cases[seeds == s].tolist()))), []).append(s)
    diffs_obs: list[tuple[float, float]] = []
    diffs_boot: list[tuple[np.ndarray, np.ndarray]] = []
    for case_ids, members in strata.items():
        index = {c: i for i, c in enumerate(case_ids)}
        n_cases = len(case_ids)
        weights = rng.multinomial(n_cases, np.full(n_cases, 1.0 / n_cases), size=n_boot).astype(np.float64)
        ones = np.ones((1, n_cases))
        for s in members:
            rows = seeds == s
            cidx = np.array([index[c] for c in cases[rows].tolist()], dtype=np.int64)
            obs_a = _metrics(ones, cidx, y[rows], a[rows], n_cases, k)
            obs_b = _metrics(ones, cidx, y[rows], b[rows], n_cases, k)
            boot_a = _metrics(weights, cidx, y[rows], a[rows], n_cases, k)
            boot_b = _metrics(weights, cidx, y[rows], b[rows], n_cases, k)
            diffs_obs.append((float(obs_a[0][0] - obs_b[0][0]), float(obs_a[1][0] - obs_b[1][0])))
            diffs_boot.append((boot_a[0] - boot_b[0], boot_a[1] - boot_b[1]))
    acc = _estimate(float(np.mean([d[0] for d in diffs_obs])), np.mean([d[0] for d in diffs_boot], axis=0))
    f1 = _estimate(float(np.mean([d[1] for d in diffs_obs])), np.mean([d[1] for d in diffs_boot], axis=0))
    return acc, f1


def head_predictions(exp: Experiment, split: str) -> tuple[pl.DataFrame, str | None]:
    """Rows of ``split`` for the head the study metric scores (``task=dual`` writes two heads), with
    string labels and a case id (the sample id where a source has none); or an empty frame and why."""
    preds = exp.predictions()
    if preds.is_empty():
        return preds, (
            "no predictions table (predictions/*.parquet): this experiment predates per-sample "
            "predictions, so the comparison over test images is skipped"
        )
    missing = [c for c in REQUIRED if c not in preds.columns]
    if missing:
        return (
            pl.DataFrame(),
            f"the predictions table lacks {d(missing)}: the comparison over test images is skipped",
        )
    frame = preds.filter(pl.col("split") == split)
    if "task" in frame.columns:
        task = metric_task(exp.metric)
        heads = sorted(str(t) for t in frame["task"].drop_nulls().unique().to_list())
        if task is not None:
            frame = frame.filter(pl.col("task") == task)
        elif len(heads) > 1:
            return pl.DataFrame(), (
                f"the predictions hold the heads {d(heads)} and the study metric {d(exp.metric)} names none: "
                "the comparison over test images is skipped"
            )
    case = pl.col("case_id") if "case_id" in frame.columns else pl.lit(None, dtype=pl.String)
    return frame.with_columns(
        pl.col("attempt").cast(pl.Int64),
        pl.col("sample_id").cast(pl.String),
        pl.col("label").cast(pl.String),
        pl.col("pred").cast(pl.String),
        case.cast(pl.String).fill_null(pl.col("sample_id").cast(pl.String)).alias("case_id"),
    ), None


def selected_test_predictions(exp: Experiment) -> tuple[pl.DataFrame, str | None]:
    """Test rows of the trials validation selected, with their arm and seed; or an empty frame and why."""
    test, why = head_predictions(exp, "test")
    if why is not None:
        return test, why
    chosen = exp.selected().select("arm", "seed", "trial_id", pl.col("attempt").cast(pl.Int64))
    test = test.join(chosen, on=["trial_id", "attempt"], how="inner")
    if test.is_empty():
        return (
            test,
            "no test predictions from the selected trials: the comparison over test images is skipped",
        )
    return test, None


def image_comparisons(
    exp: Experiment, base: str | None, arms: Sequence[str], n_boot: int = N_BOOT
) -> tuple[dict[str, ImageComparison], list[str]]:
    """Each arm vs the baseline over paired test images (Holm across arms within each metric), and notes
    on what was skipped and why."""
    if base is None:
        return {}, ["no baseline arm: no comparison over test images"]
    test, why = selected_test_predictions(exp)
    if why is not None:
        return {}, [why]
    cols = ["seed", "sample_id", "case_id", "label", "pred"]
    reference = test.filter(pl.col("arm") == base).select(cols).unique(["seed", "sample_id"], keep="first")
    out: dict[str, ImageComparison] = {}
    notes: list[str] = []
    for arm in arms:
        if arm == base:
            continue
        mine = test.filter(pl.col("arm") == arm).select("seed", "sample_id", pl.col("pred").alias("pred_arm"))
        paired = reference.join(mine.unique(["seed", "sample_id"], keep="first"), on=["seed", "sample_id"])
        if paired.is_empty():
            notes.append(f"{d(arm)}: no test images paired with the baseline's on a shared seed")
            continue
        acc, f1 = paired_case_bootstrap(
            paired["seed"].to_numpy(),
            paired["case_id"].to_numpy(),
            paired["label"].to_numpy(),
            paired["pred_arm"].to_numpy(),
            paired["pred"].to_numpy(),
            n_boot=n_boot,
        )
        right_arm = paired["pred_arm"] == paired["label"]
        right_base = paired["pred"] == paired["label"]
        out[arm] = ImageComparison(
            arm,
            seeds=paired["seed"].n_unique(),
            cases=paired["case_id"].n_unique(),
            pairs=paired.height,
            arm_only=int((right_arm & ~right_base).sum()),
            base_only=int((~right_arm & right_base).sum()),
            accuracy=acc,
            macro_f1=f1,
        )
    names = list(out)
    for name, p in zip(names, holm([out[n].accuracy.p for n in names]), strict=True):
        out[name].accuracy_p_holm = p
    for name, p in zip(names, holm([out[n].macro_f1.p for n in names]), strict=True):
        out[name].macro_f1_p_holm = p
    return out, notes


def reaches(comparison: ImageComparison, alpha: float) -> bool:
    """Whether this comparison's Holm-adjusted p (accuracy) is below α."""
    return math.isfinite(comparison.accuracy_p_holm) and comparison.accuracy_p_holm < alpha
