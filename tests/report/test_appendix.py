"""A report fit for a paper's appendix (issue 14): every figure as PNG, SVG and PDF under stable names
and listed in the marker; for sampler designs, Optuna's optimisation history, parallel coordinates and
slice plots; learning curves as per-arm means over seeds with a band. The LaTeX tables are
``test_latex.py``'s."""

from __future__ import annotations

import json
import math
import re
import warnings
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import optuna
import polars as pl
import pytest

from mdf_search.report import curves
from mdf_search.report import figures as fg
from mdf_search.report.ablation import write_report
from mdf_search.report.compare import compare
from mdf_search.report.experiment import load_experiment
from mdf_search.report.figures import FORMATS
from mdf_search.report.outdir import MARKER, scan
from mdf_search.report.synthetic import synthetic_experiment, write_spec
from mdf_search.results.store import ResultsStore
from tests.report.conftest import HOSTILE, HOSTILE_KEY, write_hostile

SAMPLER_FIGURES = ("optuna_history", "optuna_parallel", "optuna_slice")


def make_sampler(root: Path, design: str = "tpe", param: str = "optim.lr") -> Path:
    """The synthetic experiment recorded as a sampler design, with the Optuna study its sweep would
    have left in optuna.db: per trial ``arm``, ``seed`` and the sampled ``param`` (optim.lr's values),
    its value the study metric; errored trials failed, a diverged one COMPLETE with an infinite value."""
    synthetic_experiment(root)
    record = json.loads((root / "arms.json").read_text())
    record["design"] = design
    (root / "arms.json").write_text(json.dumps(record))
    trials = ResultsStore(str(root)).trials().sort("trial_id")
    arms = sorted(set(trials["arm"].to_list()))
    dists: dict[str, Any] = {
        "arm": optuna.distributions.CategoricalDistribution(arms),
        "seed": optuna.distributions.CategoricalDistribution([0, 1, 2]),
        param: optuna.distributions.FloatDistribution(1e-4, 3e-3, log=True),
    }
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=record["experiment"], storage=f"sqlite:///{root / 'optuna.db'}", direction="maximize"
    )
    for row in trials.iter_rows(named=True):
        params = {"arm": row["arm"], "seed": row["seed"], param: row["optim.lr"]}
        value = row.get("val/macro_f1")
        if row["status"] == "diverged":
            value = math.inf
        state = optuna.trial.TrialState.FAIL if value is None else optuna.trial.TrialState.COMPLETE
        study.add_trial(
            optuna.trial.create_trial(
                params=params,
                distributions=dists,
                value=None if value is None else float(value),
                state=state,
            )
        )
    return root


@pytest.fixture(scope="module")
def grid_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("grid")
    write_report(str(synthetic_experiment(tmp / "exp")), str(tmp / "out"))
    return tmp / "out"


def _figures(md: str) -> list[str]:
    return re.findall(r"!\[[^\]]*\]\(figures/([^)]+)\.png\)", md)


def test_every_figure_is_written_as_png_svg_and_pdf_and_listed_in_the_marker(grid_report: Path) -> None:
    md = (grid_report / "report.md").read_text(encoding="utf-8")
    names = _figures(md)
    assert "learning_curves" in names and "importance" in names and len(names) >= 8
    written = {p.name for p in (grid_report / "figures").iterdir()}
    assert written == {f"{n}.{ext}" for n in names for ext in FORMATS}  # nothing else, nothing missing
    for name in names:
        pdf = (grid_report / "figures" / f"{name}.pdf").read_bytes()
        assert pdf.startswith(b"%PDF-") and b"/CreationDate" not in pdf
        assert b"/FontType 3" not in pdf and b"/Subtype /Type3" not in pdf  # TrueType, not Type 3
        assert f"[pdf](figures/{name}.pdf)" in md and f"[svg](figures/{name}.svg)" in md
    marker = json.loads((grid_report / MARKER).read_text())["files"]
    on_disk = {rel: kind for rel, kind in scan(grid_report).items() if kind != "dir" and rel != MARKER}
    assert marker == on_disk  # every written file, with its hash
    assert any(rel.endswith(".pdf") for rel in marker) and any(rel.endswith(".tex") for rel in marker)


def test_the_same_experiment_writes_the_same_figure_bytes(grid_report: Path, tmp_path: Path) -> None:
    """No date, no random SVG ids: regenerating a committed report changes only what changed."""
    root = grid_report.parent / "exp"
    with plt.rc_context():  # another library's style in the process (Optuna's ggplot) changes nothing
        plt.style.use("ggplot")
        write_report(str(root), str(tmp_path / "again"))
    first = json.loads((grid_report / MARKER).read_text())["files"]
    second = json.loads((tmp_path / "again" / MARKER).read_text())["files"]
    figures = {rel: h for rel, h in first.items() if rel.startswith("figures/")}
    assert figures and figures == {rel: h for rel, h in second.items() if rel.startswith("figures/")}


