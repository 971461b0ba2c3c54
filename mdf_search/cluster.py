"""Connecting to Ray: an embedded local instance by default, a cluster when an address is given.

- no address and no ``RAY_ADDRESS``: start a local Ray with this machine's CPUs/GPUs, a temp dir the
  caller may choose (tests own theirs), and the ``trial_slot`` custom resource that places trial drivers
  and caps concurrent trials (docs/stack-facts.md: a driver cannot ask for 0 CPUs);
- ``--address`` / ``RAY_ADDRESS`` (``ray job submit`` sets it): connect; never pass ``num_cpus`` then.

Ray 2.60 local clusters use token auth by default: a client outside the job needs ``RAY_AUTH_MODE=token``.

:func:`ray_address` checks the address before Ray is imported: ``auto``, ``local``, ``HOST:PORT`` (the
cluster's GCS, e.g. ``10.0.0.5:6379``) or ``ray://HOST:PORT`` (Ray Client); a malformed one, a job
server's ``http://`` address, or a loopback port nothing listens on is an :class:`AddressError` that names
where the address came from (``--address`` or ``RAY_ADDRESS``) and the fix.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)
TRIAL_SLOT = "trial_slot"
NO_PREEMPTION_WATCHER = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"
GPU_MEM_GB = 80.0  # memory per GPU assumed when none is given: an A100/H100 80 GB


def worker_env() -> dict[str, str]:
    """Environment every Ray Train worker gets: CPU DeepSpeed where there is no GPU, caches we own."""
    env = {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "TOKENIZERS_PARALLELISM": "false"}
    for key in (
        "TORCH_EXTENSIONS_DIR",
        "MDF_SEARCH_CACHE",
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
    if not ray.is_initialized():
        # Worker output (every report, DeepSpeed's warnings) would drown the leaderboard; it stays in Ray's
        # session logs. MDF_SEARCH_VERBOSE=1 streams it to the terminal again.
        verbose = os.environ.get("MDF_SEARCH_VERBOSE", "") not in ("", "0")
        kwargs: dict[str, Any] = {"log_to_driver": verbose, "configure_logging": False}
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
        ray.init(**kwargs)
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
