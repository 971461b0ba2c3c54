"""What a sampler design (tpe/qmc/gp) searched: Optuna's own matplotlib plots of the study.

The study is read as the importance section reads it (``importance.load_study``: the recorded storage
URL, else ``optuna.db`` in the experiment directory). Three figures, each saved like every other figure
(``figures.FigureSink``: PNG, SVG, PDF):

- ``optuna_history``: ``plot_optimization_history``, each completed trial's value and the best so far;
- ``optuna_parallel``: ``plot_parallel_coordinate`` over the sampled parameters, coloured by value;
- ``optuna_slice``: ``plot_slice``, the value against each sampled parameter.

Only completed trials with a finite value are drawn (copied into an in-memory study, renumbered in the
order they started). The sampled parameters are the nuisance parameters the sampler tuned; ``arm`` and
``seed`` (assigned round-robin, compared by the report's tables) are left out unless nothing else was
sampled, and at most :data:`MAX_PARAMS` are drawn. Grid and OFAT designs sample nothing: they get no
section.

Optuna marks these functions experimental (``ExperimentalWarning``) and styles with
``plt.style.use("ggplot")``, which changes matplotlib's global settings: both are contained here, the
warning filtered and the settings restored (``plt.rc_context``) around each call.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from mdf_search.report import figures as fg
from mdf_search.report.document import Section, d
from mdf_search.report.experiment import Experiment
from mdf_search.report.importance import load_study

log = logging.getLogger(__name__)
SAMPLERS = ("tpe", "qmc", "gp")
ASSIGNED = ("arm", "seed")  # params the design assigns, not samples
MAX_PARAMS = 8  # a slice plot is one panel per parameter
MAX_WIDTH = 16.0  # inches: Optuna widens a slice plot by a panel per parameter


def is_sampler(exp: Experiment) -> bool:
    return exp.spec is not None and exp.spec.design in SAMPLERS


def _finished(study: Any) -> Any:
    """An in-memory copy of ``study`` with only its completed trials of finite value."""
    import optuna

    kept = [
        t
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if t.values is not None and all(math.isfinite(v) for v in t.values)
    ]
    copy = optuna.create_study(directions=study.directions)
    copy.add_trials(kept)
    return copy


def _params(study: Any) -> tuple[list[str], bool]:
    """The parameters to draw (first seen first) and whether some were left out for :data:`MAX_PARAMS`."""
    seen = list(dict.fromkeys(name for t in study.trials for name in t.params))
    sampled = [p for p in seen if p not in ASSIGNED] or seen
    return sampled[:MAX_PARAMS], len(sampled) > MAX_PARAMS


def _figure(axes: Any) -> Any:
    return np.ravel(axes)[0].figure


def _plot(draw: Callable[[], Any]) -> Any:
    """Run one Optuna plot with its experimental warning filtered and matplotlib's settings restored."""
    from optuna.exceptions import ExperimentalWarning

    with plt.rc_context(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=ExperimentalWarning)
        fig = _figure(draw())
    width, height = fig.get_size_inches()
    fig.set_size_inches(min(width, MAX_WIDTH), height)
    return fig


def sampler_section(exp: Experiment, sink: fg.FigureSink) -> Section:
    """The section for a sampler design (call only when :func:`is_sampler`)."""
    sec = Section("Sampler: optimisation history, parallel coordinates, slices", anchor="sampler")
    try:
        import optuna
        from optuna.visualization import matplotlib as ovm
    except ImportError as err:
        sec.note(f"optuna.visualization.matplotlib is unavailable ({d(err)}).")
        return sec
    study = load_study(exp)
    if study is None:
        sec.note(
            f"no Optuna study {d(exp.name)} found (neither the recorded storage nor optuna.db in the "
            "experiment directory): no sampler plots."
        )
        return sec
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if len(study.directions) != 1:
        sec.note(f"the study has {len(study.directions)} objectives: these plots are for one.")
        return sec
    done = _finished(study)
    if len(done.trials) < 2:
        sec.note(f"{len(done.trials)} completed trial(s) with a finite value in the study: no sampler plots.")
        return sec
    params, cut = _params(done)
    name = exp.metric
    direction = "maximised" if done.direction == optuna.study.StudyDirection.MAXIMIZE else "minimised"
    shown = ", ".join(d(p) for p in params)
    sec.text(
        f"From the Optuna study {d(exp.name)} ({exp.spec.design if exp.spec else '?'} design): its "
        f"{len(done.trials)} completed trials with a finite {d(name)} ({direction}), numbered in the order "
        f"they started. Parameters drawn: {shown}"
        + (f" (the first {MAX_PARAMS} the sampler tuned)" if cut else "")
        + (
            "; the sampler tuned nothing else, so these are the arm and seed the design assigned."
            if set(params) <= set(ASSIGNED)
            else "; `arm` and `seed`, which the design assigns rather than samples, are compared in the "
            "tables above."
        )
    )
    figures = (
        (
            "optuna_history",
            lambda: ovm.plot_optimization_history(done, target_name=name),
            f"optimisation history: {d(name)} of each completed trial and the best so far",
        ),
        (
            "optuna_parallel",
            lambda: ovm.plot_parallel_coordinate(done, params=params, target_name=name),
            f"parallel coordinates: each trial's sampled values, coloured by {d(name)}",
        ),
        (
            "optuna_slice",
            lambda: ovm.plot_slice(done, params=params, target_name=name),
            f"slices: {d(name)} against each sampled parameter (colour: trial number)",
        ),
    )
    for file_name, draw, caption in figures:
        try:
            fig = _plot(draw)
        except Exception as err:  # one plot Optuna cannot draw must not cost the other two
            log.exception("optuna plot %s failed", file_name)
            sec.note(f"{file_name} could not be drawn: {type(err).__name__}: {d(err)}")
            continue
        sec.blocks.append(sink.save(fig, file_name, caption))
    return sec
