"""Selecting a trial's epoch with the study's metric and mode, and the training-order seed."""

from __future__ import annotations

import math

import pytest
from torch.utils.data import DistributedSampler

from mdf_search.train.selection import Selection
from mdf_search.train.worker import order_seed


def _select(selection: Selection, values: list[float]) -> tuple[int | None, float | None]:
    """The loop's rule over a run of epochs: (1-based selected epoch, its value)."""
    best: float | None = None
    epoch = None
    for i, value in enumerate(values, start=1):
        if selection.improves(value, best):
            best, epoch = value, i
    return epoch, best


def test_max_and_min_pick_different_epochs_and_ties_keep_the_earlier() -> None:
    values = [0.5, 0.7, 0.7, 0.6]
    assert _select(Selection("val/macro_f1", "max"), values) == (2, 0.7)
    assert _select(Selection("val/loss", "min"), [1.2, 0.9, 0.95, 0.9]) == (2, 0.9)
    assert _select(Selection("val/loss", "min"), values) == (1, 0.5)


def test_nan_never_beats_a_number_and_any_number_beats_nan() -> None:
    nan = float("nan")
    assert _select(Selection("val/auroc", "max"), [nan, 0.6, nan, 0.5]) == (2, 0.6)
    epoch, best = _select(Selection("val/auroc", "max"), [nan, nan])
    assert epoch == 1 and best is not None and math.isnan(best)  # something is always selected


def test_value_reads_the_metric_and_falls_back_to_the_type_head_for_dual() -> None:
    selection = Selection()
    assert selection.value({"val/macro_f1": 0.4, "val/loss": 1.0}) == 0.4
    dual = {"val/disease/macro_f1": 0.2, "val/type/macro_f1": 0.6}
    assert selection.value(dual) == 0.6
    with pytest.raises(ValueError, match=r"'val/auroc' is not among .*val/loss"):
        Selection("val/auroc").value({"val/loss": 1.0})


def test_a_test_metric_or_an_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="validation metric"):
        Selection("test/macro_f1", "max")
    with pytest.raises(ValueError, match=r"\['max', 'min'\]"):
        Selection("val/loss", "lowest")
    assert Selection.from_dict(Selection("val/loss", "min").to_dict()) == Selection("val/loss", "min")
    assert Selection.from_dict(None) == Selection("val/macro_f1", "max")


def test_order_salt_zero_keeps_the_order_and_a_salt_changes_only_the_order() -> None:
    assert order_seed(7, 0) == 7
    assert len({order_seed(7, salt) for salt in range(1, 20)}) == 19
    data = list(range(40))

    def order(seed: int, epoch: int, rank: int) -> list[int]:
        sampler = DistributedSampler(data, num_replicas=2, rank=rank, shuffle=True, seed=seed)
        sampler.set_epoch(epoch)
        return list(sampler)

    for epoch in (0, 3):
        today = [order(7, epoch, r) for r in (0, 1)]
        assert [order(order_seed(7, 0), epoch, r) for r in (0, 1)] == today
        salted = [order(order_seed(7, 1), epoch, r) for r in (0, 1)]
        assert salted != today and sorted(salted[0] + salted[1]) == data  # the same samples, reordered
