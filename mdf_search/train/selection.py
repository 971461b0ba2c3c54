"""Which epoch of a trial is "the" trial: the study's metric and mode, applied on validation.

README, "What a result means": validation chooses and test only reports, with the study's metric and mode at every level
(the epoch inside a trial, the trial for an arm and seed, the best arm). A sweep passes its spec's
``metric``/``mode``; ``mdf-search train`` uses the default, ``val/macro_f1`` maximised
(``metrics.DEFAULT_METRIC`` and ``DEFAULT_MODE``).

Rules of :meth:`Selection.improves` (each tested): the first epoch with a value is selected; a later
epoch must be strictly better (a tie keeps the earlier epoch); NaN is never better than a number, and
any number is better than a NaN (an AUROC is NaN on a split that lacks a class).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from mdf_search.metrics import DEFAULT_METRIC, DEFAULT_MODE

MODES = ("max", "min")


@dataclass(frozen=True)
class Selection:
    """The study's metric (a ``val/`` key the trial reports) and whether higher or lower is better."""

    metric: str = DEFAULT_METRIC
    mode: str = DEFAULT_MODE

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"selection mode must be one of {list(MODES)}, but got {self.mode!r}")
        if not self.metric.startswith("val/"):
            raise ValueError(
                f"the study's metric selects epochs, trials and arms, so it must be a validation metric "
                f"(a 'val/...' key), but got {self.metric!r}; test metrics only report"
            )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> Selection:
        return cls(**dict(data or {}))

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    def value(self, val_metrics: Mapping[str, Any]) -> float:
        """The study metric in one evaluation's ``val/...`` metrics.

        With two heads (``task=dual``) metrics are namespaced by head; a plain key such as
        ``val/macro_f1`` then falls back to the type head (``val/type/macro_f1``), the paper's dual task.
        """
        fallback = f"val/type/{self.metric.removeprefix('val/')}"
        for key in (self.metric, fallback):
            value = val_metrics.get(key)
            if isinstance(value, int | float) and not isinstance(value, bool):
                return float(value)
        known = sorted(k for k, v in val_metrics.items() if isinstance(v, int | float))
        raise ValueError(
            f"the study's metric {self.metric!r} is not among this trial's validation metrics; "
            f"choose one of {known}"
        )

    def improves(self, value: float, best: float | None) -> bool:
        """Whether ``value`` beats the best so far (``None``: nothing selected yet)."""
        if best is None:
            return True
        if math.isnan(value):
            return False
        if math.isnan(best):
            return True
        return value > best if self.mode == "max" else value < best
