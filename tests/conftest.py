"""Shared fixtures. Libraries that write outside the repo (Ray, DeepSpeed's extension cache, HF) are
pointed at directories the test session owns before anything imports them."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

_SESSION_TMP = Path(tempfile.mkdtemp(prefix="mdf-tests-"))
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(_SESSION_TMP / "torch_extensions"))
os.environ.setdefault("HF_HOME", str(_SESSION_TMP / "hf"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_TMPDIR", str(_SESSION_TMP / "ray"))
os.environ.setdefault("DS_ACCELERATOR", "cpu")


import pytest  # noqa: E402

from mdf_search.cluster import ClusterInfo, connect, shutdown  # noqa: E402  (Ray loads on connect only)


@pytest.fixture(scope="session")
def session_tmp() -> Path:
    return _SESSION_TMP


@pytest.fixture(scope="session")
def ray_cluster(session_tmp: Path) -> Iterator[ClusterInfo]:
    """One embedded Ray for the whole session (start-up ~6 s), with a temp dir the tests own; stopped at the end."""
    os.environ["MDF_SEARCH_CACHE"] = str(session_tmp / "cache")
    # AF_UNIX socket paths must stay short: a fresh dir directly under /tmp.
    temp_dir = tempfile.mkdtemp(prefix="mdfray-", dir="/tmp")
    info = connect(temp_dir=temp_dir, trial_slots=2)
    yield info
    shutdown()
