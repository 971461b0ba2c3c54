"""``mdf-search submit`` up to the cluster's door: what it says and how it exits when the space is
invalid or the job server cannot be reached (a real cluster: tests/cluster/test_cluster_integration.py)."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest

from tests.cli.helpers import invoke, plain

ROOT = Path(__file__).resolve().parents[2]


def test_an_invalid_space_exits_2_before_anything_is_contacted(tmp_path: Path) -> None:
    work = tmp_path / "repo"
    shutil.copytree(ROOT / "cluster", work / "cluster")
    (work / "bad.yaml").write_text(
        "experiment: bad\nmetric: val/macro_f1\nscientific: {fusion.levels: [9]}\n"
    )
    result = invoke("submit", "bad.yaml", "--address", "http://127.0.0.1:1", "--working-dir", str(work))
    assert result.exit_code == 2, result.output
    note, error = result.stderr.split("\n", 1)
    assert note.startswith("note: --storage runs (the default) is relative: it resolves on the cluster")
    error = plain(error)
    assert (
        error.startswith("error: ") and error.count("error:") == 1 and "bad.yaml: mode: is required" in error
    )
    assert "uploading" not in result.output and result.stdout == ""


def test_an_unreachable_job_server_exits_2_and_says_to_open_a_tunnel(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.chdir(ROOT)
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"http://127.0.0.1:{port}"
    result = invoke(
        "submit", "search_spaces/smoke.yaml", "--address", address, "--storage", "s3://b/x", "--fresh"
    )
    assert result.exit_code == 2, result.output
    err = plain(result.stderr)
    assert err.startswith("error: ") and "note:" not in err  # object storage: nothing to warn about
    assert "ssh -L 8265:localhost:8265" in err and "RAY_AUTH_MODE=token" in err
