"""What the sweep's Tune pieces read the same way from a trial's reports and config: the selected epoch's
metrics (``selected/``), the trial's configuration hash and its final status. The results writer
(``callbacks.py``), the Optuna searcher (``optuna_search.py``) and the trackers (``tracking.py``) share
them, so the Parquet tables, the Optuna study and a tracking server name a trial alike."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mdf_search.config import TrialConfig
from mdf_search.results.schema import Status

SELECTED = "selected/"  # the loop's prefix of the selected epoch's metrics
# Tune's bookkeeping in every result: not metrics of the trial.
TUNE_KEYS = (
    "config",
    "trial_id",
    "experiment_id",
    "date",
    "timestamp",
    "pid",
    "hostname",
    "node_ip",
    "done",
    "training_iteration",
    "time_this_iter_s",
    "time_total_s",
    "time_since_restore",
    "iterations_since_restore",
    "checkpoint_dir_name",
    "should_checkpoint",
    "experiment_tag",
)


def selected_view(result: Mapping[str, Any]) -> dict[str, Any]:
    """A report as its trial's row sees it: the selected epoch's metrics replace the reporting epoch's."""
    own = {k: v for k, v in result.items() if not k.startswith(SELECTED)}
    return {**own, **{k.removeprefix(SELECTED): v for k, v in result.items() if k.startswith(SELECTED)}}


def config_hash(params: Mapping[str, Any]) -> str:
    """``TrialConfig.config_hash`` of a trial's flat params ("" when they do not parse)."""
    try:
        return TrialConfig.from_flat(dict(params)).config_hash()
    except ValueError:
        return ""


def final_status(last: Mapping[str, Any] | None, error: bool = False) -> str:
    """A finished trial's status: ``error`` when it raised, else its last report's ``status``, and
    ``stopped_early`` when that still said ``running`` (Tune ended it: ASHA)."""
    if error:
        return Status.ERROR.value
    status = str((last or {}).get("status", Status.RUNNING))
    return Status.STOPPED_EARLY.value if status == Status.RUNNING else status
