"""Every bad-input case is refused before a cluster: a case that gets as far as starting Ray fails."""

from __future__ import annotations

import pytest

import mdf_search.cli.study
import mdf_search.cli.trial


@pytest.fixture(autouse=True)
def _no_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_: object, **__: object) -> None:
        raise AssertionError("the command went on to start Ray")

    for module in (mdf_search.cli.study, mdf_search.cli.trial):
        monkeypatch.setattr(module, "connect", refuse)
