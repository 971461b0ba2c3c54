"""The study's Optuna side under Tune: Ray's ``OptunaSearch`` made resumable, and a study its users can read.

:class:`ResumableOptunaSearch` drives the persistent study (``runner.py`` builds it over
``designs.define_by_run`` and ``samplers.make_sampler``). Besides surviving a killed driver (its class
docstring), it leaves the study as ``optuna-dashboard``, the ``optuna`` CLI and the ``optuna`` API expect:

- the study's metric name (``study.metric_names``) is the spec's ``metric``;
- every trial carries the user attributes ``trial_id`` (Tune's id: the Parquet tables' ``trial_id``),
  ``arm``, ``config_hash`` (as in the trials table) and ``status`` (``running``, then the trials table's
  final status: ``completed``, ``stopped_early``, ``diverged``, ``oom``, ``infeasible`` or ``error``), so
  ``study.trials_dataframe()`` joins the trials table on ``user_attrs_trial_id``;
- grid and ofat designs record each scientific factor as its own categorical parameter beside ``arm``
  and ``seed`` (``samplers.StudyGridSampler``), so the importance, slice and parallel-coordinate views
  show the factors.

:func:`claim_study` keeps one study per experiment directory in a shared storage.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from typing import Any

import optuna
from ray.tune.search.optuna import OptunaSearch

from mdf_search.results.schema import Status
from mdf_search.search.keys import SELECTED, config_hash, final_status

log = logging.getLogger(__name__)
USER_ATTRS = ("trial_id", "arm", "config_hash", "status")  # what every study trial carries


def trial_attrs(trial_id: str, config: Mapping[str, Any]) -> dict[str, str]:
    """The user attributes of a study trial asked for Tune trial ``trial_id`` with Tune ``config``."""
    return {
        "trial_id": trial_id,
        "arm": str(config.get("arm", "")),
        "config_hash": config_hash(config.get("params", {})),
        "status": Status.RUNNING.value,
    }


def _set_attrs(trial: optuna.Trial, attrs: Mapping[str, Any]) -> None:
    """Set ``attrs`` on a study trial; a finished one (a resumed sweep's) keeps what it has."""
    try:
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
    except optuna.exceptions.UpdateFinishedTrialError:
        pass


class ResumableOptunaSearch(OptunaSearch):
    """``OptunaSearch`` that survives a driver killed between Optuna's ``tell`` and Tune's own checkpoint.

    The persistent study then already holds the trial as finished while Tune restores it as unfinished
    and reruns it (its Train run re-reports the final result); Optuna refuses to update a finished trial.
    The study keeps the value it was told, and the sweep goes on.

    It also adopts the study's orphans: a driver killed after Optuna's ``ask`` but before Tune's next
    snapshot leaves RUNNING trials in the study that the restored Tune never heard of. Asking anew
    would leave them RUNNING forever, and the grid sampler, counting their grid points as taken, would
    hand a taken point out twice and skip theirs. A new Tune trial takes over the oldest orphan
    instead (its params are already set), so each planned trial runs once and the study's trial
    numbers stay continuous.
    """

    _orphans: list[Any] | None = None  # RUNNING study trials no Tune trial owns; None: not listed yet

    def _setup_study(self, mode: Any) -> None:
        """Ray's study set-up, then the study's metric name (once: a loaded study keeps its own)."""
        super()._setup_study(mode)
        study = self._ot_study
        if study is not None and isinstance(self._metric, str) and study.metric_names is None:
            with warnings.catch_warnings():  # flagged experimental since Optuna 3.2; the dashboard reads it
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                study.set_metric_names([self._metric])

    def restore(self, checkpoint_path: str) -> None:
        super().restore(checkpoint_path)
        self._orphans = None  # the snapshot's list is stale: list them again against its trials

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        if callable(self._space) and trial_id not in self._ot_trials:
            orphan = self._adopt_orphan()
            if orphan is not None:
                self._ot_trials[trial_id] = orphan
                log.info("trial %s takes over the study's orphaned trial %d", trial_id, orphan.number)
        config = super().suggest(trial_id)
        if config is not None and trial_id in self._ot_trials:
            _set_attrs(self._ot_trials[trial_id], trial_attrs(trial_id, config))
        return config

    def _adopt_orphan(self) -> optuna.Trial | None:
        study = self._ot_study
        assert study is not None  # set up with the define-by-run space
        if self._orphans is None:
            known = {t.number for t in self._ot_trials.values()}
            running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
            self._orphans = sorted((t for t in running if t.number not in known), key=lambda t: t.number)
        if not self._orphans:
            return None
        frozen = self._orphans.pop(0)
        return optuna.Trial(study, frozen._trial_id)

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        if isinstance(self.metric, str) and self.metric not in result:
            return  # an oom/diverged/infeasible report: no value to tell (the trial fails in the study)
        try:
            super().on_trial_result(trial_id, result)
        except optuna.exceptions.UpdateFinishedTrialError:
            log.info("trial %s was already finished in the Optuna study (resumed sweep)", trial_id)

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        """The study is told the study metric at the trial's selected epoch, not at its last one; a
        trial that ended without one (``oom``, ``diverged``, ``infeasible``) failed (Optuna's default for
        a result without the metric is ``PRUNED``, which samplers read as a stopped, valid trial). Its
        ``status`` attribute takes the trials table's final status first (a finished trial's is fixed)."""
        if trial_id in self._ot_trials and trial_id not in self._completed_trials:
            _set_attrs(self._ot_trials[trial_id], {"status": final_status(result, error)})
        if result and isinstance(self.metric, str) and f"{SELECTED}{self.metric}" in result:
            result = {**result, self.metric: result[f"{SELECTED}{self.metric}"]}
        elif result and isinstance(self.metric, str) and self.metric not in result:
            error = True
        try:
            super().on_trial_complete(trial_id, result=result, error=error)
        except optuna.exceptions.UpdateFinishedTrialError:
            log.info("trial %s was already finished in the Optuna study (resumed sweep)", trial_id)


ROOT_ATTR = "experiment_root"  # the Optuna study's user attribute naming the experiment it belongs to


def claim_study(storage: Any, name: str, root: str, direction: str) -> None:
    """Create the study ``name`` in ``storage`` for the experiment at ``root``, or load it when it is
    this experiment's own (a sweep restarted before Tune saved its state); a study of another experiment
    is refused with the fix."""
    study = optuna.create_study(
        study_name=name,
        storage=storage,
        load_if_exists=True,
        direction="minimize" if direction == "min" else "maximize",
    )
    owner = study.user_attrs.get(ROOT_ATTR)
    if owner is None and not study.trials:
        study.set_user_attr(ROOT_ATTR, root)
    elif owner != root:
        where = _without_password(str(getattr(storage, "url", storage)))
        raise FileExistsError(
            f"{where}: the Optuna study {name!r} already exists (experiment {owner or 'unknown'}, "
            f"{len(study.trials)} trials); continue it with `mdf-search resume {owner or '<experiment dir>'}`, "
            f"or give this experiment another name"
        )


def _without_password(url: str) -> str:
    """``url`` with any password masked, for messages."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a SQLAlchemy URL: nothing to mask
        return url
