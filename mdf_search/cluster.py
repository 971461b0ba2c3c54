"""Connecting to Ray: an embedded local instance by default, a cluster when an address is given.

- no address and no ``RAY_ADDRESS``: start a local Ray with this machine's CPUs/GPUs, a temp dir the
  caller may choose (tests own theirs), and the ``trial_slot`` custom resource that places trial drivers
  and caps concurrent trials (docs/stack-facts.md: a driver cannot ask for 0 CPUs);
- ``--address`` / ``RAY_ADDRESS`` (``ray job submit`` sets it): connect; never pass ``num_cpus`` then.

Ray 2.60 local clusters use token auth by default: a client outside the job needs ``RAY_AUTH_MODE=token``.

The live view owns the terminal (:func:`connect`): unless ``MDF_SEARCH_VERBOSE=1``, Ray's start-up notices
(its banner, the token notice) are not printed, worker output reaches the driver only when it carries an
error (a traceback, an exception line, an ERROR record: what ``ray job logs`` must keep), and Tune prints
no configuration box or TensorBoard hint. Tune's incidental CSV/JSON/TensorBoard files are off unless the
study asks for tracking (``TUNE_DISABLE_AUTO_CALLBACK_LOGGERS``).

:func:`ray_address` checks the address before Ray is imported: ``auto``, ``local``, ``HOST:PORT`` (the
cluster's GCS, e.g. ``10.0.0.5:6379``) or ``ray://HOST:PORT`` (Ray Client); a malformed one, a job
server's ``http://`` address, or a loopback port nothing listens on is an :class:`AddressError` that names
where the address came from (``--address`` or ``RAY_ADDRESS``) and the fix.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import re
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)
TRIAL_SLOT = "trial_slot"
NO_PREEMPTION_WATCHER = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"
GPU_MEM_GB = 80.0  # memory per GPU assumed when none is given: an A100/H100 80 GB
VERBOSE_ENV = "MDF_SEARCH_VERBOSE"  # 1: Ray's notices, all worker output and Tune's own output again
# Tune's output engine: the new one (the default) prints its configuration box and TensorBoard hint even at
# verbose=0; the classic one prints nothing at verbose=0.
TUNE_NEW_OUTPUT = "RAY_AIR_NEW_OUTPUT"
TUNE_AUTO_LOGGERS_OFF = "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"  # no incidental CSV/JSON/TensorBoard files
TUNE_ANALYSIS_LOG = "ray.tune.analysis.experiment_analysis"
# A worker log batch that reaches the driver when quiet: a traceback, an exception line, an ERROR record.
WORKER_ERROR = re.compile(
    r"Traceback \(most recent call last\)"  # a traceback's first line
    r"|^\s*[\w.]*(?:Error|Exception|Interrupt|Exit)(?:\([\w.]*\))?:"  # and its last: ValueError: ...
    r"|\b(?:ERROR|CRITICAL|FATAL)\b"  # a logging record at error level, Ray's own error lines
)
RAY_PRINT_LOGS = "ray_print_logs"  # the name ray.init gives its worker-output handler (Ray 2.60)
RAY_NOTICES = (  # (logger, message start) of a warning ray.init prints that is only a notice (Ray 2.60)
    ("ray._private.authentication.authentication_token_setup", "Token authentication is enabled for this"),
)


def verbose() -> bool:
    """``MDF_SEARCH_VERBOSE`` is set to anything but empty or 0: Ray and Tune print as they would alone."""
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def quiet_tune() -> None:
    """Tune's incidental logger callbacks off (a ``tracking:`` block adds its own), and unless verbose its
    configuration box and TensorBoard hint too; a variable the user set is left as set.

    Without those files ``Tuner.fit`` warns, when it ends, that it found no result.json or progress.csv
    (its ``ResultGrid`` data frames, which nothing here reads); that warning is off with them."""
    os.environ.setdefault(TUNE_AUTO_LOGGERS_OFF, "1")
    if os.environ[TUNE_AUTO_LOGGERS_OFF] == "1":
        logging.getLogger(TUNE_ANALYSIS_LOG).setLevel(logging.ERROR)
    if not verbose():
        os.environ.setdefault(TUNE_NEW_OUTPUT, "0")


def worker_env() -> dict[str, str]:
    """Environment every Ray Train worker gets: CPU DeepSpeed where there is no GPU, caches we own."""
    env = {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "TOKENIZERS_PARALLELISM": "false"}
    for key in (
        "TORCH_EXTENSIONS_DIR",
        "MDF_SEARCH_FEATURE_REUSE",
        "HF_HOME",
        "HF_HUB_OFFLINE",
        "DS_ACCELERATOR",
        "AWS_ENDPOINT_URL",
        "AWS_DEFAULT_REGION",
        "AWS_EC2_METADATA_DISABLED",
    ):
        if key in os.environ:
            env[key] = os.environ[key]
    return env


PROBE_TIMEOUT_S = 2.0  # a loopback port is probed this long before Ray would wait on it


class AddressError(ValueError):
    """A Ray address that cannot be right; the message names its source and the fix."""


def split_host_port(hostport: str) -> tuple[str, str]:
    """``HOST:PORT`` or ``[V6]:PORT`` as (host, port text); the port is ``""`` when there is none."""
    if hostport.startswith("["):
        host, _, rest = hostport[1:].partition("]")
        return host, rest[1:] if rest.startswith(":") else rest
    if hostport.count(":") > 1:  # a bare IPv6 address: no port
        return hostport, ""
    host, _, port = hostport.partition(":")
    return host, port


def check_port(port: str, where: str, example: str) -> int:
    if not port.isascii() or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise AddressError(
            f"{where}: the port {port!r} is not a number from 1 to 65535; write e.g. {example}"
        )
    return int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def refused(host: str, port: int) -> bool:
    """Nothing listens on this loopback port (answered at once; other hosts are not probed)."""
    if not is_loopback(host):
        return False
    try:
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S):
            return False
    except ConnectionRefusedError:
        return True
    except OSError:
        return False


def ray_address(address: str | None = None, *, probe: bool = True) -> str | None:
    """The Ray address to join, from ``address`` (``--address``) or else ``RAY_ADDRESS``; None: start an
    embedded Ray. Raise :class:`AddressError` for one that cannot be right, before Ray starts."""
    where = "--address"
    if not address and os.environ.get("RAY_ADDRESS"):
        address, where = os.environ["RAY_ADDRESS"], "RAY_ADDRESS"
    if not address:
        return None
    where = f"{where} {address!r}"
    fix = "give the cluster's GCS address HOST:6379 (`ray status` on the head shows it) or ray://HOST:10001"
    if address != address.strip() or any(c.isspace() for c in address) or not address.isprintable():
        raise AddressError(f"{where}: contains spaces or control characters; {fix}")
    if address in ("auto", "local"):
        return address
    scheme, sep, rest = address.partition("://")
    if sep and scheme in ("http", "https"):
        raise AddressError(
            f"{where}: a job server (dashboard) address, not a Ray cluster's; submit the study there with "
            f"`mdf-search submit SPACE --address {address}`, or {fix}"
        )
    if sep and scheme != "ray":
        raise AddressError(f"{where}: unknown scheme {scheme + '://'!r}; {fix}")
    host, port_text = split_host_port(rest if sep else address)
    example = f"{'ray://' if sep else ''}{host or 'HOST'}:{10001 if sep else 6379}"
    if not host or "/" in host or "@" in host:
        raise AddressError(f"{where}: no host name; {fix}")
    if not port_text:
        raise AddressError(f"{where}: no port; write e.g. {example}")
    port = check_port(port_text, where, example)
    if probe and refused(host, port):
        raise AddressError(
            f"{where}: nothing listens on {host}:{port}; start Ray there (`ray start --head --port {port}`), "
            f"or unset {'RAY_ADDRESS' if where.startswith('RAY') else '--address'} to run on an embedded Ray"
        )
    return address


@dataclass(frozen=True)
class ClusterInfo:
    address: str
    embedded: bool
    cpus: float
    gpus: float
    trial_slots: float


def connect(
    address: str | None = None,
    *,
    trial_slots: int | str | None = None,
    temp_dir: str | None = None,
    num_cpus: int | None = None,
) -> ClusterInfo:
    """Start or join Ray (idempotent within a process).

    ``trial_slots`` (an embedded Ray's ``trial_slot`` resources): a number; ``"auto"``: one per CPU, the
    most trials that can ever run at once (the sweep caps them at what ``concurrent_trials: auto``
    resolves to); None: half the CPUs."""
    import ray

    address = ray_address(address, probe=not ray.is_initialized())
    embedded = address is None
    quiet_tune()
    if not ray.is_initialized():
        # Ray's notices and worker output (every report, DeepSpeed's warnings) would drown the live view;
        # they stay in Ray's session logs. Worker errors still reach the driver (``ray job logs``).
        loud = verbose()
        kwargs: dict[str, Any] = {"log_to_driver": True, "configure_logging": loud}
        if loud:
            kwargs["logging_level"] = logging.INFO
        if embedded:
            import torch

            if not torch.cuda.is_available():
                os.environ.setdefault("DS_ACCELERATOR", "cpu")
            # One local node cannot be preempted while its trials survive: no preemption watcher actor
            # per Train run (Ray Train propagates the variable from the trial to its controller).
            os.environ.setdefault(NO_PREEMPTION_WATCHER, "0")
            cpus = num_cpus or os.cpu_count() or 1
            slots = cpus if trial_slots == "auto" else int(trial_slots or max(1, cpus // 2))
            kwargs.update(
                num_cpus=cpus,
                resources={TRIAL_SLOT: float(slots)},
                include_dashboard=True,  # the state API: without it stopped trials leak placement groups
                dashboard_host="127.0.0.1",
                runtime_env={"worker_process_setup_hook": f"{__name__}.pin_ray_address"},
                _temp_dir=temp_dir or os.environ.get("RAY_TMPDIR"),
            )
            if kwargs["_temp_dir"] is None:
                del kwargs["_temp_dir"]
        else:
            kwargs["address"] = address
        with contextlib.nullcontext() if loud else _ray_notices_off():
            ray.init(**kwargs)
        if not loud:
            worker_errors_only()
    resources = ray.cluster_resources()
    info = ClusterInfo(
        address=address or "embedded",
        embedded=embedded,
        cpus=resources.get("CPU", 0.0),
        gpus=resources.get("GPU", 0.0),
        trial_slots=resources.get(TRIAL_SLOT, 0.0),
    )
    log.info("ray: %s", info)
    return info


class _DropNotice(logging.Filter):
    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)


@contextlib.contextmanager
def _ray_notices_off() -> Iterator[None]:
    """While ``ray.init`` starts or joins a cluster, Ray's start-up notices are dropped: its banner is
    info, which ``configure_logging=False`` already leaves unprinted, and the token-authentication notice,
    a warning that says only what the default is (``RAY_NOTICES``). Real warnings (token auth *disabled*,
    a small /dev/shm) still print."""
    filters = [(logging.getLogger(name), _DropNotice(prefix)) for name, prefix in RAY_NOTICES]
    for logger, notice in filters:
        logger.addFilter(notice)
    try:
        yield
    finally:
        for logger, notice in filters:
            logger.removeFilter(notice)


def error_lines(lines: list[str]) -> list[str]:
    """The lines from the first error line to the last (a whole traceback, an ERROR record and the
    traceback under it); none when no line is one."""
    hits = [i for i, line in enumerate(lines) if WORKER_ERROR.search(str(line))]
    return lines[hits[0] : hits[-1] + 1] if hits else []


def keeps_errors(handler: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
    """``handler`` (Ray's printer of worker output) given only the error lines of a worker's stderr."""

    def handle(batch: dict[str, Any]) -> None:
        lines = error_lines(list(batch.get("lines", ()))) if batch.get("is_err") else []
        if lines:
            handler({**batch, "lines": lines})

    return handle


def worker_errors_only() -> None:
    """After ``ray.init(log_to_driver=True)``: worker output reaches this process only when it carries an
    error. Ray 2.60 has no public filter, so its printer is wrapped in the dispatcher it registered with;
    where that is missing (another Ray), worker output is printed as Ray prints it."""
    try:
        from ray._private.worker import global_worker_stdstream_dispatcher as dispatcher
    except ImportError:
        return
    handlers = dict(getattr(dispatcher, "handlers", ()))
    printer = handlers.get(RAY_PRINT_LOGS)
    if printer is None or getattr(printer, "__wrapped_errors_only__", False):
        return
    quiet = keeps_errors(printer)
    quiet.__wrapped_errors_only__ = True  # type: ignore[attr-defined]
    dispatcher.remove_handler(RAY_PRINT_LOGS)
    dispatcher.add_handler(RAY_PRINT_LOGS, quiet)  # the same name: ray.shutdown removes it


def pin_ray_address() -> None:
    """Worker process setup hook of an embedded Ray: this process's state API calls go to its own Ray.

    Ray Train's ``PlacementGroupCleaner`` (which removes the placement group of a Train run whose
    controller died, e.g. a trial ASHA stopped) asks the state API with no address; with two Ray
    instances on one machine (two sweeps, or a sweep beside a test run) that raises "Found multiple
    active Ray instances", the cleaner dies, and the stopped trial's CPUs stay held: the next trial
    waits forever. ``RAY_ADDRESS`` names the right one."""
    import ray

    os.environ.setdefault("RAY_ADDRESS", ray.get_runtime_context().gcs_address)


def shutdown() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()
