"""Function-only trials for the chaos suite: what ``runner.run_sweep(trial=...)`` runs instead of a
Ray Train run. A trial reports as the epoch loop does (``epoch``, ``status``, the study metric, its
selected epoch under ``selected/``), checkpoints every epoch after its report (``<experiment>/train/
<trial id>/state.json``, as a Train run keeps its checkpoints) and resumes after it, so
its results are a deterministic function of its params however often it is interrupted.

Faults and bookkeeping come from a JSON plan named by ``MDF_CHAOS_PLAN`` (in the trial process's
environment: inherited from an embedded Ray's driver, or set on a ``ray start`` node):

- ``log``: a JSON-lines file; every epoch trained appends ``{trial_id, seed, arm, epoch, attempt, run,
  node, pid, t0, t1}`` (``run``: ``MDF_CHAOS_RUN`` of the driver run, ``node``: ``MDF_CHAOS_NODE``);
- ``epoch_s``: seconds one epoch sleeps (the trial's own time);
- ``oom_seeds``: trials of these seeds report ``oom`` at epoch 1, as the loop does for a CUDA OOM;
- ``preempt_seeds`` and ``markers``: trials of these seeds SIGKILL their own process during epoch 2
  once (a marker file per trial under ``markers``), as a preempted node would.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

PLAN_ENV = "MDF_CHAOS_PLAN"


def expected(params: dict[str, Any], epoch: int) -> float:
    """The study metric (``val/loss``) a trial of ``params`` reports at ``epoch``: deterministic."""
    level = 0.0 if params.get("fusion.levels") in (None, "none") else 0.1
    return round(1.0 / (epoch + 1) + 0.01 * int(params["seed"]) + level, 6)


def plan() -> dict[str, Any]:
    path = os.environ.get(PLAN_ENV)
    return json.loads(Path(path).read_text()) if path else {}


def _log(path: str | None, record: dict[str, Any]) -> None:
    if not path:
        return
    line = (json.dumps(record) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)  # one write with O_APPEND: lines of concurrent trials never interleave
    finally:
        os.close(fd)


def quick_trial(config: dict[str, Any], settings: Any) -> None:
    """One function-only trial (``run_sweep(trial=quick_trial)``)."""
    import ray
    from ray import tune

    params = dict(config["params"])
    seed, epochs = int(params["seed"]), int(params["optim.epochs"])
    faults = plan()
    context = tune.get_context()
    trial_id = context.get_trial_id()
    # Its own checkpoint under the experiment, named after the Tune trial, as a Train run keeps its
    # (Tune's snapshot of a trial's checkpoint can be older than a driver killed since).
    state = Path(settings.experiment_root) / "train" / trial_id / "state.json"
    start = int(json.loads(state.read_text())["epoch"]) if state.exists() else 0
    if start >= epochs:  # finished before: report its result again, train nothing
        value = expected(params, epochs)
        tune.report(_metrics(params, epochs, value, "completed"))
        return
    if seed in faults.get("oom_seeds", []):
        tune.report({"status": "oom", "epoch": 1, "message": f"injected OOM at epoch 1 with seed {seed}"})
        return
    for epoch in range(start + 1, epochs + 1):
        t0 = time.time()
        time.sleep(float(faults.get("epoch_s", 0.2)))
        if seed in faults.get("preempt_seeds", []) and epoch == 2:
            marker = Path(faults["markers"]) / trial_id
            if not marker.exists():
                marker.write_text("preempted")
                os.kill(os.getpid(), signal.SIGKILL)
        _log(
            faults.get("log"),
            {
                "trial_id": trial_id,
                "seed": seed,
                "arm": config.get("arm", ""),
                "epoch": epoch,
                "run": os.environ.get("MDF_CHAOS_RUN", ""),
                "node": os.environ.get("MDF_CHAOS_NODE", ""),
                "ray_node": ray.get_runtime_context().get_node_id(),
                "pid": os.getpid(),
                "t0": t0,
                "t1": time.time(),
            },
        )
        status = "completed" if epoch == epochs else "running"
        tune.report(_metrics(params, epoch, expected(params, epoch), status))
        state.parent.mkdir(parents=True, exist_ok=True)
        tmp = state.with_name(f".state.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"epoch": epoch}))
        os.replace(tmp, state)


def _metrics(params: dict[str, Any], epoch: int, value: float, status: str) -> dict[str, Any]:
    """A report shaped as the loop's: the epoch's metric and the selected (here: the latest, since the
    metric only falls) epoch's under ``selected/``."""
    return {
        "epoch": epoch,
        "status": status,
        "val/loss": value,
        "train/loss": value,
        "best_epoch": epoch,
        "best_value": value,
        "selected/val/loss": value,
        "selected/train/loss": value,
    }
