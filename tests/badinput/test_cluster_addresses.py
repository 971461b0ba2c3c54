"""Bad cluster addresses: ``submit --address`` (a job server, http://HOST:PORT) and ``train --address`` or
``RAY_ADDRESS`` (a Ray cluster, HOST:PORT or ray://HOST:PORT). Each exits 2 at once, naming the option or
the variable and the fix, before anything is uploaded, prepared or started."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.badinput.harness import Case, check, ids

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:  # a loopback port nothing listens on
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


PORT = _free_port()


def _space(tmp: Path) -> None:
    (tmp / "space.yaml").write_text((ROOT / "search_spaces" / "smoke.yaml").read_text())


def submit(id: str, address: str, *expect: str) -> Case:
    return Case(
        id=f"submit-{id}",
        args=("submit", "space.yaml", "--address", address, "--storage", "s3://b/x"),
        expect=(r"--address", *expect),
        setup=_space,
        env={"RAY_AUTH_MODE": "disabled"},
    )


def train(id: str, address: str, *expect: str, env: bool = False) -> Case:
    return Case(
        id=f"train-{id}" + ("-from-env" if env else ""),
        args=("train", "t.yaml") if env else ("train", "t.yaml", "--address", address),
        expect=(r"RAY_ADDRESS" if env else r"--address", *expect),
        env={"RAY_ADDRESS": address} if env else {},
        setup=lambda tmp: (tmp / "t.yaml").write_text("optim.epochs: 1\n"),
    )


JOB_FIX = r"http://"
RAY_FIX = r"HOST:6379|:6379|:10001"
CASES: list[Case] = [
    submit("no-scheme", "127.0.0.1:8265", r"no scheme", r"http://127\.0\.0\.1:8265"),
    submit("http-without-port", "http://head", r"no port", r"http://head:8265"),
    submit(
        "port-not-a-number", "http://head:eighty", r"the port 'eighty' is not a number", r"http://head:8265"
    ),
    submit("port-zero", "http://head:0", r"the port '0' is not a number from 1 to 65535"),
    submit("port-too-big", "http://head:70000", r"the port '70000'", r"1 to 65535"),
    submit("space-inside", "http://head :8265", r"spaces", JOB_FIX),
    submit("trailing-newline", "http://head:8265\n", r"control characters|spaces", JOB_FIX),
    submit("unknown-scheme", "os://head:8265", r"unknown scheme 'os://'", JOB_FIX),
    submit("ray-client-scheme", "ray://head:10001", r"a Ray Client address", JOB_FIX),
    submit("no-host", "http://:8265", r"no host name", JOB_FIX),
    submit("empty", "", r"empty", JOB_FIX),
    submit(
        "refused-loopback-port",
        f"http://127.0.0.1:{PORT}",
        rf"nothing listens on 127\.0\.0\.1:{PORT}",
        r"ssh -L 8265",
    ),
    submit("refused-localhost-port", f"http://localhost:{PORT}", r"nothing listens", r"open a tunnel"),
    train(
        "job-server-address",
        "http://127.0.0.1:8265",
        r"a job server \(dashboard\) address",
        r"mdf-search submit",
    ),
    train("unknown-scheme", "tcp://head:6379", r"unknown scheme 'tcp://'", RAY_FIX),
    train("no-port", "head", r"no port", r"head:6379"),
    train("bad-port", "head:63a9", r"the port '63a9'", r"head:6379"),
    train("port-too-big", "ray://head:99999", r"the port '99999'", r"ray://head:10001"),
    train("spaces", "head: 6379", r"spaces", RAY_FIX),
    train("no-host", ":6379", r"no host name", RAY_FIX),
    train(
        "refused-loopback-port",
        f"127.0.0.1:{PORT}",
        rf"nothing listens on 127\.0\.0\.1:{PORT}",
        r"ray start --head",
    ),
    train("refused-loopback-port", f"127.0.0.1:{PORT}", r"nothing listens", r"unset RAY_ADDRESS", env=True),
    train("job-server-address", "http://head:8265", r"a job server", r"mdf-search submit", env=True),
    train("no-port", "10.0.0.5", r"no port", r"10\.0\.0\.5:6379", env=True),
]


@pytest.mark.parametrize("case", CASES, ids=ids(CASES))
def test_bad_input(case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    check(case, tmp_path, monkeypatch)