def _reordered(frame: pl.DataFrame, k: int) -> pl.DataFrame:
    """``frame`` as read (k = 0), reversed (1) or shuffled (seed k)."""
    return (
        frame if k == 0 else frame.reverse() if k == 1 else frame.sample(fraction=1.0, shuffle=True, seed=k)
    )


def test_figures_do_not_depend_on_the_row_order_of_the_tables(grid_report: Path, tmp_path: Path) -> None:
    """Polars' group_by gives its groups in no fixed order (seen: a CI run drew the interaction figure's
    series in another order, so in other colours): every figure is drawn from a fixed order, whatever
    the order of the rows the tables were read in."""
    from mdf_search.report.ablation import build_report

    exp = load_experiment(str(grid_report.parent / "exp"))
    trials, epochs = exp.trials, exp.epochs
    drawn = []
    for k in range(3):
        exp.trials, exp.epochs = _reordered(trials, k), _reordered(epochs, k)
        exp._cache.clear()
        with fg.report_style():
            build_report(exp, tmp_path / str(k), reports=1)
        drawn.append({f.name: f.read_bytes() for f in sorted((tmp_path / str(k) / "figures").iterdir())})
    assert any(name.startswith("interaction_") for name in drawn[0])
    for k in (1, 2):
        assert [n for n in drawn[0] if drawn[0][n] != drawn[k].get(n)] == [], (
            k,
            sorted({n.rsplit(".", 1)[0] for n in drawn[0] if drawn[0][n] != drawn[k].get(n)}),
        )


def test_grid_designs_get_no_sampler_section(grid_report: Path) -> None:
    md = (grid_report / "report.md").read_text(encoding="utf-8")
    assert "Sampler:" not in md and not any((grid_report / "figures").glob("optuna_*"))


@pytest.mark.parametrize("design", ["tpe", "qmc", "gp"])
def test_sampler_designs_get_optunas_plots(design: str, tmp_path: Path) -> None:
    root = make_sampler(tmp_path / "exp", design)
    before = dict(plt.rcParams)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        write_report(str(root), str(tmp_path / "out"))
    out = tmp_path / "out"
    md = (out / "report.md").read_text(encoding="utf-8")
    assert "## 8. Sampler: optimisation history, parallel coordinates, slices" in md
    for name in SAMPLER_FIGURES:
        assert name in _figures(md)
        for ext in FORMATS:
            assert (out / "figures" / f"{name}.{ext}").stat().st_size > 1000, (name, ext)
    # the study's 10 completed trials with a finite value (the errored one failed, the diverged one is inf)
    assert "its 10 completed trials with a finite val/macro\\_f1 (maximised)" in md
    assert "Parameters drawn: optim.lr;" in md
    assert "this section failed" not in md and "could not be drawn" not in md
    # Optuna's experimental warnings are silenced where it is called, and its ggplot style is undone
    assert not [w for w in caught if issubclass(w.category, optuna.exceptions.ExperimentalWarning)]
    assert dict(plt.rcParams) == before
    assert not any(
        f[2] is optuna.exceptions.ExperimentalWarning and f[0] == "ignore" for f in warnings.filters
    )


def test_sampler_plots_without_a_study_say_so(tmp_path: Path) -> None:
    root = make_sampler(tmp_path / "exp")
    (root / "optuna.db").unlink()
    write_report(str(root), str(tmp_path / "out"))
    md = (tmp_path / "out" / "report.md").read_text(encoding="utf-8")
    assert "no Optuna study" in md and "no sampler plots" in md
    assert not any((tmp_path / "out" / "figures").glob("optuna_*"))


def test_sampler_plots_with_hostile_names(tmp_path: Path) -> None:
    """A parameter named with markup (and a ``$``: mathtext is off) is drawn and escaped in the text."""
    root = write_hostile(tmp_path / "exp")
    record = json.loads((root / "arms.json").read_text())
    record["design"] = "tpe"
    (root / "arms.json").write_text(json.dumps(record))
    arms = [a["id"] for a in record["arms"]]
    dists: dict[str, Any] = {
        "arm": optuna.distributions.CategoricalDistribution(arms),
        HOSTILE_KEY + "$\\frac{$": optuna.distributions.FloatDistribution(0.0, 1.0),
        "choice": optuna.distributions.CategoricalDistribution([HOSTILE, "plain"]),
    }
    study = optuna.create_study(study_name="hostile", storage=f"sqlite:///{root / 'optuna.db'}")
    for i in range(6):
        params = {"arm": arms[i % 2], HOSTILE_KEY + "$\\frac{$": i / 6, "choice": [HOSTILE, "plain"][i % 2]}
        study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=0.1 * i))
    write_report(str(root), str(tmp_path / "out"))
    md = (tmp_path / "out" / "report.md").read_text(encoding="utf-8")
    assert "could not be drawn" not in md and "this section failed" not in md
    assert all((tmp_path / "out" / "figures" / f"{n}.pdf").is_file() for n in SAMPLER_FIGURES)
    assert "<script" not in md and "\x1b" not in md


