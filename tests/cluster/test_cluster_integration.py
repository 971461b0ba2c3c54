"""Studies submitted to a real multi-node Ray cluster on this machine, over loopback only.

One cluster for the module: a head (`ray start --head --block`, token auth on, dashboard on 127.0.0.1)
and a second node joined with `ray start --address`, each with 2 CPUs and one `trial_slot`, started as
process groups the test owns and killed at teardown; an S3-compatible moto server on 127.0.0.1 as the
object store. The nodes get their AWS settings and (dummy) credentials from their own environment, as a
real cluster's nodes do from IAM or a secret; nothing secret travels in a runtime env.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import psutil
import pytest
import yaml
from moto.server import ThreadedMotoServer

from mdf_search.results.store import ResultsStore
from tests import raynodes as rn

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
TOP_LEVEL_SKIP = {".venv", "venv", ".git", "runs", "reports", "data", ".cache", ".mypy_cache", ".ruff_cache",
                  ".pytest_cache", "mdf_search.egg-info", "build", "dist"}  # fmt: skip
FIXED = {
    "model.preset": "tiny",
    "data.synthetic_images": 48,
    "data.synthetic_size": 128,
    "optim.micro_batch": 4,
    "optim.lr": 1.0e-3,
    "film.placement": "none",
    "fusion.injection": "parallel",
}


@dataclass
class Cluster:
    env: dict[str, str]  # what every node and an authorised client sees (token included)
    gcs: str
    dashboard: str
    workdir: Path  # a copy of the repository, the job's working dir
    tmp: Path
    bucket: str
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def client_env(self, **overrides: str | None) -> dict[str, str]:
        env = dict(self.env)
        for key, value in overrides.items():
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value
        return env

    def python(self, code: str, env: dict[str, str] | None = None, timeout: float = 120) -> Any:
        """Run `code` in a fresh interpreter (Ray's auth mode is process-wide), return its last JSON line."""
        out = subprocess.run([sys.executable, "-c", code], env=env or self.env, capture_output=True,
                             text=True, timeout=timeout, cwd=self.workdir)  # fmt: skip
        assert out.returncode == 0, out.stderr[-3000:]
        return json.loads(out.stdout.strip().splitlines()[-1])


def _copy_repo(dst: Path) -> None:
    def ignore(directory: str, names: list[str]) -> set[str]:
        skip = {n for n in names if n == "__pycache__"}
        return skip | (TOP_LEVEL_SKIP & set(names) if Path(directory) == ROOT else set())

    shutil.copytree(ROOT, dst, ignore=ignore)


def _write_space(workdir: Path, name: str, seeds: list[int], concurrent: int) -> str:
    body = {
        "experiment": name,
        "description": "cluster integration test",
        "metric": "val/loss",
        "mode": "min",
        "design": "grid",
        "seeds": seeds,
        "budget": {"trials": len(seeds), "epochs": 1},
        "scheduler": {"type": "none"},
        "scientific": {"fusion.levels": ["4"]},
        "fixed": dict(FIXED),
        "resources": {"workers": 1, "concurrent_trials": concurrent},
    }
    rel = f"search_spaces/_{name}.yaml"
    (workdir / rel).write_text(f"# mdf-search sweep {rel}\n" + yaml.safe_dump(body, sort_keys=False))
    return rel


@pytest.fixture(scope="module")
def cluster(session_tmp: Path) -> Iterator[Cluster]:
    tmp = Path(tempfile.mkdtemp(prefix="mdfc-", dir="/tmp"))  # short: AF_UNIX paths live under it
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    host, port = moto.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "AWS_"))}
    env.update(
        PATH=f"{rn.BIN}{os.pathsep}{env.get('PATH', '')}",  # `mdf-search` / `ray` of this environment
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=secrets.token_hex(32),
        RAY_USAGE_STATS_ENABLED="0",
        DS_ACCELERATOR="cpu",
        OMP_NUM_THREADS="1",
        MDF_SEARCH_CACHE=str(session_tmp / "cache"),
        AWS_ENDPOINT_URL=endpoint,
        AWS_ACCESS_KEY_ID="testing",  # dummy credentials of the moto server, in the nodes' environment
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_EC2_METADATA_DISABLED="true",
    )
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                 aws_secret_access_key="testing").create_bucket(Bucket="mdf")  # fmt: skip
    workdir = tmp / "repo"
    _copy_repo(workdir)

    gcs_port, dash_port, client_port, *p = rn.free_ports(3 + 2 * rn.PORTS_PER_NODE)
    slot = ["--num-cpus=2", '--resources={"trial_slot": 1}']
    head_args = [*slot, "--head", f"--port={gcs_port}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash_port}",
                 f"--ray-client-server-port={client_port}", f"--temp-dir={tmp / 'h'}", *rn.node_ports(p[:rn.PORTS_PER_NODE])]  # fmt: skip
    worker_args = [*slot, f"--address=127.0.0.1:{gcs_port}", f"--temp-dir={tmp / 'w'}", *rn.node_ports(p[rn.PORTS_PER_NODE:])]  # fmt: skip
    c = Cluster(env=env, gcs=f"127.0.0.1:{gcs_port}", dashboard=f"http://127.0.0.1:{dash_port}",
                workdir=workdir, tmp=tmp, bucket="mdf")  # fmt: skip
    logs = [tmp / "head.log", tmp / "worker.log"]
    try:
        c.procs.append(rn.start_node(head_args, env, logs[0]))
        rn.wait_for(lambda: rn.dashboard_up(c.dashboard), "the head's dashboard", 90, logs)
        c.procs.append(rn.start_node(worker_args, env, logs[1]))
        rn.wait_nodes(c.gcs, env, 2, logs, timeout=90)
        assert _listening(c.procs[0].pid, dash_port) == {"127.0.0.1"}, (
            "the dashboard must be on loopback only"
        )
        yield c
    finally:
        for proc in reversed(c.procs):
            rn.stop(proc)
        moto.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def _listening(pgid: int, port: int) -> set[str]:
    """Addresses the process group ``pgid`` listens on at ``port``."""
    pids = {p.pid for p in psutil.process_iter() if _pgid(p.pid) == pgid}
    return {
        c.laddr.ip.removeprefix("::ffff:")
        for c in psutil.net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN and c.pid in pids and c.laddr.port == port
    }


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def test_ray_job_submit_runs_a_study_and_writes_parquet(cluster: Cluster) -> None:
    """`ray job submit --working-dir . --runtime-env cluster/runtime_env.yaml -- mdf-search sweep ...`."""
    space = _write_space(cluster.workdir, "cluster_job", seeds=[0], concurrent=1)
    storage = cluster.tmp / "runs"  # a shared path: both nodes are on this machine
    started = time.monotonic()
    result = subprocess.run(
        [str(rn.BIN / "ray"), "job", "submit", "--address", cluster.dashboard, "--working-dir", ".",
         "--runtime-env", "cluster/runtime_env.yaml", "--",
         "mdf-search", "sweep", space, "--storage", str(storage)],
        cwd=cluster.workdir, env=cluster.env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    wall = time.monotonic() - started
    print(f"ray job submit: {wall:.1f} s\n{result.stdout[-1500:]}")
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert "succeeded" in result.stdout.lower(), result.stdout[-2000:]
    trials = ResultsStore(str(storage / "cluster_job")).trials()
    assert trials.height == 1 and trials["status"].to_list() == ["completed"]
    assert trials["val/loss"].null_count() == 0


def test_clients_without_the_token_are_refused(cluster: Cluster, tmp_path: Path) -> None:
    empty_home = tmp_path / "home"
    empty_home.mkdir()
    cmd = [str(rn.BIN / "ray"), "job", "list", "--address", cluster.dashboard]
    # No RAY_AUTH_MODE, no token: the job server answers 401.
    no_token = cluster.client_env(RAY_AUTH_MODE=None, RAY_AUTH_TOKEN=None, HOME=str(empty_home))
    refused = subprocess.run(cmd, env=no_token, capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0 and "Authentication" in refused.stdout + refused.stderr
    # A wrong token: 403.
    wrong = cluster.client_env(RAY_AUTH_TOKEN=secrets.token_hex(32))
    refused = subprocess.run(cmd, env=wrong, capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0 and "Authentication failed" in refused.stdout + refused.stderr
    # mdf-search submit: exit 2, and the message says how to fix it.
    space = _write_space(cluster.workdir, "refused", seeds=[0], concurrent=1)
    code = (
        "import sys; from mdf_search.cli.cluster import submit_command;"
        f"sys.exit(submit_command({space!r}, {cluster.dashboard!r}, None))"
    )
    for env in (cluster.client_env(RAY_AUTH_TOKEN=None, HOME=str(empty_home)), wrong):
        out = subprocess.run([sys.executable, "-c", code], env=env, cwd=cluster.workdir,
                             capture_output=True, text=True, timeout=120)  # fmt: skip
        assert out.returncode == 2, out.stderr[-2000:]
        assert "RAY_AUTH_MODE=token" in out.stderr and "~/.ray/auth_token" in out.stderr, out.stderr
    # The authorised client is let in (the same command, with the cluster's token).
    listed = subprocess.run(cmd, env=cluster.env, capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr[-2000:]


def test_submit_runs_trials_on_both_nodes_into_s3(cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """`mdf-search submit` (the SDK path): 2 concurrent trials, one trial slot per node, s3:// storage."""
    space = _write_space(cluster.workdir, "two_nodes", seeds=[0, 1], concurrent=2)
    code = (
        "import sys; from mdf_search.cli.cluster import submit_command;"
        f"sys.exit(submit_command({space!r}, {cluster.dashboard!r}, 's3://mdf/runs'))"
    )
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-c", code], env=cluster.env, cwd=cluster.workdir,
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    print(f"mdf-search submit (2 trials, 2 nodes): {time.monotonic() - started:.1f} s")
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    assert "SUCCEEDED" in out.stderr

    for key in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION",
                "AWS_EC2_METADATA_DISABLED"):  # fmt: skip
        monkeypatch.setenv(key, cluster.env[key])
    trials = ResultsStore("s3://mdf/runs/two_nodes").trials()
    assert trials.height == 2 and set(trials["status"]) == {"completed"}
    assert sorted(trials["seed"].to_list()) == [0, 1]

    # Where did the two trial drivers run? Ray's state API: the actors that held a trial slot.
    placed = cluster.python(
        "import json; from ray.util.state import list_actors, list_nodes;"
        f"a = list_actors(address={cluster.dashboard!r}, detail=True, limit=10000, raise_on_missing_output=False);"
        f"n = list_nodes(address={cluster.dashboard!r}, limit=100);"
        "print(json.dumps({'drivers': sorted({x.node_id for x in a if any(k.startswith('trial_slot') for k in (x.required_resources or {}))}),"
        " 'nodes': sorted(x.node_id for x in n if x.state == 'ALIVE')}))"
    )
    assert len(placed["nodes"]) == 2
    assert placed["drivers"] == placed["nodes"], placed
