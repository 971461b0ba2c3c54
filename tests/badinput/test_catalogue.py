"""The catalogue as a whole: at least 150 distinct cases across the six areas of input."""

from __future__ import annotations

import importlib
import pkgutil

import tests.badinput as package
from tests.badinput.harness import Case

AREAS = ("cli_args", "spec_yaml", "datasets", "checkpoints", "results_dirs", "cluster_addresses")


def _all_cases() -> dict[str, list[Case]]:
    found: dict[str, list[Case]] = {}
    for module in pkgutil.iter_modules(package.__path__):
        if module.name.startswith("test_") and module.name != "test_catalogue":
            loaded = importlib.import_module(f"tests.badinput.{module.name}")
            found[module.name.removeprefix("test_")] = list(getattr(loaded, "CASES", []))
    return found


def test_every_area_has_cases_and_ids_are_unique() -> None:
    found = _all_cases()
    for area in AREAS:
        assert found.get(area), f"no bad-input cases for {area}"
    every = [case.id for cases in found.values() for case in cases]
    assert len(every) == len(set(every)), "duplicate case ids"


def test_at_least_150_cases() -> None:
    assert sum(len(cases) for cases in _all_cases().values()) >= 150