# -- learning curves: per-arm means over seeds with a band -------------------------------------------
def _curve_experiment(root: Path) -> Path:
    """Two arms x three seeds; per (arm, seed) two trials (a sampler design), of which validation selects
    the better; epochs 1-3 with val/macro_f1 = base + 0.1 * epoch + seed offset, and train/loss."""
    write_spec(root, root.name, seeds=(0, 1, 2), epochs=3)
    store = ResultsStore(str(root))
    base = {"fusion.levels=none": 0.3, "fusion.levels=4": 0.4}
    n = 0
    for arm, level in base.items():
        for seed in (0, 1, 2):
            for better in (True, False):
                trial = f"t{n:03d}"
                final = level + 0.3 + 0.01 * seed + (0.0 if better else -0.2)
                store.write_trial({"experiment": root.name, "trial_id": trial, "attempt": 1, "arm": arm,
                                   "status": "completed", "seed": seed, "val/macro_f1": final,
                                   "fusion.levels": arm.split("=")[1]})  # fmt: skip
                for epoch in (1, 2, 3):
                    value = level + 0.1 * epoch + 0.01 * seed + (0.0 if better else -0.2)
                    store.write_epoch({"experiment": root.name, "trial_id": trial, "attempt": 1, "arm": arm,
                                       "epoch": epoch, "status": "running", "val/macro_f1": value,
                                       "train/loss": 1.0 / epoch + seed})  # fmt: skip
                n += 1
    return root


def test_learning_curves_are_per_arm_means_over_the_selected_trials(tmp_path: Path) -> None:
    exp = load_experiment(str(_curve_experiment(tmp_path / "curves")))
    found, labels, seeds = curves.arm_curves(exp, compare(exp, n_boot=50))
    assert list(found) == ["fusion.levels=none", "fusion.levels=4"]  # the baseline first, then the best
    assert seeds == {"fusion.levels=none": 3, "fusion.levels=4": 3}
    assert labels["fusion.levels=none"].startswith("baseline: ") and "(n=3)" in labels["fusion.levels=4"]
    epoch, n, mean, lo, hi = found["fusion.levels=4"]["metric"][2]
    assert (epoch, n) == (3, 3)
    assert mean == pytest.approx(0.71)  # only the better trial of each seed (0.70, 0.71, 0.72), averaged
    assert (lo, hi) == pytest.approx((0.70, 0.72))  # the band: min to max over the seeds
    loss = found["fusion.levels=none"]["loss"]
    assert [p[0] for p in loss] == [1, 2, 3] and loss[0][2] == pytest.approx(1.0 + 1.0)


def test_learning_curves_with_one_seed_have_no_band_and_a_caption_that_says_so(tmp_path: Path) -> None:
    root = synthetic_experiment(tmp_path / "one", seeds=(0,), failures=False)
    exp = load_experiment(str(root))
    found, _, _ = curves.arm_curves(exp, compare(exp, n_boot=50))
    assert found and all(math.isnan(p[3]) for arm in found.values() for p in arm["metric"])
    write_report(str(root), str(tmp_path / "out"))
    md = (tmp_path / "out" / "report.md").read_text(encoding="utf-8")
    assert "learning curves per arm: mean over seeds, shaded: min to max over seeds" in md
    assert "absent at an epoch only one seed reached" in md and "of the best trials" not in md


def test_learning_curves_draw_the_baseline_and_the_best_arms_only(tmp_path: Path) -> None:
    root = synthetic_experiment(tmp_path / "many", failures=False)
    exp = load_experiment(str(root))
    cmp = compare(exp, n_boot=50)
    found, _, _ = curves.arm_curves(exp, cmp, arms=2)
    assert list(found) == [cmp.base, next(a for a in cmp.ranked if a != cmp.base)]


def test_log_axis_ticks_are_plain_numbers_not_mathtext_source() -> None:
    """With mathtext off (data may hold a ``$``), matplotlib's log ticks would print their source."""
    fig, ax = plt.subplots()
    ax.set_xscale("log")
    ax.set_xlim(1e-4, 3e-3)
    ax.plot([2e-4, 2e-3], [0, 1])
    fg.plain_log_ticks(fig)
    fig.canvas.draw()
    labels = [t.get_text() for t in [*ax.get_xticklabels(), *ax.get_xticklabels(minor=True)] if t.get_text()]
    plt.close(fig)
    assert labels and not any("$" in t or "mathdefault" in t for t in labels)
    assert "1e-3" in labels and "2e-4" in labels
