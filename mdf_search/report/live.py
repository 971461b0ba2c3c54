"""The live view of a running sweep: top trials, status counts, budget and ETA, best so far.

The sweep calls ``on_event(event, info)`` on every trial result/complete/error (``info``: trial_id, arm,
epoch, metrics). On a terminal the view is a ``rich.live.Live`` panel re-read from the Parquet store (at
most once a second: reads are cheap, and the store is the one source of truth, so a resumed sweep shows
its earlier trials too); elsewhere (CI, ``ray job logs``) it prints one plain line per event.

The number of trials the sweep runs is read from the design it records (``arms.json``, see
``report.design``), which the sweep writes before its first trial: until then the total is unknown, and
the plain-mode header line waits for it (or for the first event). An experiment on remote storage
(``s3://``) has no arms.json, so its view shows no total and no ETA from it.

Every piece of data shown (trial ids, arm names, parameters, error messages, the experiment's name) is
printed as text (``mdf_search.escape``): rich markup in it shows as written and control characters as
``\\xNN``. A results part that cannot be read is set aside by the store and named under the table (or
once, in plain mode); a trial with a non-finite metric is no result: it is left out of the ranking and
counted in the summary line.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from types import TracebackType
from typing import Any

import polars as pl
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from mdf_search.escape import terminal, visible
from mdf_search.report.design import DesignError, read_record
from mdf_search.report.leaderboard import param_columns, varying
from mdf_search.results.schema import Status
from mdf_search.results.store import ResultsStore

log = logging.getLogger(__name__)
REFRESH_S = 1.0


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    minutes, sec = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{sec:02d}s"


class LiveLeaderboard:
    """``with LiveLeaderboard(root, spec, console) as view: run_sweep(spec, on_event=view.on_event)``.

    Of ``spec`` (the sweep's loaded spec) the view reads the plain attributes ``experiment``, ``metric``,
    ``mode`` and ``budget.max_wall_time`` (seconds); it runs no design code."""

    def __init__(self, experiment_root: str, spec: Any, console: Console, top: int = 10) -> None:
        self.root = experiment_root
        self.spec = spec
        self.top = top
        self.console = console  # the CLI's (``cli/console.py``): the library makes no console of its own
        self.metric: str = spec.metric
        self.descending = spec.mode == "max"
        self.total: int | None = None
        self.started = time.monotonic()
        self.events = 0
        self.trials = pl.DataFrame()
        self._read_at = 0.0
        self._finished_at_start = 0
        self._live: Live | None = None
        self._announced = False
        self.warnings: list[str] = []  # parts the store set aside (ResultsStore.warnings)
        self._warned: set[str] = set()

    def _read_total(self) -> None:
        """The trial total from arms.json, once the sweep has written it."""
        if self.total is not None:
            return
        try:
            self.total = read_record(self.root).trials
        except FileNotFoundError:  # not written yet (or remote storage, where it never is)
            pass
        except DesignError as err:
            log.debug("live view: %s", err)

    def _announce(self) -> None:
        """Plain mode's header line, once (when the total is known, or at the first event)."""
        if self._announced or self._live is not None:
            return
        self._announced = True
        self._read_total()
        self.console.print(f"sweep {terminal(self.spec.experiment)}: {self.total or '?'} trials, ranking by "
                           f"{terminal(self.metric)} ({terminal(self.spec.mode)})", highlight=False)  # fmt: skip

    # -- context manager -------------------------------------------------------------------------------
    def __enter__(self) -> LiveLeaderboard:
        self.started = time.monotonic()
        self._refresh(force=True)
        self._finished_at_start = self._finished()
        if self.console.is_terminal:
            self._live = Live(self.render(), console=self.console, auto_refresh=False, transient=False)
            self._live.__enter__()
        elif self.total is not None:
            self._announce()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._refresh(force=True)
        if self._live is not None:
            self._live.update(self.render(), refresh=True)
            self._live.__exit__(kind, value, tb)
            self._live = None
        else:
            self._announce()
            self._print_warnings()
            self.console.print(terminal(self.summary_line()), highlight=False, soft_wrap=True)

    def _print_warnings(self) -> None:
        """Plain mode: each set-aside part once (a terminal shows them under the table)."""
        for message in self.warnings:
            if message not in self._warned:
                self._warned.add(message)
                self.console.print(f"warning: {terminal(message)}", highlight=False, soft_wrap=True)

    # -- events ----------------------------------------------------------------------------------------
    def on_event(self, event: str, info: dict[str, Any]) -> None:
        self.events += 1
        self._refresh(force=event != "result")
        if self._live is not None:
            self._live.update(self.render(), refresh=True)
            return
        self._announce()
        self._print_warnings()
        value = info.get(self.metric)
        shown = f" {self.metric}={value:.4f}" if isinstance(value, float) else ""
        epoch = f" epoch {info['epoch']}" if event == "result" and "epoch" in info else ""
        lines = str(info.get("message") or "").splitlines()
        message = f" {lines[-1]}" if event == Status.ERROR and lines else ""  # a trial that raised
        line = f"{info.get('trial_id', '?')} {event}{epoch} {info.get('arm', '')}{shown}{message}"
        self.console.print(
            f"{terminal(line)} | {terminal(self.summary_line())}", highlight=False, soft_wrap=True
        )

    def _refresh(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._read_at < REFRESH_S:
            return
        self._read_at = now
        self._read_total()
        store = ResultsStore(self.root)
        try:
            self.trials = store.trials()
            self.warnings = store.warnings(("trials",))
        except Exception as err:  # a half-written store must never stop the sweep
            log.debug("live view: cannot read %s: %s", self.root, err)

    # -- views -----------------------------------------------------------------------------------------
    def counts(self) -> Counter[str]:
        if self.trials.is_empty():
            return Counter()
        return Counter(self.trials["status"].to_list())

    def best(self) -> tuple[float, str] | None:
        ok = self._ranked()
        if ok.is_empty():
            return None
        return float(ok[self.metric][0]), str(ok["arm"][0])

    def _ranked(self) -> pl.DataFrame:
        """Trials with a finite value of the metric, best first (inf and NaN are no result)."""
        if self.trials.is_empty() or self.metric not in self.trials.columns:
            return pl.DataFrame()
        value = pl.col(self.metric).cast(pl.Float64, strict=False)
        return self.trials.filter(value.is_finite()).sort(self.metric, descending=self.descending)

    def non_finite(self) -> int:
        """Trials whose metric is inf, -inf or NaN: left out of the ranking."""
        if self.trials.is_empty() or self.metric not in self.trials.columns:
            return 0
        value = pl.col(self.metric).cast(pl.Float64, strict=False)
        return self.trials.filter(value.is_not_null() & ~value.is_finite()).height

    def _finished(self) -> int:
        return sum(v for k, v in self.counts().items() if k != Status.RUNNING)

    def eta(self) -> tuple[int, int | None, float]:
        """(finished, total, seconds left): the time per trial finished *in this session* (a resumed
        sweep's earlier trials do not count) times the trials left; capped by ``budget.max_wall_time``."""
        finished = self._finished()
        elapsed = time.monotonic() - self.started
        new = finished - self._finished_at_start
        left = float("nan")
        if self.total is not None and new > 0:
            left = elapsed / new * max(self.total - finished, 0)
        cap = getattr(getattr(self.spec, "budget", None), "max_wall_time", None)
        if cap:
            left = (
                min(left, max(float(cap) - elapsed, 0.0))
                if math.isfinite(left)
                else max(float(cap) - elapsed, 0.0)
            )
        return finished, self.total, left

    def summary_line(self) -> str:
        counts = self.counts()
        status = " ".join(f"{k.replace('_', ' ')} {counts[k]}" for k in Status if counts.get(k))
        finished, total, left = self.eta()
        best = self.best()
        best_text = f"best {self.metric}={best[0]:.4f} ({best[1]})" if best else "no result yet"
        invalid = self.non_finite()
        if invalid:
            best_text += f" | {invalid} with a non-finite {self.metric} left out (not a valid result)"
        budget = (
            f"{finished}/{total} trials, {max(total - finished, 0)} left" if total else f"{finished} trials"
        )
        return f"{budget}, ETA {_duration(left)} | {status or 'starting'} | {best_text}"

    def render(self) -> Group:
        ranked = self._ranked().head(self.top)
        title = f"{self.spec.experiment}: top {self.top} by {self.metric} ({self.spec.mode})"
        table = Table(title=terminal(title))
        params = varying(ranked, [p for p in param_columns(ranked) if p != "seed"]) if ranked.height else []
        for col in ("trial_id", "arm", "status", "seed", self.metric, *params):
            table.add_column(terminal(col), justify="right" if col in (self.metric, "seed") else "left")
        for row in ranked.iter_rows(named=True):
            cells = [
                row.get("trial_id"),
                row.get("arm"),
                row.get("status"),
                row.get("seed"),
                row.get(self.metric),
            ]
            cells += [row.get(p) for p in params]
            table.add_row(
                *[terminal(f"{c:.4g}" if isinstance(c, float) else "" if c is None else c) for c in cells]
            )
        warnings = [Text(f"warning: {visible(m)}", style="yellow") for m in self.warnings]
        return Group(table, Text(visible(self.summary_line())), *warnings)  # Text: shown as written
