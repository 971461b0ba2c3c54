"""A tiny Ray actor through which rank 0 publishes step progress (fire-and-forget ``update.remote``),
so the CLI can draw a progress bar over steps without Ray Train reporting every step."""

from __future__ import annotations

from typing import Any


class Progress:
    def __init__(self) -> None:
        self.state: dict[str, Any] = {}

    def update(self, **fields: Any) -> None:
        self.state.update(fields)

    def get(self) -> dict[str, Any]:
        return dict(self.state)


def progress_actor() -> Any:
    import ray  # the CLI imports this module at start; Ray loads when a trial is about to run

    return ray.remote(num_cpus=0)(Progress).remote()
