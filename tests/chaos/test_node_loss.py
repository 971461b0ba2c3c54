"""A node lost: a two-node Ray cluster on loopback (``ray start`` for a head and a second raylet), a
sweep of two function-only trials, one on each node; the second node is SIGKILLed (its raylet and
workers) while its trial runs. Tune retries that trial on the surviving node, where it resumes after
its last checkpointed epoch and finishes."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest

from mdf_search.results.store import ResultsStore
from tests.raynodes import PORTS_PER_NODE, free_ports, node_ports, start_node, stop, wait_nodes
from tests.search.test_sweep_integration import FIXED, _spec

from .helpers import ROOT, Figures, check_results, start_driver, trained, write_plan
from .trials import PLAN_ENV

pytestmark = pytest.mark.integration


@pytest.fixture
def plan_path(tmp_path: Path) -> Path:
    return tmp_path / "plan.json"


@pytest.fixture
def two_nodes(
    tmp_path: Path, plan_path: Path
) -> Iterator[tuple[str, subprocess.Popen[bytes], dict[str, str]]]:
    tmp = Path(tempfile.mkdtemp(prefix="mdfn-", dir="/tmp"))  # AF_UNIX paths stay short
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0", OMP_NUM_THREADS="1",
               PYTHONPATH=str(ROOT), **{PLAN_ENV: str(plan_path)})  # fmt: skip
    gcs, dash, *p = free_ports(2 + 2 * PORTS_PER_NODE)
    slot = ["--num-cpus=2", '--resources={"trial_slot": 1}']
    logs = [tmp_path / "head.log", tmp_path / "victim.log"]
    head = start_node([*slot, "--head", f"--port={gcs}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
                       f"--temp-dir={tmp / 'h'}", *node_ports(p[:PORTS_PER_NODE])],
                      {**env, "MDF_CHAOS_NODE": "head"}, logs[0])  # fmt: skip
    procs = [head]
    try:
        address = f"127.0.0.1:{gcs}"
        wait_nodes(address, env, 1, logs)
        victim = start_node([*slot, f"--address={address}", f"--temp-dir={tmp / 'v'}",
                             *node_ports(p[PORTS_PER_NODE:])], {**env, "MDF_CHAOS_NODE": "victim"}, logs[1])  # fmt: skip
        procs.append(victim)
        wait_nodes(address, env, 2, logs)
        yield address, victim, env
    finally:
        for proc in reversed(procs):
            stop(proc)
        shutil.rmtree(tmp, ignore_errors=True)


def test_a_lost_node_s_trial_moves_to_the_survivor_and_finishes(
    two_nodes: tuple[str, subprocess.Popen[bytes], dict[str, str]], tmp_path: Path, plan_path: Path
) -> None:
    figures = Figures("a node lost (two-node local cluster)")
    address, victim, _ = two_nodes
    spec = _spec(
        tmp_path,
        "nodeloss",
        seeds=[0, 1],
        budget={"trials": 2, "epochs": 4},
        scientific={"fusion.levels": ["4"]},
        baseline=None,
        fixed={**FIXED, "fusion.injection": "parallel"},
        resources={"workers": 1, "concurrent_trials": 2},
    )
    log = tmp_path / "trained.jsonl"
    write_plan(plan_path, log=str(log), epoch_s=2.0)
    storage = tmp_path / "runs"
    driver = start_driver(
        spec, storage, plan=plan_path, address=address, extra_env={"RAY_AUTH_MODE": "disabled"}
    )
    deadline = time.monotonic() + 240
    on_victim = pl.DataFrame()
    while time.monotonic() < deadline and on_victim.is_empty() and driver.proc.poll() is None:
        time.sleep(0.5)
        done = trained(log)
        on_victim = done.filter(pl.col("node") == "victim") if not done.is_empty() else done
    assert not on_victim.is_empty(), driver.tail()
    moved = on_victim["trial_id"][0]
    stop(victim, signal.SIGKILL)  # the node is lost: its raylet and its workers die at once
    figures.faults = 1
    assert driver.wait(timeout=300) == 0, driver.tail()
    figures.runs = 1
    check_results(storage / "nodeloss", [("fusion.levels=4", 0), ("fusion.levels=4", 1)], 4, figures,
                  statuses={"completed"})  # fmt: skip
    rows = ResultsStore(str(storage / "nodeloss")).trials()
    assert rows.filter(pl.col("trial_id") == moved)["attempt"].item() == 2
    epochs = trained(log).filter(pl.col("trial_id") == moved)
    before = epochs.filter(pl.col("node") == "victim")["epoch"]
    after = epochs.filter(pl.col("node") == "head")["epoch"]
    assert after.len() and after.min() == before.max() + 1, epochs  # resumed after its checkpoint
    figures.notes = f"epochs on the lost node {before.to_list()}, on the survivor {after.to_list()}"
    figures.record()
