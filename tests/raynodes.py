"""Ray nodes on this machine for the tests that need a real multi-node cluster: each node is a
``ray start --block`` process group the test owns, on loopback, with its own ports so that two nodes on
one host do not collide; started, waited for and stopped (then killed, with anything left in its group).
Used by tests/cluster, tests/storage and tests/chaos."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import pytest

BIN = Path(sys.executable).parent  # `ray` (and `mdf-search`) of this environment
PORTS_PER_NODE = 6  # what node_ports takes
T = TypeVar("T")


def free_ports(n: int) -> list[int]:
    """``n`` distinct loopback ports nothing listens on now."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def node_ports(q: Sequence[int]) -> list[str]:
    """The flags that give a node its own ports (``PORTS_PER_NODE`` of them, from ``q``)."""
    return [f"--node-manager-port={q[0]}", f"--object-manager-port={q[1]}",
            f"--dashboard-agent-listen-port={q[2]}", f"--dashboard-agent-grpc-port={q[3]}",
            f"--runtime-env-agent-port={q[4]}", f"--metrics-export-port={q[5]}"]  # fmt: skip


def start_node(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """``ray start --block`` on 127.0.0.1 without GPUs or usage stats, plus ``args`` (head or address,
    CPUs, resources, ports, temp dir), as a new process group; its output goes to ``log``."""
    cmd = [str(BIN / "ray"), "start", "--block", "--node-ip-address=127.0.0.1", "--num-gpus=0",
           "--disable-usage-stats", *args]  # fmt: skip
    with open(log, "wb") as handle:
        return subprocess.Popen(cmd, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    """Send ``sig`` to the node's process group (`ray start --block` stops its node's processes on
    SIGTERM; SIGKILL loses the node at once), wait up to 20 s, then SIGKILL whatever is left."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=20)  # it can linger (its autoscaler monitor): then SIGKILL
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    with contextlib.suppress(ProcessLookupError):  # anything left in the group
        os.killpg(proc.pid, signal.SIGKILL)


def wait_for(predicate: Callable[[], T], what: str, timeout: float, logs: Sequence[Path]) -> T:
    """``predicate()``'s first truthy value, polled each second; fails the test with the tails of
    ``logs`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(1)
    tails = "\n".join(f"--- {p}\n{p.read_text()[-2000:]}" for p in logs if p.exists())
    pytest.fail(f"timed out waiting for {what}\n{tails}")


def dashboard_up(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/api/gcs_healthz", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def alive_nodes(address: str, env: dict[str, str]) -> int:
    """How many nodes of the cluster at ``address`` are alive, asked from a fresh interpreter (Ray's
    auth mode is process-wide); 0 while it cannot be asked."""
    code = (f"import ray; ray.init(address={address!r}, logging_level='ERROR');"
            "print(sum(1 for x in ray.nodes() if x['Alive']))")  # fmt: skip
    try:
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
        )
    except subprocess.TimeoutExpired:
        return 0
    last = out.stdout.strip().splitlines()[-1:]
    return int(last[0]) if out.returncode == 0 and last and last[0].isdigit() else 0


def wait_nodes(address: str, env: dict[str, str], n: int, logs: Sequence[Path], timeout: float = 120) -> None:
    """Wait until ``n`` nodes of the cluster at ``address`` are alive."""
    wait_for(lambda: alive_nodes(address, env) == n, f"{n} alive node(s) at {address}", timeout, logs)
