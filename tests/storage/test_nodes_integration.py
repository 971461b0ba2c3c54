"""Studies on two Ray nodes of this machine that share no data cache, with results on a shared folder
and on S3 (moto): the Train workers find the study's data only through its storage.

One cluster for the module, over loopback only: a head with no CPUs and the trial slots (so every trial
driver runs there and every Train worker on the other node, the shape Ray recommends for a large
cluster's head), and a second node with 2 CPUs, each started (`ray start --block`, a process group the
test owns and stops) with its own ``HOME`` and ``MDF_SEARCH_CACHE``. The sweep runs as a client of the
cluster (`mdf-search sweep --address`) with the head's ``HOME`` and no ``MDF_SEARCH_CACHE`` to pass on, so
it prepares the data under the head's home, and a worker that opened the paths the sweep wrote instead
of fetching its own copies would leave the second node's cache empty. The processes run this checkout's
code (``PYTHONPATH``).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from moto.server import ThreadedMotoServer

from mdf_search.data import storage
from mdf_search.data.artefacts import ARTEFACTS, KINDS
from mdf_search.results.store import ResultsStore
from tests import raynodes as rn

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
FIXED = {  # the smallest trial the integration tests train (tests/cluster/test_cluster_integration.py)
    "model.preset": "tiny",
    "data.synthetic_images": 48,
    "data.synthetic_size": 128,
    "optim.micro_batch": 4,
    "optim.lr": 1.0e-3,
    "film.placement": "none",
    "run.device": "cpu",
}
AWS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


@dataclass
class Nodes:
    tmp: Path
    gcs: str
    dashboard: str
    head_env: dict[str, str]  # the head's environment (its HOME, cache, the cluster's token, AWS settings)
    worker_cache: Path  # the second node's MDF_SEARCH_CACHE
    head_home: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def client_env(self) -> dict[str, str]:
        """A client on the head: the head's HOME and settings, no MDF_SEARCH_CACHE to pass on."""
        env = dict(self.head_env)
        env.pop("MDF_SEARCH_CACHE")
        return env

    def mdf(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(rn.BIN / "mdf-search"), *args, "--address", self.gcs], env=self.client_env(),
                              cwd=self.tmp, capture_output=True, text=True, timeout=timeout)  # fmt: skip

    def python(self, code: str) -> Any:
        out = subprocess.run([sys.executable, "-c", code], env=self.client_env(), capture_output=True,
                             text=True, timeout=120, cwd=self.tmp)  # fmt: skip
        assert out.returncode == 0, out.stderr[-3000:]
        return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def moto() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                 aws_secret_access_key="testing").create_bucket(Bucket="mdf")  # fmt: skip
    yield endpoint
    server.stop()


@pytest.fixture(scope="module")
def nodes(moto: str) -> Iterator[Nodes]:
    tmp = Path(tempfile.mkdtemp(prefix="mdfn-", dir="/tmp"))  # short: AF_UNIX paths live under it
    base = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "AWS_", "MDF_SEARCH_CACHE"))}
    base.update(
        PATH=f"{rn.BIN}{os.pathsep}{base.get('PATH', '')}",
        PYTHONPATH=str(ROOT),  # this checkout's code on every node and client
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=secrets.token_hex(32),
        RAY_USAGE_STATS_ENABLED="0",
        DS_ACCELERATOR="cpu",
        OMP_NUM_THREADS="1",
        AWS_ENDPOINT_URL=moto,
        **AWS,
    )
    homes = {name: tmp / name / "home" for name in ("head", "worker")}
    caches = {name: tmp / name / "cache" for name in ("head", "worker")}
    for folder in (*homes.values(), *caches.values()):
        folder.mkdir(parents=True)
    envs = {name: {**base, "HOME": str(homes[name]), "MDF_SEARCH_CACHE": str(caches[name])} for name in homes}
    gcs_port, dash_port, client_port, *p = rn.free_ports(3 + 2 * rn.PORTS_PER_NODE)
    head_args = ["--head", f"--port={gcs_port}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash_port}",
                 f"--ray-client-server-port={client_port}", f"--temp-dir={tmp / 'h'}", "--num-cpus=0",
                 '--resources={"trial_slot": 2}', *rn.node_ports(p[:rn.PORTS_PER_NODE])]  # fmt: skip
    worker_args = [f"--address=127.0.0.1:{gcs_port}", f"--temp-dir={tmp / 'w'}", "--num-cpus=2",
                   *rn.node_ports(p[rn.PORTS_PER_NODE:])]  # fmt: skip
    n = Nodes(tmp, f"127.0.0.1:{gcs_port}", f"http://127.0.0.1:{dash_port}", envs["head"], caches["worker"],
              homes["head"])  # fmt: skip
    logs = [tmp / "head.log", tmp / "worker.log"]
    try:
        n.procs.append(rn.start_node(head_args, envs["head"], logs[0]))
        rn.wait_for(lambda: rn.dashboard_up(n.dashboard), "the head's dashboard", 120, logs)
        n.procs.append(rn.start_node(worker_args, envs["worker"], logs[1]))
        rn.wait_nodes(n.gcs, envs["head"], 2, logs)
        yield n
    finally:
        for proc in reversed(n.procs):
            rn.stop(proc)
        shutil.rmtree(tmp, ignore_errors=True)


def _space(n: Nodes, name: str, seeds: list[int], arms: list[str]) -> str:
    body: dict[str, Any] = {
        "experiment": name,
        "description": "two nodes, no shared data cache",
        "metric": "val/loss",
        "mode": "min",
        "design": "grid",
        "seeds": seeds,
        "budget": {"trials": len(seeds) * len(arms), "epochs": 1},
        "scheduler": {"type": "none"},
        "scientific": {"fusion.levels": arms},
        "nuisance": {
            "fusion.injection": {
                "choices": ["parallel"],
                "when": {"fusion.levels": {"not": "none"}},
                "otherwise": "none",
            },
        },
        "fixed": dict(FIXED),
        "resources": {"workers": 1, "concurrent_trials": 2},
    }
    if "none" in arms:
        body["baseline"] = {"fusion.levels": "none"}
    path = n.tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return str(path)


