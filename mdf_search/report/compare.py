"""Each arm against the baseline, twice, and whether the study measured anything at all.

- **Over seeds** (the unit of replication for training): per-seed values of the study metric of the
  trial validation selected for each (arm, seed), paired with the baseline's on shared seeds. Δ is the
  mean paired difference with its 95 % Student-t interval; two tests: the paired t-test and the exact
  sign-flip test. Holm across arms within each test.
- **Over test images** (the unit for the test set): ``report.images``' paired bootstrap over cases,
  stratified by seed, from the predictions table; skipped with a note for experiments without it.

A claim says which test supports it (Holm-adjusted p < α). ``Comparison.floor`` says when the study
measured nothing (every trial predicts one class on validation, or every (arm, seed) value is tied):
then arms are listed in design order and never ranked.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from mdf_search.report import tables as tb
from mdf_search.report.document import Section, TableBlock, d
from mdf_search.report.experiment import Experiment
from mdf_search.report.images import ImageComparison, head_predictions, image_comparisons
from mdf_search.report.power import ALPHA, Power, design_power
from mdf_search.report.stats import (
    holm,
    paired_effect_size,
    paired_permutation_test,
    paired_t_test,
    t_interval,
)

NAN = float("nan")
log = logging.getLogger(__name__)


@dataclass
class ArmStats:
    """Per arm: per-seed values of the study metric and the comparison with the baseline over seeds."""

    arm: str
    seeds: dict[int, float]
    mean: float
    pairs: int = 0
    diff: float = NAN
    diff_lo: float = NAN
    diff_hi: float = NAN
    p_t: float = NAN
    p_t_holm: float = NAN
    p_sign: float = NAN
    p_sign_holm: float = NAN
    effect: float = NAN


@dataclass
class Comparison:
    stats: dict[str, ArmStats]
    base: str | None
    ranked: list[str]  # best first; design order when ``floor`` says the study measured nothing
    floor: str | None = None
    floor_arms: list[str] = field(default_factory=list)
    images: dict[str, ImageComparison] = field(default_factory=dict)
    image_notes: list[str] = field(default_factory=list)
    power: Power = field(default_factory=lambda: design_power(0, 0))


def seed_values(exp: Experiment, metric: str) -> dict[str, dict[int, float]]:
    """{arm: {seed: value}} of ``metric`` from the trial validation selected for each (arm, seed)."""
    out: dict[str, dict[int, float]] = {}
    for row in exp.per_seed(metric).iter_rows(named=True):
        out.setdefault(row["arm"], {})[int(row["seed"])] = float(row["value"])
    return out


def arm_stats(exp: Experiment) -> dict[str, ArmStats]:
    values = seed_values(exp, exp.metric)
    base = exp.baseline_arm()
    out = {arm: ArmStats(arm, v, float(np.mean(list(v.values())))) for arm, v in values.items()}
    if base not in out:
        return out
    tested: list[str] = []
    for arm, st in out.items():
        if arm == base:
            continue
        common = sorted(set(st.seeds) & set(out[base].seeds))
        diffs = np.array([st.seeds[s] - out[base].seeds[s] for s in common])
        st.pairs = len(common)
        if common:
            st.diff = float(diffs.mean())
            st.diff_lo, st.diff_hi = t_interval(diffs)
            st.p_t = paired_t_test(diffs)
            st.p_sign = paired_permutation_test(diffs)
            st.effect = paired_effect_size(diffs)
            tested.append(arm)
    for arm, p_t, p_sign in zip(
        tested, holm([out[a].p_t for a in tested]), holm([out[a].p_sign for a in tested]), strict=True
    ):
        out[arm].p_t_holm, out[arm].p_sign_holm = p_t, p_sign
    return out


def constant_trials(exp: Experiment, trials: pl.DataFrame) -> dict[str, bool]:
    """{trial_id: whether all its validation predictions are one class} for ``trials`` (rows of the
    trials table), from the predictions table when it has their val rows, else from ``val/confusion``."""
    if trials.is_empty():
        return {}
    val, _ = head_predictions(exp, "val")
    if not val.is_empty():
        keys = trials.select("trial_id", pl.col("attempt").cast(pl.Int64))
        counts = (
            val.join(keys, on=["trial_id", "attempt"]).group_by("trial_id").agg(pl.col("pred").n_unique())
        )
        if counts.height:
            return {str(t): int(n) == 1 for t, n in counts.iter_rows()}
    out: dict[str, bool] = {}
    if "val/confusion" in trials.columns:
        for trial_id, text in trials.select("trial_id", "val/confusion").iter_rows():
            matrix = tb.confusion(text)
            if matrix is not None and matrix.sum() > 0:
                out[str(trial_id)] = int((matrix.sum(axis=0) > 0).sum()) == 1
    return out


def floor(exp: Experiment, stats: dict[str, ArmStats]) -> tuple[str | None, list[str]]:
    """(why the study measured nothing, or None; arms whose every selected trial predicts one class)."""
    chosen = exp.selected()
    constant = constant_trials(exp, chosen)
    by_arm: dict[str, list[bool]] = {}
    for arm, trial_id in chosen.select("arm", "trial_id").iter_rows():
        if str(trial_id) in constant:
            by_arm.setdefault(str(arm), []).append(constant[str(trial_id)])
    at_floor = [a for a in exp.arms() if by_arm.get(a) and all(by_arm[a])]
    if constant and all(constant.values()):
        everything = constant_trials(exp, exp.ok())  # the selected trials first: usually decides alone
        if everything and all(everything.values()):
            return (
                "every finished trial predicts a single class on validation (the majority-class floor): "
                "the study measured nothing, and its arms are not ranked",
                at_floor,
            )
    values = [v for st in stats.values() for v in st.seeds.values()]
    if len(stats) >= 2 and len(values) >= 2 and max(values) - min(values) <= 1e-12:
        return (
            f"every (arm, seed) has the same {d(exp.metric)} = {values[0]:.4f}: the study measured nothing "
            "(a tie, typically at the majority-class floor), and its arms are not ranked",
            at_floor,
        )
    return None, at_floor


def compare(exp: Experiment, n_boot: int | None = None) -> Comparison:
    stats = arm_stats(exp)
    base = exp.baseline_arm()
    why, at_floor = floor(exp, stats)
    order = [a for a in exp.arms() if a in stats]
    ranked = order if why else sorted(order, key=lambda a: stats[a].mean, reverse=exp.descending)
    kwargs = {} if n_boot is None else {"n_boot": n_boot}
    try:
        images, notes = image_comparisons(exp, base if base in stats else None, order, **kwargs)
    except Exception as err:  # one unreadable predictions part must not cost the whole report
        log.exception("comparison over test images failed")
        images, notes = {}, [f"the comparison over test images failed: {type(err).__name__}: {d(err)}"]
    tested = [s for a, s in stats.items() if a != base and s.pairs]
    power = design_power(max((s.pairs for s in tested), default=0), len(tested))
    return Comparison(stats, base, ranked, why, at_floor, images, notes, power)


def _supported(st: ArmStats, image: ImageComparison | None) -> str:
    tests = []
    if st.p_t_holm < ALPHA:
        tests.append("paired t over seeds")
    if st.p_sign_holm < ALPHA:
        tests.append("sign-flip over seeds")
    if image is not None and image.accuracy_p_holm < ALPHA:
        tests.append("bootstrap over test images (accuracy)")
    if image is not None and image.macro_f1_p_holm < ALPHA:
        tests.append("bootstrap over test images (macro-F1)")
    return "; ".join(tests) if tests else f"no test (no Holm-adjusted p below {ALPHA:g})"


def comparison_section(exp: Experiment, cmp: Comparison) -> Section:
    sec = Section("Comparisons with the baseline: over seeds and over test images", anchor="compare")
    if cmp.floor:
        sec.note(cmp.floor)
    tested = [a for a in cmp.ranked if a != cmp.base and cmp.stats[a].pairs]
    if cmp.base is None or not tested:
        sec.note("no baseline arm with results, or no arm shares a seed with it: nothing is compared.")
        return sec
    rows = []
    for arm in tested:
        st = cmp.stats[arm]
        rows.append(
            [d(arm), str(st.pairs), tb.signed(st.diff), tb.ci(st.diff_lo, st.diff_hi), tb.pvalue(st.p_t),
             tb.pvalue(st.p_t_holm), tb.pvalue(st.p_sign), tb.pvalue(st.p_sign_holm), tb.num(st.effect, 2)]
        )  # fmt: skip
    sec.blocks.append(
        TableBlock(
            "compare_seeds",
            ["arm", "shared seeds", f"Δ {d(exp.metric)}", "Δ 95 % Student-t CI", "p (paired t)",
             "p (paired t, Holm)", "p (sign-flip)", "p (sign-flip, Holm)", "d_z"],
            rows,
            f"over seeds: per-seed {d(exp.metric)} of the validation-selected trial, arm − baseline on shared seeds",
        )
    )  # fmt: skip
    sec.text(
        "Over seeds: Δ = mean paired difference (arm − baseline) with its 95 % Student-t CI over the n shared "
        "seeds; p (paired t) = two-sided paired t-test (assumes normal differences); p (sign-flip) = exact "
        "two-sided sign-flip test over all 2^n sign patterns (no assumption, but never below 2/2^n); each "
        "Holm-corrected across arms within its test; d_z = mean difference / sd of the differences. "
        + f"What {cmp.power.n_seeds} shared seed(s) and {cmp.power.n_arms} arm(s) can detect: "
        + "; ".join(cmp.power.describe()[1:3])
        + "."
    )
    _image_table(sec, cmp, tested)
    claims = [
        [d(arm), tb.signed(cmp.stats[arm].diff), _supported(cmp.stats[arm], cmp.images.get(arm))]
        for arm in tested
    ]
    sec.blocks.append(
        TableBlock(
            "claims",
            ["arm", f"Δ {d(exp.metric)} (seeds)", f"supported at α={ALPHA:g} by"],
            claims,
            "which test supports each difference (Holm-adjusted within each test)",
        )
    )
    return sec


def _image_table(sec: Section, cmp: Comparison, tested: list[str]) -> None:
    for note in cmp.image_notes:
        sec.note(note)
    if not cmp.images:
        return
    rows = []
    for arm in tested:
        c = cmp.images.get(arm)
        if c is None:
            continue
        a, f = c.accuracy, c.macro_f1
        rows.append(
            [d(arm), str(c.seeds), str(c.cases), str(c.pairs), str(c.arm_only), str(c.base_only),
             tb.signed(a.diff), tb.ci(a.lo, a.hi), tb.pvalue(a.p), tb.pvalue(c.accuracy_p_holm),
             tb.signed(f.diff), tb.ci(f.lo, f.hi), tb.pvalue(f.p), tb.pvalue(c.macro_f1_p_holm)]
        )  # fmt: skip
    sec.blocks.append(
        TableBlock(
            "compare_images",
            ["arm", "seeds", "test cases", "pairs", "only arm right", "only baseline right",
             "Δ test accuracy", "accuracy 95 % bootstrap CI", "accuracy p", "accuracy p (Holm)",
             "Δ test macro-F1", "macro-F1 95 % bootstrap CI", "macro-F1 p", "macro-F1 p (Holm)"],
            rows,
            "over test images: the selected trials' test predictions, paired image by image on shared seeds",
        )
    )  # fmt: skip
    smallest = min((c.cases for c in cmp.images.values()), default=0)
    needed = cmp.power.image_min_cases
    sec.text(
        "Over test images: paired bootstrap over cases (case_id), the same resampled cases for both arms, "
        "seeds as strata (seeds sharing a test set share the resampling); Δ = mean over seeds of arm − "
        "baseline; 95 % percentile CI; p = two-sided, from the bootstrap distribution shifted to Δ = 0; "
        "Holm across arms within each metric. "
        + (
            f"An image-level test can reach α only if ≥ {needed} cases disagree, all one way; the smallest "
            f"comparison here has {smallest} test cases" + (", too few." if smallest < needed else ".")
        )
    )
