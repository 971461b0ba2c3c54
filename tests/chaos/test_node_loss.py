"""A node lost: a two-node Ray cluster on loopback (``ray start`` for a head and a second raylet), a
sweep of two function-only trials, one on each node; the second node is SIGKILLed (its raylet and
workers) while its trial runs. Tune retries that trial on the surviving node, where it resumes after
its last checkpointed epoch and finishes."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest

from mdf_search.results.store import ResultsStore
from tests.search.test_sweep_integration import FIXED, _spec

from .helpers import ROOT, Figures, check_results, start_driver, trained, write_plan
from .trials import PLAN_ENV

pytestmark = pytest.mark.integration
BIN = Path(sys.executable).parent


def _ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _node(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as handle:
        return subprocess.Popen(
            [str(BIN / "ray"), "start", "--block", "--node-ip-address=127.0.0.1", "--num-cpus=2",
             "--num-gpus=0", '--resources={"trial_slot": 1}', "--disable-usage-stats", *args],
            env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip


def _stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


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
    gcs, dash, *p = _ports(14)

    def ports(q: list[int]) -> list[str]:
        return [f"--node-manager-port={q[0]}", f"--object-manager-port={q[1]}",
                f"--dashboard-agent-listen-port={q[2]}", f"--dashboard-agent-grpc-port={q[3]}",
                f"--runtime-env-agent-port={q[4]}", f"--metrics-export-port={q[5]}"]  # fmt: skip

    head = _node(["--head", f"--port={gcs}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
                  f"--temp-dir={tmp / 'h'}", *ports(p[0:6])],
                 {**env, "MDF_CHAOS_NODE": "head"}, tmp_path / "head.log")  # fmt: skip
    procs = [head]
    try:
        address = f"127.0.0.1:{gcs}"
        _wait_nodes(address, env, 1, tmp_path / "head.log")
        victim = _node([f"--address={address}", f"--temp-dir={tmp / 'v'}", *ports(p[6:12])],
                       {**env, "MDF_CHAOS_NODE": "victim"}, tmp_path / "victim.log")  # fmt: skip
        procs.append(victim)
        _wait_nodes(address, env, 2, tmp_path / "victim.log")
        yield address, victim, env
    finally:
        for proc in reversed(procs):
            _stop(proc)
        shutil.rmtree(tmp, ignore_errors=True)


def _wait_nodes(address: str, env: dict[str, str], n: int, log: Path) -> None:
    code = (f"import ray; ray.init(address={address!r}, logging_level='ERROR');"
            "print(sum(1 for x in ray.nodes() if x['Alive']))")  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
        )
        if out.returncode == 0 and out.stdout.strip().splitlines()[-1:] == [str(n)]:
            return
        time.sleep(2)
    pytest.fail(f"the cluster did not reach {n} node(s):\n{log.read_text()[-2000:]}")


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
    _stop(victim, signal.SIGKILL)  # the node is lost: its raylet and its workers die at once
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
