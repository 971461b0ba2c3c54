"""Shared fixtures. Libraries that write outside the repo (Ray, DeepSpeed's extension cache, HF) are
pointed at directories the test session owns before anything imports them.

The session ends by checking that no process it started is left (:func:`_no_process_left`): every
process it started carries :data:`SESSION_MARK` in its environment (Ray's daemons and workers, a
PostgreSQL server, a ``ray start`` node, a sweep driver), so one that outlived its parent and was
re-parented is found too. Any such process still alive after the session's Ray is shut down fails the
session by name, and is then killed by its PID.
"""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

_SESSION_TMP = Path(tempfile.mkdtemp(prefix="mdf-tests-"))
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(_SESSION_TMP / "torch_extensions"))
os.environ.setdefault("HF_HOME", str(_SESSION_TMP / "hf"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_TMPDIR", str(_SESSION_TMP / "ray"))
os.environ.setdefault("DS_ACCELERATOR", "cpu")
SESSION_MARK = "MDF_TEST_SESSION"
os.environ[SESSION_MARK] = uuid.uuid4().hex  # inherited by every process the session starts


import psutil  # noqa: E402
import pytest  # noqa: E402

from mdf_search.cluster import ClusterInfo, connect, shutdown  # noqa: E402  (Ray loads on connect only)

_BEFORE = {p.pid: p.create_time() for p in psutil.process_iter()}  # what ran before the session
LEFT_GRACE_S = 20.0  # Ray's processes take a few seconds to exit after ray.shutdown()


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


def session_processes() -> list[psutil.Process]:
    """Live processes this session started: descendants of this process, and any process (a re-parented
    orphan included) whose environment carries this session's mark. Zombies are reaped, not listed."""
    me = psutil.Process()
    mark = f"{SESSION_MARK}={os.environ[SESSION_MARK]}"
    found: dict[int, psutil.Process] = {p.pid: p for p in me.children(recursive=True) if not _own_helper(p)}
    for proc in psutil.process_iter():
        if proc.pid == me.pid or proc.pid in found or _own_helper(proc):
            continue
        try:
            if _BEFORE.get(proc.pid) == proc.create_time():
                continue
            with open(f"/proc/{proc.pid}/environ", "rb") as handle:
                if mark.encode() in handle.read().split(b"\0"):
                    found[proc.pid] = proc
        except (OSError, psutil.Error):
            continue
    alive = []
    for proc in found.values():
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                if proc.ppid() == me.pid:
                    os.waitpid(proc.pid, os.WNOHANG)
                continue
            alive.append(proc)
        except (psutil.Error, ChildProcessError):
            continue
    return alive


def _own_helper(proc: psutil.Process) -> bool:
    """A helper of this interpreter that ends with it (multiprocessing's resource tracker), not a leak."""
    try:
        return proc.ppid() == os.getpid() and "multiprocessing.resource_tracker" in " ".join(proc.cmdline())
    except psutil.Error:
        return False


def _describe(proc: psutil.Process) -> str:
    try:
        cmd = " ".join(proc.cmdline())[:160] or proc.name()
        return f"pid {proc.pid} (parent {proc.ppid()}): {cmd}"
    except psutil.Error:
        return f"pid {proc.pid}"


def left_processes(grace_s: float = LEFT_GRACE_S) -> list[str]:
    """Describe the session's processes still alive after ``grace_s``, then SIGKILL each by its PID."""
    deadline = time.monotonic() + grace_s
    left = session_processes()
    while left and time.monotonic() < deadline:
        time.sleep(0.5)
        left = session_processes()
    described = [_describe(p) for p in left]
    for proc in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
    return described


@pytest.fixture(scope="session", autouse=True)
def _no_process_left() -> Iterator[None]:
    """Set up first, torn down last (after ``ray_cluster``): the session fails if it leaves a process."""
    yield
    shutdown()  # a Ray a test started in this process (e.g. a CLI command run in-process)
    left = left_processes()
    if left:
        pytest.fail(
            f"{len(left)} process(es) started by the test session outlived it (now killed):\n  "
            + "\n  ".join(left),
            pytrace=False,
        )
