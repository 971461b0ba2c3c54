"""A study as a Ray job on a cluster: the job to submit, and Ray's job-server errors as ``SubmitError``.

A thin layer over Ray's job submission SDK (``ray.job_submission.JobSubmissionClient``), equivalent to

    ray job submit --address ADDRESS --working-dir . --runtime-env cluster/runtime_env.yaml \\
        -- mdf-search sweep SPACE --storage STORAGE

plus what the plain CLI does not do: ``prepare_job`` validates the space before anything is uploaded and
forwards a few non-secret environment variables, and a failure to reach or authenticate to the cluster
raises a ``SubmitError`` whose message says how to fix it. The job's entrypoint runs on the cluster (the
head node) inside the uploaded working dir; ``mdf-search sweep`` there joins the cluster through
``RAY_ADDRESS``, which Ray sets for job drivers (mdf_search/cluster.py). ``mdf-search submit``
(``mdf_search.cli.cluster``) calls these steps in order and prints what they return.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import sys
import time
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mdf_search.cluster import AddressError, check_port, refused, split_host_port
from mdf_search.config import ConfigError
from mdf_search.search.space import SpecError, load_spec
from mdf_search.search.validate import validate_spec
from mdf_search.yamlio import read_yaml_mapping

RUNTIME_ENV_FILE = Path("cluster") / "runtime_env.yaml"
# Used when the working dir has no cluster/runtime_env.yaml (same list as that file).
DEFAULT_EXCLUDES = (
    ".git/", "/.venv/", "/venv/", "/runs/", "/reports/", "/data/", "/.cache/", ".mypy_cache/",
    ".ruff_cache/", ".pytest_cache/", "__pycache__/", "*.parquet", "*.safetensors", "*.egg-info/",
)  # fmt: skip
# Forwarded from the submitting shell when set: configuration, never secrets. Credentials (HF_TOKEN,
# AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) come from the cluster's own environment or IAM: a runtime
# env is readable by anyone who can read the job in the dashboard.
FORWARD_ENV = (
    "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_EC2_METADATA_DISABLED", "HF_HUB_OFFLINE",
)  # fmt: skip
AUTH_HELP = (
    "The cluster uses Ray token authentication: set RAY_AUTH_MODE=token and give the cluster's token in "
    "~/.ray/auth_token (or RAY_AUTH_TOKEN_PATH=FILE, or RAY_AUTH_TOKEN). On a cluster you launched, the "
    "token is the ~/.ray/auth_token copied to its nodes (cluster/aws.yaml, gcp.yaml); on KubeRay: "
    "kubectl get secret NAME -o jsonpath='{.data.auth_token}' | base64 -d."
)


_UNREACHABLE = (
    "Is the cluster up and its job server reachable from here? It listens on the head's loopback: open a "
    "tunnel first (ssh -L 8265:localhost:8265 HEAD, `ray dashboard CLUSTER.yaml`, or kubectl port-forward "
    "svc/NAME-head-svc 8265:8265) and pass --address http://127.0.0.1:8265. If it answers but refuses you: "
    + AUTH_HELP
)


class SubmitError(Exception):
    """The job could not be submitted (exit 2); the message says how to fix it."""


def resolve_space(space: str, working_dir: Path, cwd: Path | None = None) -> Path:
    """The space as a path relative to the working dir (the entrypoint runs inside the uploaded copy)."""
    cwd = cwd or Path.cwd()
    candidates = [Path(space)] if Path(space).is_absolute() else [cwd / space, working_dir / space]
    found = next((p.resolve() for p in candidates if p.is_file()), None)
    if found is None:
        raise SubmitError(f"search space {space!r} not found (looked in {', '.join(map(str, candidates))})")
    try:
        return found.relative_to(working_dir.resolve())
    except ValueError:
        raise SubmitError(
            f"search space {found} is outside the working dir {working_dir.resolve()}: only the working dir "
            "is uploaded, so put the space inside it or pass --working-dir that contains it"
        ) from None


def load_runtime_env(working_dir: Path) -> dict[str, Any]:
    """cluster/runtime_env.yaml of the working dir (defaults when it has none), with working_dir set."""
    path = working_dir / RUNTIME_ENV_FILE
    env: dict[str, Any] = {}
    if path.is_file():
        try:  # the same size, alias, depth and encoding limits as every YAML the project reads
            env = read_yaml_mapping(path)
        except ConfigError as err:
            raise SubmitError(f"{err}; fix the Ray runtime env file") from None
    else:
        env = {"excludes": list(DEFAULT_EXCLUDES)}
    if "working_dir" in env:
        raise SubmitError(f"{path}: remove working_dir: the working dir is given by --working-dir")
    env["working_dir"] = str(working_dir.resolve())
    return env


def build_job(
    space: str,
    storage: str | None,
    working_dir: str | Path = ".",
    extra_args: list[str] | None = None,
    environ: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> tuple[str, dict[str, Any]]:
    """(entrypoint, runtime_env) for a study; pure apart from reading the space and runtime env files."""
    root = Path(working_dir).expanduser()
    if not root.is_dir():
        raise SubmitError(f"working dir {root} is not a directory")
    rel = resolve_space(space, root, cwd)
    argv = ["mdf-search", "sweep", rel.as_posix()]
    if storage:
        argv += ["--storage", storage]
    argv += list(extra_args or [])
    runtime_env = load_runtime_env(root)
    environ = os.environ if environ is None else environ
    forwarded = {k: environ[k] for k in FORWARD_ENV if environ.get(k)}
    if forwarded:
        runtime_env["env_vars"] = {**forwarded, **(runtime_env.get("env_vars") or {})}
    return shlex.join(argv), runtime_env


def prepare_token_auth(environ: MutableMapping[str, str]) -> None:
    """Client-side token auth: on whenever a token is at hand, unless RAY_AUTH_MODE says otherwise.

    Must run before Ray reads its config. A RAY_AUTH_TOKEN_PATH that cannot be read makes Ray abort the
    process, so it is checked here first.
    """
    token_path = environ.get("RAY_AUTH_TOKEN_PATH")
    token_file = Path(token_path).expanduser() if token_path else None
    if token_file and not (token_file.is_file() and token_file.read_text().strip()):
        raise SubmitError(f"RAY_AUTH_TOKEN_PATH={token_path} is not a readable, non-empty file. {AUTH_HELP}")
    if "RAY_AUTH_MODE" in environ:
        return
    default = Path("~/.ray/auth_token").expanduser()
    if environ.get("RAY_AUTH_TOKEN") or token_path or default.is_file():
        environ["RAY_AUTH_MODE"] = "token"
        if "ray._raylet" in sys.modules:  # Ray already read its config in this process: refresh it
            from ray._raylet import Config  # type: ignore[attr-defined]

            Config.initialize("")


def storage_note(storage: str | None) -> str | None:
    """A warning when ``--storage`` is relative (or not given): it would resolve on the cluster, inside
    the job's temporary working dir; and when it is a local path: each node's data cache is node-local
    (``$MDF_SEARCH_CACHE``, by default ``~/.cache/mdf-search``), so the study's data artefacts reach the
    other nodes only through that path (``data.artefacts``), which every node must then mount. None for
    an ``s3://`` / ``gs://`` URI: every node reaches it."""
    if storage is None or ("://" not in storage and not Path(storage).is_absolute()):
        return (
            f"--storage {storage or 'runs (the default)'} is relative: it resolves on the cluster, inside "
            "the job's temporary working dir; give an absolute shared path or an s3:// / gs:// URI"
        )
    if "://" not in storage:
        return (
            f"--storage {storage}: the data cache of each node is node-local ($MDF_SEARCH_CACHE, by default "
            "~/.cache/mdf-search), so Train workers on other nodes fetch the study's split, cache and "
            f"tokenizer from {storage}/<experiment>/artefacts: it must be a path every node mounts (EFS, "
            "Filestore, NFS); otherwise give an s3:// / gs:// URI"
        )
    return None


