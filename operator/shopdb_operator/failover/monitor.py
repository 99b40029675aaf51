"""One health check: each instance as its pod and its PostgreSQL show it.

Checks are bounded (0.5 s for the TCP handshake, 2 s connect, 2 s statement), in parallel,
so a check of a whole cluster takes at most a few seconds even when every instance hangs,
and half a second when one has vanished.

Given the cluster's InstanceConnections (connections.py), a check reuses the connection the
previous check left open, under the same bounds: its query must be acknowledged by the
peer's TCP stack within 0.5 s and answered within 2 s, and a kept connection that fails at
once (the server restarted or stopped) is closed and the check made afresh, so each check
reports what a fresh connection would have.
"""

from __future__ import annotations

import asyncio
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable

from .. import postgres
from ..builders.agent import AGENT
from .connections import (HEALTH_SQL, InstanceConnections, Target, Unreachable, bounded_row, bounded_row_async,
                          close_quietly)
from .decide import CONNECTION_REFUSED, SHUTTING_DOWN, Observation

CONNECT_TIMEOUT_SECONDS = 2  # libpq's minimum
PORT_CHECK_SECONDS = 0.5
STATEMENT_TIMEOUT_MS = 2000
ANSWER_SECONDS = CONNECT_TIMEOUT_SECONDS  # a kept connection's query: as long as a fresh connection may take
TIMEOUT = postgres.psycopg.errors.ConnectionTimeout  # no answer within ANSWER_SECONDS (a hung server)
# A fresh connection's query: the server's statement_timeout answers first (QueryCanceled);
# this only ends the wait on a server that stopped answering right after the handshake.
FRESH_ANSWER_SECONDS = STATEMENT_TIMEOUT_MS / 1000 + 1
# A kept connection's libpq and server session: the kernel gives up on unacknowledged data
# within the check's bound, and both sides notice a peer gone while idle between checks.
KEEPALIVES = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 3, "keepalives_count": 3,
              "tcp_user_timeout": CONNECT_TIMEOUT_SECONDS * 1000}
SESSION_OPTIONS = (f"-c statement_timeout={STATEMENT_TIMEOUT_MS} -c tcp_keepalives_idle=10 "
                   f"-c tcp_keepalives_interval=3 -c tcp_keepalives_count=3")


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


def observe_sql(name: str, host: str | None, port: int, password: str,
                connections: InstanceConnections | None = None, **pod_fields) -> Observation:
    """Connect as superuser and read health(); a failure is recorded by class name only.
    With `connections`, the previous check's connection is reused and this one's kept."""
    if not host:
        if connections is not None:
            connections.drop(name)
        return Observation(name, error="NoAddress", **pod_fields)
    if connections is not None and pod_fields.get("pod_deleting"):
        # Checked as before, afresh: a smart shutdown ends no session but refuses new ones.
        connections.drop(name)
        connections = None
    target, kept = _take(name, host, port, password, connections, pod_fields)
    if kept is not None:
        started = time.monotonic()
        try:
            health = _health(kept.conn, ANSWER_SECONDS)
        except BaseException as err:
            observation = _kept_failed(name, kept.conn, err, started, pod_fields)
            if observation is not None:
                return observation
            # Failed at once: the server restarted or stopped since. Check afresh, as without a
            # kept connection (a refused handshake then says that nothing listens).
        else:
            return _healthy(name, health, pod_fields, connections, target, kept.conn, kept.born)
    problem = tcp_check(host, port)
    if problem:
        return Observation(name, error=problem, **pod_fields)
    conn = None
    try:
        conn = postgres.connect(host=host, port=port, user="postgres", password=password, dbname="postgres",
                                connect_timeout=CONNECT_TIMEOUT_SECONDS, statement_timeout_ms=STATEMENT_TIMEOUT_MS,
                                options=SESSION_OPTIONS, **KEEPALIVES)
        health = _health(conn, FRESH_ANSWER_SECONDS)
    except postgres.Error as err:
        close_quietly(conn)
        return Observation(name, error=_error_name(err),
                           **pod_fields)
    except BaseException:
        close_quietly(conn)
        raise
    return _healthy(name, health, pod_fields, connections, target, conn)


def _take(name: str, host: str, port: int, password: str, connections: InstanceConnections | None,
          pod_fields: dict):
    """The connection target of this check, and the connection kept for it (None: none)."""
    target = Target.of(host, port, str(pod_fields.get("pod_uid") or ""), password)
    return target, (connections.take(name, target) if connections is not None else None)


