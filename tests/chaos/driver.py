"""A sweep driver for the chaos suite: ``python -m tests.chaos.driver SPEC STORAGE [options]``.

It runs :func:`~mdf_search.search.runner.run_sweep` as ``mdf-search sweep``/``resume`` do (an embedded
Ray started by :func:`~mdf_search.cluster.connect`, or ``--address``), with the function-only trials of
``tests/chaos/trials.py`` unless ``--real``. ``--kill POINT:N`` SIGKILLs the driver's process group (the
driver and its embedded Ray) at the N-th occurrence of one point of the sweep:

- ``startup``: Tune's start, before any trial (``ResultsWriter.setup``);
- ``mid_trial``: just after a running trial's epoch report was written;
- ``before_row``: a trial has made its last report, its result row is not written yet;
- ``after_row``: a trial's result row is written, Tune has not saved its state since;
- ``compaction``: during a compaction of the results, after the compact file is written and the first
  folded part deleted.

Every completed result row is also appended to ``--rows`` (``{trial_id, status, run}``). The last stdout
line is a JSON summary of the outcome.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import time
from pathlib import Path
from typing import Any


def _die() -> None:
    os.killpg(os.getpgrp(), signal.SIGKILL)


class _Point:
    def __init__(self, spec: str | None) -> None:
        name, _, n = (spec or ":").partition(":")
        self.name, self.n, self.seen = name, int(n or 1), 0

    def hit(self, name: str) -> None:
        if name == self.name:
            self.seen += 1
            if self.seen == self.n:
                _die()


class _KillOnDelete:
    """A pyarrow filesystem proxy whose first ``delete_file`` is followed by the kill."""

    def __init__(self, fs: Any) -> None:
        self._fs = fs

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fs, name)

    def delete_file(self, path: str) -> None:
        self._fs.delete_file(path)
        _die()


def _install(point: _Point, rows: str | None, run: str) -> None:
    from mdf_search.results import store
    from mdf_search.search import callbacks

    writer = callbacks.ResultsWriter
    store.COMPACT_EVERY = int(os.environ.get("MDF_CHAOS_COMPACT_EVERY", store.COMPACT_EVERY))
    setup, on_result, on_complete = writer.setup, writer.on_trial_result, writer.on_trial_complete
    compact = store.ResultsStore.compact

    def setup_(self: Any, *args: Any, **kwargs: Any) -> None:
        point.hit("startup")
        setup(self, *args, **kwargs)

    def on_result_(
        self: Any, iteration: int, trials: Any, trial: Any, result: dict[str, Any], **kw: Any
    ) -> None:
        on_result(self, iteration, trials, trial, result, **kw)
        if result.get("status") == "running":
            point.hit("mid_trial")

    def on_complete_(self: Any, iteration: int, trials: Any, trial: Any, **kw: Any) -> None:
        point.hit("before_row")
        on_complete(self, iteration, trials, trial, **kw)
        if rows:
            status = (trial.last_result or {}).get("status", "")
            with open(rows, "a") as handle:
                handle.write(json.dumps({"trial_id": trial.trial_id, "status": status, "run": run}) + "\n")
        point.hit("after_row")

    def compact_(self: Any, table_name: str) -> None:
        if point.name == "compaction" and point.seen + 1 == point.n:
            self.fs = _KillOnDelete(self.fs)
        point.seen += point.name == "compaction"
        compact(self, table_name)

    writer.setup = setup_  # type: ignore[method-assign]
    writer.on_trial_result = on_result_  # type: ignore[method-assign]
    writer.on_trial_complete = on_complete_  # type: ignore[method-assign]
    store.ResultsStore.compact = compact_  # type: ignore[method-assign]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("spec")
    parser.add_argument("storage")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--address")
    parser.add_argument("--kill")
    parser.add_argument("--rows")
    parser.add_argument("--real", action="store_true", help="Ray Train trials instead of function trials")
    parser.add_argument("--temp-dir")
    args = parser.parse_args()

    from mdf_search.cluster import connect
    from mdf_search.search.runner import run_sweep
    from mdf_search.search.space import load_spec

    from .trials import quick_trial

    _install(_Point(args.kill), args.rows, os.environ.get("MDF_CHAOS_RUN", ""))
    started = time.monotonic()
    if args.address:
        import ray

        env = {k: os.environ[k] for k in ("MDF_CHAOS_PLAN", "MDF_CHAOS_RUN") if k in os.environ}
        ray.init(address=args.address, runtime_env={"env_vars": env}, log_to_driver=False)
    else:
        connect(temp_dir=args.temp_dir, trial_slots=2)
    spec = load_spec(Path(args.spec))
    kwargs: dict[str, Any] = {} if args.real else {"trial": quick_trial}
    outcome = run_sweep(spec, storage=args.storage, resume=True if args.resume else None, **kwargs)
    summary = {
        "finished": outcome.trials,
        "errors": [m.splitlines()[-1] if m else "" for _, m in outcome.errors],
        "unfinished": outcome.unfinished,
        "stopped": outcome.stopped_reason,
        "wall_s": time.monotonic() - started,
    }
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