def prepare_job(
    space: str, storage: str | None, working_dir: str = ".", extra_args: list[str] | None = None
) -> tuple[str, dict[str, Any]]:
    """(entrypoint, runtime_env) of ``mdf-search sweep SPACE [--storage STORAGE] [EXTRA...]``, with token
    auth prepared and the space validated; raise ``SubmitError`` before anything is contacted. Call it
    before ``job_client``: token auth must be set before Ray reads its config."""
    prepare_token_auth(os.environ)
    entrypoint, runtime_env = build_job(space, storage, working_dir, extra_args)
    _validate_space(Path(runtime_env["working_dir"]) / shlex.split(entrypoint)[2])
    return entrypoint, runtime_env


@contextlib.contextmanager
def _reaching(address: str) -> Iterator[None]:
    """Ray's errors when reaching or submitting to the job server, as a ``SubmitError`` that says how
    to fix them."""
    from ray.exceptions import AuthenticationError  # Ray: only when a job is submitted

    try:
        yield
    except AuthenticationError as err:
        raise SubmitError(f"{address} refused the request: {str(err).splitlines()[0]}\n{AUTH_HELP}") from None
    except ConnectionError as err:
        raise SubmitError(f"{err} {_UNREACHABLE}") from None
    except (RuntimeError, ValueError) as err:  # bad address, version check, upload rejected
        raise SubmitError(f"could not submit to {address}: {err}") from None