def _kept_failed(name: str, conn, err: BaseException, started: float, pod_fields: dict) -> Observation | None:
    """What a kept connection's failed query reports (the connection is closed): None when
    it failed at once, for a fresh check to tell why; anything but a query's failure is raised."""
    close_quietly(conn)
    if isinstance(err, Unreachable):
        return Observation(name, error="Unreachable", **pod_fields)  # what tcp_check says of it
    if not isinstance(err, postgres.Error):
        raise err
    if isinstance(err, TIMEOUT) or time.monotonic() - started >= PORT_CHECK_SECONDS:
        return Observation(name, error=type(err).__name__, **pod_fields)
    return None


async def observe_kept(targets: Iterable[tuple[str, str | None, int, dict]], password: str,
                       connections: InstanceConnections) -> dict[str, Observation]:
    """observe_sql() of the `targets` that have a kept connection, on the running event loop
    (no thread), under the same bounds; a target without one, or whose connection failed at
    once, is left out: observe_all() checks it afresh, given these as `observed`."""
    async def one(name: str, host: str | None, port: int, pod_fields: dict) -> Observation | None:
        if not host or pod_fields.get("pod_deleting"):
            return None
        target, kept = _take(name, host, port, password, connections, pod_fields)
        if kept is None:
            return None
        started = time.monotonic()
        try:
            row = await bounded_row_async(kept.conn, HEALTH_SQL, answer_within=ANSWER_SECONDS,
                                          ack_within=PORT_CHECK_SECONDS)
        except BaseException as err:
            return _kept_failed(name, kept.conn, err, started, pod_fields)
        return _healthy(name, _health_of(row), pod_fields, connections, target, kept.conn, kept.born)

    results = await asyncio.gather(*(one(*t) for t in targets))
    return {o.name: o for o in results if o is not None}


def _error_name(err: Exception) -> str:
    """What Observation.error records of a failed fresh check: a class name, never the text
    (it may quote a DSN), but a login the server refused because it is shutting down (SQLSTATE
    57P03, also sent while starting up: told apart by its words) is named: the instance is
    going away, which decide.Observation.down treats like a refused connection."""
    if isinstance(err, Unreachable):
        return "Unreachable"
    if getattr(err, "sqlstate", None) in (None, "57P03") and "the database system is shutting down" in str(err):
        return SHUTTING_DOWN
    return type(err).__name__


def _health(conn, answer_within: float) -> postgres.Health:
    """postgres.health(), with the wait for the answer bounded on this side too."""
    return _health_of(bounded_row(conn, HEALTH_SQL, answer_within=answer_within, ack_within=PORT_CHECK_SECONDS))


def _health_of(row: tuple[str | None, ...]) -> postgres.Health:
    return postgres.Health(row[0] == "t", *row[1:])


def _healthy(name: str, health: postgres.Health, pod_fields: dict, connections: InstanceConnections | None,
             target: Target, conn, born: float | None = None) -> Observation:
    if connections is not None:
        connections.keep(name, target, conn, born)
    else:
        close_quietly(conn)

    def lsn(value: str | None) -> int | None:
        return postgres.lsn_to_int(value) if value else None

    return Observation(
        name, reachable=True, in_recovery=health.in_recovery, current_lsn=lsn(health.current_lsn),
        received_lsn=lsn(health.received_lsn), replayed_lsn=lsn(health.replayed_lsn),
        streaming=health.receiver_status == "streaming", **pod_fields)


def observe_all(targets: Iterable[tuple[str, str | None, int, dict]], password: str,
                connections: InstanceConnections | None = None,
                observed: dict[str, Observation] | None = None) -> dict[str, Observation]:
    """Observe (name, host, port, pod fields) in parallel: one slow instance must not delay
    the primary's check. With `connections` (the cluster's), connections are reused, and
    those of instances not among `targets` closed. Targets in `observed` (observe_kept's,
    just now) are taken from it."""
    targets = list(targets)
    if connections is not None:
        connections.retain(t[0] for t in targets)
    found = {t[0]: observed[t[0]] for t in targets if observed and t[0] in observed}
    targets = [t for t in targets if t[0] not in found]
    if not targets:
        return found
    def one(t):
        return observe_sql(t[0], t[1], t[2], password, connections, **t[3])
    kept = connections.executor(len(targets)) if connections is not None else None
    if kept is not None:
        try:
            results = kept.map(one, targets)  # submits every target now
        except RuntimeError:  # the cluster's daemon ended and closed it meanwhile
            pass
        else:
            return found | {o.name: o for o in results}
    with ThreadPoolExecutor(max_workers=len(targets)) as pool:
        return found | {o.name: o for o in pool.map(one, targets)}


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
