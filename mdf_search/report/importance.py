"""Parameter importance with Optuna's evaluators (fANOVA and PED-ANOVA).

Sampler designs (tpe/qmc/gp) record the tuned parameters in the Optuna study, so its finished trials are
used as they are. Grid/ofat studies only suggest ``arm`` and ``seed``; then an in-memory study is built
from the Parquet trials with one distribution per scientific factor (categorical; a factor that is
inactive in a trial takes the distinct category ``"inactive"`` instead of being dropped), each varying
nuisance parameter, and ``seed`` (its importance is the noise floor to compare against).
"""

from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path
from typing import Any

import polars as pl

from mdf_search.report import figures as fg
from mdf_search.report import tables as tb
from mdf_search.report.document import Section, TableBlock, d
from mdf_search.report.experiment import Experiment, in_trial_order
from mdf_search.results.schema import Status

log = logging.getLogger(__name__)
INACTIVE = "inactive"
MAX_TRIALS = 1000  # fANOVA's forest marginalisation is ~O(trials x trees); 10k trials take minutes


def load_study(exp: Experiment) -> Any | None:
    """The experiment's Optuna study: at the storage URL its spec records, else ``optuna.db`` in the
    experiment directory; None when there is none (or it cannot be loaded, logged)."""
    import optuna

    db = Path(exp.root) / "optuna.db"
    url = (
        exp.spec.storage
        if exp.spec and exp.spec.storage
        else (f"sqlite:///{db.resolve()}" if db.is_file() else None)
    )
    if url is None:
        return None
    try:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        return optuna.load_study(study_name=exp.name, storage=url)
    except Exception as err:  # missing study, unreachable server
        log.info("no Optuna study %s at %s: %s", exp.name, url, err)
        return None


def _study_from_parquet(exp: Experiment) -> tuple[Any, list[str]]:
    import optuna
    from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution

    ok = in_trial_order(  # the forest's fit depends on the order of its rows
        exp.trials.filter(
            (pl.col("status") == Status.COMPLETED)
            & pl.col(exp.metric).is_not_null()
            & pl.col(exp.metric).is_not_nan()
        )
    )
    dists: dict[str, BaseDistribution] = {}
    for key in exp.factors:
        values = sorted({INACTIVE if v is None else str(v) for v in ok[key].to_list()})
        if len(values) > 1:
            dists[key] = CategoricalDistribution(values)
    for key in exp.nuisance:
        column = ok[key]
        if column.n_unique() < 2:
            continue
        param = exp.spec.nuisance[key] if exp.spec else None
        if param is not None and param.is_range and column.dtype.is_numeric() and column.null_count() == 0:
            low, high = float(column.min()), float(column.max())  # type: ignore[arg-type]
            dists[key] = FloatDistribution(low, high, log=bool(param.log and low > 0))
        else:
            dists[key] = CategoricalDistribution(
                sorted({INACTIVE if v is None else str(v) for v in column.to_list()})
            )
    if "seed" in ok.columns and ok["seed"].n_unique() > 1:
        dists["seed"] = CategoricalDistribution(sorted({str(v) for v in ok["seed"].to_list()}))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize" if exp.descending else "minimize")
    for row in ok.iter_rows(named=True):
        params: dict[str, Any] = {}
        for key, dist in dists.items():
            value = row.get(key)
            params[key] = (
                float(value)  # type: ignore[arg-type]
                if isinstance(dist, FloatDistribution)
                else (INACTIVE if value is None else str(value))
            )
        study.add_trial(
            optuna.trial.create_trial(params=params, distributions=dists, value=float(row[exp.metric]))
        )
    return study, list(dists)


def importance_section(exp: Experiment, sink: fg.FigureSink) -> Section:
    sec = Section("Parameter importance", anchor="importance")
    try:
        import optuna
        from optuna.importance import (
            FanovaImportanceEvaluator,
            PedAnovaImportanceEvaluator,
            get_param_importances,
        )
    except ImportError as err:
        sec.note(f"optuna.importance is unavailable ({d(err)}).")
        return sec
    study = load_study(exp)
    source = ""
    if study is not None:
        finished = [
            t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE
        ]
        names = {n for t in finished for n in t.params}
        if names - {"arm", "seed"} and len(finished) >= 2:
            source = f"the Optuna study {d(exp.name)} ({len(finished)} finished trials)"
        else:
            study = None
    if study is None:
        if exp.metric not in exp.trials.columns:
            sec.note("no trials with the metric yet.")
            return sec
        study, params = _study_from_parquet(exp)
        source = (
            f"an in-memory study built from the Parquet trials ({len(study.trials)} completed): the design suggests only "
            "`arm` and `seed`, so each scientific factor is its own categorical parameter and a factor inactive in a "
            f'trial takes the category "{INACTIVE}"; `seed` is included as the noise floor'
        )
        if not params:
            sec.note("no parameter takes more than one value among completed trials: nothing to attribute.")
            return sec
    finished_trials = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if len(finished_trials) > MAX_TRIALS:
        import random

        subset = random.Random(0).sample(finished_trials, MAX_TRIALS)
        sampled = optuna.create_study(directions=study.directions)
        sampled.add_trials(subset)
        sec.note(
            f"{len(finished_trials)} finished trials: importance is estimated on a seeded random sample of {MAX_TRIALS}."
        )
        study = sampled
    if len(study.trials) < 3:
        sec.note("fewer than 3 completed trials: importance is not estimated.")
        return sec
    results: dict[str, dict[str, float]] = {}
    for name, evaluator in (
        ("fANOVA", FanovaImportanceEvaluator(seed=0)),
        ("PED-ANOVA", PedAnovaImportanceEvaluator()),
    ):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                values = get_param_importances(study, evaluator=evaluator, normalize=True)
            results[name] = {k: float(v) for k, v in values.items() if math.isfinite(v)}
        except Exception as err:  # too few trials, a single-valued parameter, sklearn missing
            sec.note(f"{name} failed: {type(err).__name__}: {d(err)}")
    sec.text(f"Computed on {source}.")
    if results:
        params_all = sorted(
            {p for v in results.values() for p in v},
            key=lambda p: (-max(v.get(p, 0.0) for v in results.values()), p),  # ties: by name
        )
        rows = [[d(p), *[tb.num(results[e].get(p), 3) for e in results]] for p in params_all]
        sec.blocks.append(
            TableBlock(
                "importance", ["parameter", *results], rows, "normalised importances (sum to 1 per evaluator)"
            )
        )
        sec.blocks.append(fg.importance_figure(sink, results))
        if len(study.trials) < 20:
            sec.note(
                f"only {len(study.trials)} trials: importance estimates are rough; read them with the main table."
            )
    return sec
