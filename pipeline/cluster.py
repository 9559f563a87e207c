"""Which Ray cluster a driver uses, chosen explicitly and reached within a bounded time.

A plain `ray.init()` joins whatever cluster Ray's current-cluster file names, which on a shared
machine may be somebody else's; and against an address where nothing answers it retries for
many minutes. Here a driver starts its own local Ray unless it is told to join one (an address,
`auto` for the cluster `ray start` left on this machine, or RAY_ADDRESS, which Ray sets inside
a Ray job), logs which cluster it uses, and raises InfrastructureError when the cluster does
not answer within the timeout.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import ray

from .errors import InfrastructureError
from .redaction import get_logger

logger = get_logger(__name__)

LOCAL = "local"
AUTO = "auto"
RETRY_S = 1.0  # between attempts to reach an address that refuses connections


def connect(address: str | None = None, timeout_s: float = 60.0) -> bool:
    """Join the cluster at `address` (else RAY_ADDRESS), or start a local one for this process.

    Returns True when this call initialised Ray (so the caller shuts it down again), False when
    the process was already connected (a test, a notebook, an application using Ray itself).
    """
    if ray.is_initialized():
        logger.info("using the Ray cluster this process is already connected to (%s)", _gcs_address())
        return False
    target = address or os.environ.get("RAY_ADDRESS") or LOCAL
    if target == LOCAL:
        _init(LOCAL, "start a local Ray cluster")
        logger.info(
            "started a local Ray cluster for this run at %s (%s); to join a running cluster instead, "
            "pass --address HOST:PORT (or auto) or set RAY_ADDRESS",
            _gcs_address(),
            _describe_resources(),
        )
        return True
    if "://" not in target:  # a Ray Client address (ray://) has no GCS to check first
        _check_reachable(target, timeout_s)
    _init(target, f"connect to Ray at {target}")
    logger.info("joined the Ray cluster at %s (%s)", _gcs_address(), _describe_resources())
    return True


def _check_reachable(target: str, timeout_s: float) -> None:
    """Wait up to `timeout_s` until the cluster's GCS accepts connections and answers."""
    from ray._private.services import canonicalize_bootstrap_address

    deadline = time.monotonic() + timeout_s
    try:
        gcs = canonicalize_bootstrap_address(target)  # `auto`: the cluster named by Ray's current-cluster file
    except Exception as exc:
        raise InfrastructureError(f"cannot find the Ray cluster {target!r}: {exc}") from None
    if gcs is None:
        raise InfrastructureError(f"cannot find the Ray cluster {target!r}: no cluster is running on this machine")
    host, _, port = gcs.rpartition(":")
    while True:  # a head node may still be starting: knock until it opens
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=_left(deadline, 5.0)):
                break
        except (OSError, ValueError) as exc:
            if time.monotonic() + RETRY_S >= deadline:
                raise InfrastructureError(f"cannot reach Ray at {target} within {timeout_s:g}s: {exc}") from None
        time.sleep(RETRY_S)
    _ping_gcs(target, gcs, deadline, timeout_s)


def _ping_gcs(target: str, gcs: str, deadline: float, timeout_s: float) -> None:
    """Something listens; ask it for the cluster id as ray.init would, but give up at the deadline
    (Ray's client waits about 40 s per attempt, and ray.init retries for minutes). The question is
    asked from a child process: an abandoned Ray client thread can crash this process at exit."""
    probe = "import sys, ray._raylet; ray._raylet.GcsClient(address=sys.argv[1])"
    try:
        done = subprocess.run(
            [sys.executable, "-c", probe, gcs], capture_output=True, text=True, timeout=_left(deadline)
        )
    except subprocess.TimeoutExpired:
        raise InfrastructureError(
            f"Ray at {target} ({gcs}) accepts connections but did not answer within {timeout_s:g}s"
        ) from None
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        raise InfrastructureError(f"cannot connect to Ray at {target}: {lines[-1] if lines else done.returncode}")


def _init(address: str, what: str) -> None:
    try:
        ray.init(address=address, log_to_driver=True)
    except Exception as exc:
        raise InfrastructureError(f"cannot {what}: {type(exc).__name__}: {exc}") from exc


def _left(deadline: float, cap: float | None = None) -> float:
    left = max(0.1, deadline - time.monotonic())
    return min(left, cap) if cap is not None else left


def _describe_resources() -> str:
    resources = ray.cluster_resources()
    nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    return f"{nodes} node(s), {resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} GPUs"


def _gcs_address() -> str:
    try:
        return ray.get_runtime_context().gcs_address
    except Exception:  # a Ray Client connection has no GCS address of its own
        return "(Ray Client)"
