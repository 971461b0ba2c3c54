"""``mdf-search submit``: a study as a Ray job on a remote cluster, its logs followed here.

Submitting is about reaching a cluster (its job server, token authentication, a tunnel), not about the
study itself, which ``cli.study`` validates and sweeps in this process; ``mdf_search.submit`` builds the
job and translates Ray's errors into a ``SubmitError`` that says how to fix them.

Exit status: 0 when the job SUCCEEDED, 1 when it FAILED or was STOPPED, 2 when it could not be submitted,
130 when you stop following (the job keeps running).
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from mdf_search.cli.console import err_console, print_error
from mdf_search.submit import (
    SubmitError,
    check_job_address,
    follow_logs,
    job_client,
    prepare_job,
    storage_note,
    submit_job,
    wait_for_end,
)

app = typer.Typer()


def _say(message: str) -> None:
    err_console.print(message, markup=False, highlight=False, soft_wrap=True)


def _write_log(lines: str) -> None:
    sys.stdout.write(lines)
    sys.stdout.flush()


def submit_command(
    space: str,
    address: str,
    storage: str | None,
    working_dir: str = ".",
    extra_args: list[str] | None = None,
) -> int:
    """Submit ``mdf-search sweep SPACE [--storage STORAGE] [EXTRA...]`` to the Ray cluster at ``address``
    (the job server, e.g. http://127.0.0.1:8265 through a tunnel), stream its logs, return the exit code."""
    try:
        check_job_address(address)
    except SubmitError as err:
        print_error(str(err))
        return 2
    note = storage_note(storage)
    if note:
        _say(f"note: {note}")
    try:
        entrypoint, runtime_env = prepare_job(space, storage, working_dir, extra_args)
        client = job_client(address)
        _say(f"uploading {runtime_env['working_dir']} and submitting: {entrypoint}")
        job_id = submit_job(client, address, entrypoint, runtime_env)
    except SubmitError as err:
        print_error(str(err))
        return 2
    _say(
        f"submitted job {job_id}; follow: ray job logs -f {job_id} --address {address}; "
        f"stop: ray job stop {job_id} --address {address}"
    )
    try:
        follow_logs(client, job_id, _write_log)
    except KeyboardInterrupt:
        _say(f"\nstopped following; job {job_id} keeps running (ray job stop {job_id})")
        return 130
    end = wait_for_end(client, job_id)
    _say(f"job {job_id} {end.status}" + (f": {end.message}" if end.message else ""))
    return 0 if end.succeeded else 1


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def submit(
    ctx: typer.Context,
    space: Annotated[str, typer.Argument(help="search-space YAML, relative to the working dir")],
    address: Annotated[str, typer.Option(help="the cluster's job server, e.g. http://127.0.0.1:8265")],
    storage: Annotated[str | None, typer.Option(help="results root on shared or object storage")] = None,
    working_dir: Annotated[str, typer.Option(help="uploaded with cluster/runtime_env.yaml's excludes")] = ".",
) -> None:
    """Submit a study as a Ray job, stream its logs, and exit with the job's status (extra args go to sweep)."""
    raise typer.Exit(
        submit_command(space, address, storage, working_dir=working_dir, extra_args=list(ctx.args))
    )