def _workers_nodes(n: Nodes) -> dict[str, list[str]]:
    """The nodes that ran Train workers, and the node without trial slots (the second one)."""
    return n.python(
        "import json; from ray.util.state import list_actors, list_nodes;"
        f"a = list_actors(address={n.dashboard!r}, detail=True, limit=10000, raise_on_missing_output=False);"
        f"ns = list_nodes(address={n.dashboard!r}, limit=100, detail=True);"
        "print(json.dumps({'workers': sorted({x.node_id for x in a if x.class_name == 'RayTrainWorker'}),"
        " 'second': sorted(x.node_id for x in ns if x.state == 'ALIVE' and not x.is_head_node)}))"
    )


def _fetched(cache: Path) -> dict[str, list[str]]:
    return {kind: sorted(p.name for p in (cache / kind).iterdir() if not p.name.startswith(".")) for kind in KINDS
            if (cache / kind).is_dir()}  # fmt: skip


def test_workers_on_a_node_without_the_data_fetch_it_from_a_shared_folder(nodes: Nodes) -> None:
    started = time.monotonic()
    storage_root = nodes.tmp / "shared" / "runs"  # one disk: shared by both nodes, unlike their caches
    result = nodes.mdf(
        "sweep", _space(nodes, "apart", [0], ["4"]), "--storage", str(storage_root), "--no-report"
    )
    print(f"two-node sweep, shared folder: {time.monotonic() - started:.1f} s")
    assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]
    trials = ResultsStore(str(storage_root / "apart")).trials()
    assert trials["status"].to_list() == ["completed"] and trials["val/loss"].null_count() == 0
    placed = _workers_nodes(nodes)
    assert placed["workers"] and placed["workers"] == placed["second"], placed
    published = storage_root / "apart" / ARTEFACTS
    fetched = _fetched(nodes.worker_cache)
    assert set(fetched) == set(KINDS), fetched  # split, cache and tokenizer: fetched by the second node
    for kind, names in fetched.items():
        assert names == sorted(p.name for p in (published / kind).iterdir()), kind
    prepared = nodes.head_home / ".cache" / "mdf-search"  # where the sweep (a client on the head) built them
    assert _fetched(prepared)["cache"] == fetched["cache"]


def test_a_study_on_s3_survives_its_driver_and_reports_from_the_uri(nodes: Nodes, moto: str) -> None:
    """sweep to s3:// (Train workers fetch the data from S3), kill the driver after the first trial,
    `resume s3://...` exits 0, and `report s3://...` has the paired comparisons with the baseline."""
    root = "s3://mdf/runs/s3study"
    space = _space(nodes, "s3study", [0, 1], ["none", "4"])
    started = time.monotonic()
    driver = subprocess.Popen([str(rn.BIN / "mdf-search"), "sweep", space, "--storage", "s3://mdf/runs", "--address",
                               nodes.gcs], env=nodes.client_env(), cwd=nodes.tmp, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    aws = {**AWS, "AWS_ENDPOINT_URL": moto}
    saved = {k: os.environ.get(k) for k in aws}
    os.environ.update(aws)
    try:

        def one_done() -> bool:
            if driver.poll() is not None:
                return True
            trials = ResultsStore(root).trials()
            done = not trials.is_empty() and (trials["status"] == "completed").any()
            return bool(done) and any(f.startswith("experiment_state-") for f in storage.files(root))

        rn.wait_for(one_done, "the first trial on S3", 600, [])
        assert driver.poll() is None, (driver.stdout.read() if driver.stdout else b"")[-4000:]
        os.killpg(driver.pid, signal.SIGKILL)  # the driver dies; the cluster and the bucket stay
        driver.wait()
        killed_at = time.monotonic() - started
        for name in ("spec.yaml", "arms.json", "provenance.json"):
            assert storage.is_file(root, name), name
        resumed = nodes.mdf("resume", root)
        print(
            f"s3 study: driver killed at {killed_at:.1f} s, resumed and reported at {time.monotonic() - started:.1f} s"
        )
        assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-5000:]
        trials = ResultsStore(root).trials()
        assert trials.height == 4 and set(trials["status"]) == {"completed"}, trials.select(
            "trial_id", "status"
        )
        # the resumed sweep's report went beside the results, on S3
        assert {"report.md", "report.html"} <= set(storage.files(root, "report"))
        report = subprocess.run([str(rn.BIN / "mdf-search"), "report", root, "--out", str(nodes.tmp / "report")],
                                env=nodes.client_env(), cwd=nodes.tmp, capture_output=True, text=True,
                                timeout=600)  # fmt: skip
        assert report.returncode == 0, (report.stdout + report.stderr)[-4000:]
        md = (nodes.tmp / "report" / "report.md").read_text()
        assert "no spec.yaml" not in md
        table = md[md.index("| arm | shared seeds | Δ val/loss") :].splitlines()
        row = next(line for line in table if line.startswith("| fusion.levels=4 |"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[1] == "2" and cells[2][0] in "+-" and float(cells[4]) <= 1.0, row  # Δ and p (paired t)
        assert f"mdf-search resume {root}" in md  # the reproduce commands name the URI
        assert _fetched(nodes.worker_cache).get("cache"), "the second node fetched the data from S3"
        placed = _workers_nodes(nodes)
        assert placed["workers"] == placed["second"], placed
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
