"""The Optuna study on a real PostgreSQL server (Debian's packages), started on loopback by the test."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest

from mdf_search.results.store import ResultsStore
from mdf_search.search.runner import run_sweep
from mdf_search.search.space import load_spec

from .test_sweep_integration import _spec

pytestmark = pytest.mark.integration


def _bindir() -> Path | None:
    for version in sorted(Path("/usr/lib/postgresql").glob("*"), reverse=True):
        if (version / "bin" / "pg_ctl").exists():
            return version / "bin"
    return None


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    bindir = _bindir()
    if bindir is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is not installed; .ci/run installs Debian's postgresql")
        pytest.skip("PostgreSQL (Debian's postgresql package) is not installed")
    data = Path(tempfile.mkdtemp(prefix="mdf-pg-", dir="/tmp"))
    data.chmod(0o755)
    shutil.chown(data, "postgres", "postgres")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    as_postgres = ["runuser", "-u", "postgres", "--"]
    subprocess.run(
        [*as_postgres, str(bindir / "initdb"), "-D", str(data / "db"), "-A", "trust", "-U", "postgres"],
        check=True,
        capture_output=True,
    )
    options = f"-k {data} -c listen_addresses=127.0.0.1 -p {port} -c fsync=off"
    subprocess.run(
        [
            *as_postgres,
            str(bindir / "pg_ctl"),
            "-D",
            str(data / "db"),
            "-o",
            options,
            "-w",
            "start",
            "-l",
            str(data / "log"),
        ],
        check=True,
        capture_output=True,
    )
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            [*as_postgres, str(bindir / "pg_ctl"), "-D", str(data / "db"), "-m", "immediate", "stop"],
            capture_output=True,
        )
        shutil.rmtree(data, ignore_errors=True)


def test_a_study_on_postgresql_works_like_sqlite(ray_cluster: Any, postgres_url: str, tmp_path: Path) -> None:
    spec = load_spec(_spec(tmp_path, "pgstudy", study={"storage": postgres_url}))
    before = set(_live_train_controllers(timeout_s=0))  # another test's, if any: not this sweep's
    outcome = run_sweep(spec, storage=str(tmp_path / "runs"))
    assert not outcome.errors
    trials = ResultsStore(outcome.experiment_root).trials()
    assert trials.height == 2 and set(trials["status"]) == {"completed"}
    study = optuna.load_study(study_name="pgstudy", storage=postgres_url)
    assert len(study.trials) == 2
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    assert not (Path(outcome.experiment_root) / "optuna.db").exists()  # nothing fell back to SQLite
    # issue 13 (finding 11): a ray::TrainController of this sweep outlived the test session; every
    # Train controller of the sweep must be gone once it returns (the session's end checks processes)
    assert set(_live_train_controllers(timeout_s=60)) - before == set()


def _live_train_controllers(timeout_s: float) -> list[str]:
    """The ids of the session Ray's ``TrainController`` actors still alive after ``timeout_s``."""
    import time

    from ray.util.state import list_actors

    deadline = time.monotonic() + timeout_s
    while True:
        alive = [
            a.actor_id
            for a in list_actors(filters=[("class_name", "=", "TrainController"), ("state", "=", "ALIVE")])
        ]
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(1)
