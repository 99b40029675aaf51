"""One health check: each instance as its pod and its PostgreSQL show it.

Checks are bounded (0.5 s for the TCP handshake, 2 s connect, 2 s statement), in parallel,
so a check of a whole cluster takes at most a few seconds even when every instance hangs,
and half a second when one has vanished.
"""

from __future__ import annotations

import socket
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable

from .. import postgres
from ..builders.agent import AGENT
from .decide import CONNECTION_REFUSED, Observation

CONNECT_TIMEOUT_SECONDS = 2  # libpq's minimum
PORT_CHECK_SECONDS = 0.5
STATEMENT_TIMEOUT_MS = 2000


def pod_state(pod: dict | None) -> dict:
    """The pod fields of an Observation: exists, deleting, container running, ready."""
    if pod is None:
        return {"pod_exists": False}
    status = pod.get("status") or {}
    containers = status.get("containerStatuses") or []
    restarts = sum(int(c.get("restartCount") or 0) for c in containers)
    return {
        "pod_exists": True,
        "pod_uid": pod["metadata"].get("uid", ""),
        "agent": any(c.get("name") == AGENT for c in (pod.get("spec") or {}).get("containers") or []),
        "incarnation": f"{pod['metadata'].get('uid', '')}/{restarts}",
        "pod_deleting": bool(pod["metadata"].get("deletionTimestamp")),
        "container_running": bool(containers) and all("running" in (c.get("state") or {}) for c in containers),
        "pod_ready": any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or []),
    }


def tcp_check(host: str, port: int) -> str:
    """"" when a TCP handshake succeeds within PORT_CHECK_SECONDS, else why not.

    Done before libpq connects: libpq raises any connect_timeout below 2 s to 2 s, and the
    address of a pod that just went away answers nothing at all. A refused handshake means
    no server listens there (the postmaster is gone), which a network blip never produces."""
    try:
        socket.create_connection((host, port), timeout=PORT_CHECK_SECONDS).close()
        return ""
    except ConnectionRefusedError:
        return CONNECTION_REFUSED
    except OSError:
        return "Unreachable"


def observe_sql(name: str, host: str | None, port: int, password: str, **pod_fields) -> Observation:
    """Connect as superuser and read health(); a failure is recorded by class name only."""
    if not host:
        return Observation(name, error="NoAddress", **pod_fields)
    problem = tcp_check(host, port)
    if problem:
        return Observation(name, error=problem, **pod_fields)
    try:
        with postgres.connect(host=host, port=port, user="postgres", password=password, dbname="postgres",
                              connect_timeout=CONNECT_TIMEOUT_SECONDS,
                              statement_timeout_ms=STATEMENT_TIMEOUT_MS) as conn:
            health = postgres.health(conn)
    except postgres.Error as err:
        return Observation(name, error=type(err).__name__, **pod_fields)

    def lsn(value: str | None) -> int | None:
        return postgres.lsn_to_int(value) if value else None

    return Observation(
        name, reachable=True, in_recovery=health.in_recovery, current_lsn=lsn(health.current_lsn),
        received_lsn=lsn(health.received_lsn), replayed_lsn=lsn(health.replayed_lsn),
        streaming=health.receiver_status == "streaming", **pod_fields)


def observe_all(targets: Iterable[tuple[str, str | None, int, dict]], password: str) -> dict[str, Observation]:
    """Observe (name, host, port, pod fields) in parallel: one slow instance must not delay
    the primary's check."""
    targets = list(targets)
    if not targets:
        return {}
    with ThreadPoolExecutor(max_workers=len(targets)) as pool:
        results = pool.map(lambda t: observe_sql(t[0], t[1], t[2], password, **t[3]), targets)
        return {o.name: o for o in results}


def observation_status(observation: Observation, primary: str) -> dict:
    """What status records per instance (no error text, no address)."""
    def text(lsn: int | None) -> str | None:
        return None if lsn is None else f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"

    entry = {
        "role": "primary" if observation.name == primary else "replica",
        "reachable": observation.reachable,
        "ready": observation.pod_ready,
        "inRecovery": observation.in_recovery,
        "streaming": observation.streaming,
    }
    # Every key, None when unknown: status is merge-patched, and an absent key would keep
    # the value of an earlier check (None removes it).
    entry["currentLSN"] = text(observation.current_lsn)
    entry["receivedLSN"] = text(observation.received_lsn)
    entry["replayedLSN"] = text(observation.replayed_lsn)
    entry["error"] = observation.error or None
    return entry