JOB_ADDRESS_FIX = (
    "write the job server's address as http://HOST:8265 (through a tunnel: http://127.0.0.1:8265)"
)


def check_job_address(address: str) -> tuple[str, int | None]:
    """(host, port) of a job server address ``http://HOST:PORT`` or ``https://HOST[:PORT]``; raise
    ``SubmitError`` naming ``--address`` and the fix for anything else. Ray itself would read an unknown
    scheme as a Python module to import, and an ``http://`` address without a port as port 80."""
    where = f"--address {address!r}"
    if not address or any(c.isspace() for c in address) or not address.isprintable():
        raise SubmitError(f"{where}: empty, or contains spaces or control characters; {JOB_ADDRESS_FIX}")
    scheme, sep, rest = address.partition("://")
    if not sep:
        raise SubmitError(f"{where}: no scheme; {JOB_ADDRESS_FIX.replace('HOST:8265', f'{address}', 1)}")
    if scheme not in ("http", "https"):
        what = "a Ray Client address" if scheme == "ray" else f"unknown scheme {scheme + '://'!r}"
        raise SubmitError(f"{where}: {what}; submit talks to the job server over HTTP: {JOB_ADDRESS_FIX}")
    hostport = rest.split("/", 1)[0]
    host, port_text = split_host_port(hostport)
    if not host or "@" in hostport:
        raise SubmitError(f"{where}: no host name; {JOB_ADDRESS_FIX}")
    if not port_text:
        if scheme == "http":
            raise SubmitError(f"{where}: no port (HTTP would mean port 80); write e.g. http://{host}:8265")
        return host, None
    try:
        return host, check_port(port_text, where, f"{scheme}://{host}:8265")
    except AddressError as err:
        raise SubmitError(str(err)) from None


def job_client(address: str) -> Any:
    """A ``JobSubmissionClient`` for the job server at ``address`` (e.g. http://127.0.0.1:8265 through a
    tunnel); raise ``SubmitError`` when it is malformed, cannot be reached or refuses the request. A
    loopback port nothing listens on is refused at once, before Ray is asked."""
    host, port = check_job_address(address)
    if port is not None and refused(host, port):
        raise SubmitError(f"--address {address!r}: nothing listens on {host}:{port}. {_UNREACHABLE}")
    from ray.job_submission import JobSubmissionClient  # Ray: only when a job is submitted

    with _reaching(address):
        return JobSubmissionClient(address)


def submit_job(client: Any, address: str, entrypoint: str, runtime_env: dict[str, Any]) -> str:
    """Upload the working dir and submit the job; its id. Raise ``SubmitError`` as ``job_client`` does."""
    with _reaching(address):
        return str(client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env))


def follow_logs(client: Any, job_id: str, write: Callable[[str], object]) -> None:
    """Hand the job's log lines to ``write`` as they come, until the stream ends."""

    async def follow() -> None:
        async for lines in client.tail_job_logs(job_id):
            write(lines)

    asyncio.run(follow())


@dataclass(frozen=True)
class JobEnd:
    """How a job ended: its terminal status and, unless it succeeded, Ray's message."""

    status: str
    succeeded: bool
    message: str


def wait_for_end(client: Any, job_id: str) -> JobEnd:
    """The job's terminal status (the log stream can end a moment before the status is final)."""
    from ray.job_submission import JobStatus  # Ray: only when a job is submitted

    status = client.get_job_status(job_id)
    while not status.is_terminal():
        time.sleep(1)
        status = client.get_job_status(job_id)
    info = client.get_job_info(job_id)
    succeeded = status == JobStatus.SUCCEEDED
    return JobEnd(status.value, succeeded, "" if succeeded else (info.message or ""))


def _validate_space(path: Path) -> None:
    """Fail before uploading when the space is invalid (the same checks as `mdf-search validate`)."""
    try:
        problems = validate_spec(load_spec(path))
    except SpecError as err:
        raise SubmitError(str(err)) from None
    if problems:
        raise SubmitError(f"{path}: {len(problems)} problem(s):\n" + "\n".join(f"  - {p}" for p in problems))
