"""``mdf_search.submit`` without a cluster: the job it would submit, and the errors that stop it early.
The command itself (what it prints, its exit codes) is tested in tests/cli/test_cluster.py."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest
import yaml

from mdf_search import submit
from mdf_search.submit import SubmitError, build_job, job_client, load_runtime_env, prepare_job, storage_note

ROOT = Path(__file__).resolve().parents[2]


def test_the_job_runs_sweep_on_the_space_inside_the_uploaded_working_dir() -> None:
    environ = {"AWS_ENDPOINT_URL": "http://minio:9000", "AWS_SECRET_ACCESS_KEY": "x" * 40, "HF_TOKEN": "hf_x"}
    entrypoint, env = build_job(
        "search_spaces/smoke.yaml", "s3://bucket/mdf", ROOT, ["--fresh"], environ=environ, cwd=ROOT
    )
    assert entrypoint == "mdf-search sweep search_spaces/smoke.yaml --storage s3://bucket/mdf --fresh"
    assert env["working_dir"] == str(ROOT)
    assert env["excludes"] == yaml.safe_load((ROOT / "cluster/runtime_env.yaml").read_text())["excludes"]
    # non-secret settings are forwarded; credentials never travel in a runtime env
    assert env["env_vars"]["AWS_ENDPOINT_URL"] == "http://minio:9000"
    assert "AWS_SECRET_ACCESS_KEY" not in env["env_vars"] and "HF_TOKEN" not in env["env_vars"]
    assert env["env_vars"]["PYTHONUNBUFFERED"] == "1"


def test_space_paths_resolve_against_cwd_then_working_dir(tmp_path: Path) -> None:
    absolute = str(ROOT / "search_spaces" / "hpo.yaml")
    assert build_job(absolute, None, ROOT, environ={})[0] == "mdf-search sweep search_spaces/hpo.yaml"
    # relative to the working dir when the cwd does not have it
    assert build_job("search_spaces/hpo.yaml", None, ROOT, environ={}, cwd=tmp_path)[0].endswith("hpo.yaml")
    outside = tmp_path / "space.yaml"
    outside.write_text("experiment: x\n")
    with pytest.raises(SubmitError, match="outside the working dir"):
        build_job(str(outside), None, ROOT, environ={})
    with pytest.raises(SubmitError, match="not found"):
        build_job("search_spaces/nope.yaml", None, ROOT, environ={}, cwd=ROOT)


def test_runtime_env_defaults_match_the_shipped_file_and_working_dir_is_not_overridable(
    tmp_path: Path,
) -> None:
    shipped = yaml.safe_load((ROOT / "cluster/runtime_env.yaml").read_text())
    assert list(submit.DEFAULT_EXCLUDES) == shipped["excludes"]  # the fallback stays in sync
    assert load_runtime_env(tmp_path)["excludes"] == list(submit.DEFAULT_EXCLUDES)
    (tmp_path / "cluster").mkdir()
    (tmp_path / "cluster/runtime_env.yaml").write_text("working_dir: /elsewhere\n")
    with pytest.raises(SubmitError, match="remove working_dir"):
        load_runtime_env(tmp_path)


def test_token_auth_turns_on_when_a_token_is_at_hand(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.ray/auth_token
    environ: dict[str, str] = {}
    submit.prepare_token_auth(environ)
    assert "RAY_AUTH_MODE" not in environ  # nothing to authenticate with: leave Ray's default
    environ = {"RAY_AUTH_TOKEN": "abc"}
    submit.prepare_token_auth(environ)
    assert environ["RAY_AUTH_MODE"] == "token"
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray/auth_token").write_text("abc")
    environ = {}
    submit.prepare_token_auth(environ)
    assert environ["RAY_AUTH_MODE"] == "token"
    environ = {"RAY_AUTH_MODE": "disabled"}
    submit.prepare_token_auth(environ)
    assert environ["RAY_AUTH_MODE"] == "disabled"  # an explicit choice wins
    # Ray aborts the whole process on an unreadable RAY_AUTH_TOKEN_PATH: caught here first
    with pytest.raises(SubmitError, match=r"RAY_AUTH_TOKEN_PATH=.*RAY_AUTH_MODE=token.*~/.ray/auth_token"):
        submit.prepare_token_auth({"RAY_AUTH_TOKEN_PATH": str(tmp_path / "missing")})


def test_an_invalid_space_fails_before_anything_is_contacted(tmp_path: Path) -> None:
    work = tmp_path / "repo"
    shutil.copytree(ROOT / "cluster", work / "cluster")
    (work / "bad.yaml").write_text(
        "experiment: bad\nmetric: val/macro_f1\nscientific: {fusion.levels: [9]}\n"
    )
    with pytest.raises(SubmitError, match=r"bad\.yaml: mode: is required"):
        prepare_job("bad.yaml", None, str(work))


def test_a_valid_space_becomes_the_sweep_entrypoint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # leaves the environment as it is
    monkeypatch.chdir(ROOT)
    entrypoint, env = prepare_job("search_spaces/smoke.yaml", "s3://b/x", ".", ["--no-report"])
    assert entrypoint == "mdf-search sweep search_spaces/smoke.yaml --storage s3://b/x --no-report"
    assert env["working_dir"] == str(ROOT)


def test_relative_storage_gets_a_note_a_local_path_a_mount_note_and_object_storage_none() -> None:
    assert "runs (the default) is relative" in str(storage_note(None))
    assert "--storage out is relative" in str(storage_note("out"))
    # a local path carries the data artefacts to the other nodes only if every node mounts it
    note = str(storage_note("/shared/runs"))
    assert (
        "node-local" in note and "/shared/runs/<experiment>/artefacts" in note and "every node mounts" in note
    )
    assert storage_note("s3://bucket/runs") is None and storage_note("gs://bucket/runs") is None


def test_an_unreachable_job_server_says_to_open_a_tunnel(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(SubmitError) as raised:
        job_client(f"http://127.0.0.1:{port}")
    assert "ssh -L 8265:localhost:8265" in str(raised.value) and "RAY_AUTH_MODE=token" in str(raised.value)


@pytest.mark.parametrize(
    ("address", "host", "port"),
    [
        ("http://127.0.0.1:8265", "127.0.0.1", 8265),
        ("https://ray.example.org", "ray.example.org", None),  # a proxy on 443
        ("https://ray.example.org:8443/prefix", "ray.example.org", 8443),
        ("http://[::1]:8265", "::1", 8265),
    ],
)
def test_a_job_server_address_is_http_with_a_port(address: str, host: str, port: int | None) -> None:
    assert submit.check_job_address(address) == (host, port)


@pytest.mark.parametrize(
    ("address", "says"),
    [
        ("127.0.0.1:8265", "no scheme; write the job server's address as http://127.0.0.1:8265"),
        ("http://head", "no port (HTTP would mean port 80)"),
        ("http://head:80a", "the port '80a' is not a number"),
        ("os://head:8265", "unknown scheme 'os://'"),  # Ray would import a module named os
        ("ray://head:10001", "a Ray Client address"),
        ("http://he ad:8265", "spaces"),
    ],
)
def test_a_malformed_job_server_address_names_the_option_and_the_fix(address: str, says: str) -> None:
    with pytest.raises(SubmitError) as raised:
        submit.check_job_address(address)
    assert str(raised.value).startswith(f"--address {address!r}: ") and says in str(raised.value)


def test_a_refused_loopback_port_is_reported_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(SubmitError, match=f"nothing listens on 127.0.0.1:{port}"):
        job_client(f"http://127.0.0.1:{port}")
    assert time.monotonic() - started < 5


@pytest.mark.parametrize(
    ("address", "env", "says"),
    [
        ("http://head:8265", None, "--address 'http://head:8265': a job server (dashboard) address"),
        (None, "head", "RAY_ADDRESS 'head': no port; write e.g. head:6379"),
        ("ray://head:0", None, "the port '0' is not a number from 1 to 65535; write e.g. ray://head:10001"),
        ("gcs://head:6379", None, "unknown scheme 'gcs://'"),
        (None, " head:6379", "RAY_ADDRESS ' head:6379': contains spaces"),
    ],
)
def test_a_malformed_ray_address_names_its_source_and_the_fix(
    address: str | None, env: str | None, says: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mdf_search.cluster import AddressError, ray_address

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    if env is not None:
        monkeypatch.setenv("RAY_ADDRESS", env)
    with pytest.raises(AddressError) as raised:
        ray_address(address)
    assert says in str(raised.value)


def test_good_ray_addresses_pass_and_none_means_embedded(monkeypatch: pytest.MonkeyPatch) -> None:
    from mdf_search.cluster import ray_address

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert ray_address(None) is None
    for address in ("auto", "local", "10.0.0.5:6379", "ray://head:10001", "[fe80::1]:6379"):
        assert ray_address(address) == address
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    assert ray_address(None) == "10.0.0.5:6379"
