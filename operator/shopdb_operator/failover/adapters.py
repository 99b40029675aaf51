"""The real implementations of the executor's interfaces: Kubernetes through kube.Kube,
PostgreSQL and PgBouncer through postgres/. Addresses are resolved per call (a pod's IP
changes when it is recreated), passwords are held in memory only, never logged."""

from __future__ import annotations

import base64
import datetime
import logging
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FuturesTimeout
from typing import Callable

from .. import GROUP, KIND, VERSION, postgres
from ..builders.common import (COMPONENT, LABEL_CLUSTER, LABEL_INSTANCE, LABEL_ROLE, PGBOUNCER, POSTGRES, POSTGRES_PORT,
                               route_label)
from ..builders.secrets import PGBOUNCER_ADMIN_USER, SUPERUSER
from ..fencing import lease as primary_lease
from ..kube.client import Kube, KubeError
from ..status import FAILOVER_BLOCKED, set_condition
from ..topology import PRIMARY, REPLICA
from . import decide
from .decide import parse_timestamp

log = logging.getLogger(__name__)

Address = tuple[str, int]
PROMOTE_WAIT_SECONDS = 30
PAUSE_TIMEOUT_SECONDS = 5


def secret_password(kube: Kube, namespace: str, name: str) -> str | None:
    secret = kube.get("v1", "Secret", namespace, name)
    data = (secret or {}).get("data") or {}
    return base64.b64decode(data["password"]).decode() if "password" in data else None


def database_pods(kube: Kube, namespace: str, cluster: str) -> dict[str, dict]:
    """Instance name -> its pod (from the operator's watch of pods: read at every check)."""
    pods = kube.cached_list("v1", "Pod", namespace, {LABEL_CLUSTER: cluster, COMPONENT: POSTGRES})
    return {p["metadata"]["labels"].get(LABEL_INSTANCE): p for p in pods}


def pod_address(pod: dict | None) -> Address | None:
    ip = ((pod or {}).get("status") or {}).get("podIP")
    return (ip, POSTGRES_PORT) if ip else None


class KubeCluster:
    """Cluster (execute.py) for one ShopDatabaseCluster."""

    def __init__(self, kube: Kube, namespace: str, name: str, event: Callable[[str, str, str], None],
                 templates: Callable[[dict], list[dict] | None] = lambda topology: None,
                 new_lease: Callable[[str, datetime.datetime], dict] | None = None,
                 timing: primary_lease.Timing | None = None):
        self.kube, self.namespace, self.name, self._event = kube, namespace, name, event
        self._templates = templates  # topology record -> the instances' manifests (None: spec refused)
        self._new_lease = new_lease  # (holder, now) -> the primary Lease to create when it is missing
        self.timing = timing or primary_lease.Timing(8, 2, 1)
        self.lease_name = primary_lease.lease_name(name)
        self._blocked: tuple | None = None  # the FailoverBlocked condition this object last wrote

    def record(self, status: dict) -> None:
        """A failover record carries the FailoverBlocked condition in the same write, so
        nobody reads a refused (or completed) failover with a condition that says otherwise."""
        state = status.get("failover")
        refusal = decide.blocking(state) if isinstance(state, dict) else None
        blocked = (refusal is not None, *((refusal.reason, refusal.message) if refusal else ("NotBlocked", "")))
        if not isinstance(state, dict) or blocked == self._blocked:
            self.kube.update_status(f"{GROUP}/{VERSION}", KIND, self.namespace, self.name, status)
            return
        now = decide.timestamp(datetime.datetime.now(datetime.timezone.utc))
        self.kube.update_status(f"{GROUP}/{VERSION}", KIND, self.namespace, self.name, status,
                                lambda live, gen: set_condition(live, FAILOVER_BLOCKED, *blocked, gen, now))
        self._blocked = blocked

    def set_pod_labels(self, instance: str, labels: dict[str, str | None]) -> None:
        try:
            self.kube.merge_patch("v1", "Pod", self.namespace, f"{instance}-0", {"metadata": {"labels": labels}})
        except KubeError as err:
            if err.status != 404:
                raise

    def apply_templates(self, topology: dict) -> None:
        manifests = self._templates(topology)
        if manifests is None:
            # The spec cannot be applied now (an unsafe change is refused): at least every
            # recreated pod starts with its role (instance.sh reads it at start).
            routes = topology.get("routes") or {}
            for instance in topology.get("pool") or []:
                labels: dict[str, str | None] = {
                    LABEL_ROLE: PRIMARY if instance == topology.get("currentPrimary") else REPLICA}
                labels |= {route_label(r): "true" if on == instance else None for r, on in routes.items()}
                self._template_labels(instance, labels)
            return
        for manifest in manifests:
            self.kube.apply(manifest)

    def _template_labels(self, instance: str, labels: dict[str, str | None]) -> None:
        try:
            self.kube.merge_patch("apps/v1", "StatefulSet", self.namespace, instance,
                                  {"spec": {"template": {"metadata": {"labels": labels}}}})
        except KubeError as err:
            if err.status != 404:
                raise

    def fence_pod(self, instance: str, grace_seconds: int | None, created_before: datetime.datetime) -> bool:
        pod = self.kube.get("v1", "Pod", self.namespace, f"{instance}-0")
        if pod is None:
            return False
        created = pod["metadata"].get("creationTimestamp")
        if created and parse_timestamp(created.replace("Z", ".0Z")) >= created_before:
            return False  # recreated after the fence began: it already carries role=replica
        return self.kube.delete("v1", "Pod", self.namespace, f"{instance}-0", grace_seconds=grace_seconds)

    def primary_lease(self, cached: bool = False) -> dict | None:
        """`cached`: from the operator's watch (each check's health record), not for a
        handover, which writes against the version it read."""
        read = self.kube.cached_get if cached else self.kube.get
        return read(primary_lease.API_VERSION, "Lease", self.namespace, self.lease_name)

    def hand_over_lease(self, to: str, now: datetime.datetime, attempts: int = 10) -> tuple[dict | None, str]:
        for _ in range(attempts):
            lease = self.primary_lease()
            if lease is None:
                if self._new_lease is None:
                    raise RuntimeError(f"the primary lease {self.lease_name} does not exist")
                manifest = self._new_lease(to, now)
                if self.kube.create(manifest) is not None:
                    return None, manifest["spec"]["renewTime"]
                continue  # created meanwhile: read it
            if primary_lease.holder(lease) == to:
                # handed over already (this step resumed): the handover wrote acquireTime too
                return lease, (lease.get("spec") or {}).get("acquireTime") or ""
            patch = primary_lease.handover_patch(lease, to, self.timing, now)
            try:
                self.kube.merge_patch(primary_lease.API_VERSION, "Lease", self.namespace, self.lease_name, patch)
            except KubeError as err:
                if err.status == 409:
                    continue  # renewed in between: that renewal is the old holder's last one now
                raise
            return lease, patch["spec"]["renewTime"]
        raise RuntimeError(f"the primary lease {self.lease_name} kept changing; handover retried")

    def event(self, type_: str, reason: str, message: str) -> None:
        self._event(type_, reason, message)


class SqlDatabases:
    """Databases (execute.py): each instance as superuser at the address `resolve` gives."""

    def __init__(self, resolve: Callable[[str], Address | None], password: str, connect_timeout: int = 2):
        self.resolve, self.password, self.connect_timeout = resolve, password, connect_timeout

    def connect(self, instance: str, statement_timeout_ms: int = 10_000, dbname: str = "postgres"):
        """A superuser session on one instance (the rollout's configuration checks, the
        DEFAULT partitions' rows in the application database)."""
        return self._connect(instance, statement_timeout_ms, dbname)

    def _connect(self, instance: str, statement_timeout_ms: int = 10_000, dbname: str = "postgres"):
        address = self.resolve(instance)
        if address is None:
            raise postgres.psycopg.OperationalError(f"{instance} has no address")
        return postgres.connect(host=address[0], port=address[1], user=SUPERUSER, password=self.password,
                                dbname=dbname, connect_timeout=self.connect_timeout,
                                statement_timeout_ms=statement_timeout_ms)

    def promote(self, instance: str) -> bool:
        with self._connect(instance) as conn:
            if not postgres.is_in_recovery(conn):
                return False
            if not postgres.promote(conn, wait_seconds=PROMOTE_WAIT_SECONDS):
                raise RuntimeError(f"{instance} did not finish promotion within {PROMOTE_WAIT_SECONDS} s")
            return True

    def prepare_primary(self, instance: str, slots: list[str]) -> list[str]:
        with self._connect(instance, statement_timeout_ms=0) as conn:
            postgres.checkpoint(conn)
            return postgres.ensure_physical_slots(conn, slots)

    def current_lsn(self, instance: str) -> int | None:
        try:
            with self._connect(instance) as conn:
                return postgres.lsn_to_int(postgres.current_lsn(conn))
        except postgres.Error:
            return None


class PgBouncerPoolers:
    """Poolers (execute.py): every PgBouncer the `resolve` callable lists, by (name, address).

    A PgBouncer that cannot be reached is skipped, not waited for: a new one starts with
    no server connection at all, and waiting would hold the failover on a dead pod.

    A failover (not graceful) holds without `KILL <db>`, which drops every client, idle ones
    included, and which crashes PgBouncer now and then (pgbouncer/pgbouncer#1401, 1.24.1
    too). Instead: `PAUSE <db>` (new transactions wait in PgBouncer; idle server connections
    are closed by its pause loop), sent without waiting for its answer, which comes only once
    no server connection is in use; then `KILL_CLIENT` (1.24+) for each client in the middle
    of a transaction, the only ones linked to a server connection: their transactions on the
    old primary fail anyway, and a server connection to a primary cut off from the network
    would otherwise hold its pool slot until TCP gives up. Idle clients keep their
    connections and simply wait. A PgBouncer older than 1.24 gets `KILL <db>` as before."""

    def __init__(self, resolve: Callable[[], list[tuple[str, Address]]], password: str,
                 user: str = PGBOUNCER_ADMIN_USER):
        self.resolve, self.password, self.user = resolve, password, user

    def _each(self, commands: list[str], database: str) -> list[str]:
        return self._on_each(lambda conn: [postgres.pgbouncer_command(conn, c, database) for c in commands],
                             "/".join(commands))

    def _on_each(self, action: Callable[[postgres.psycopg.Connection], object], what: str) -> list[str]:
        done = []
        for name, (host, port) in self.resolve():
            try:
                with postgres.pgbouncer_admin(host, port, self.user, self.password) as conn:
                    action(conn)
                done.append(name)
            except postgres.Error as err:
                log.warning("PgBouncer %s: %s not applied: %s", name, what, type(err).__name__)
        return done

    def _hold_without_kill(self, conn: postgres.psycopg.Connection, database: str) -> None:
        if postgres.pgbouncer_version(conn) < (1, 24):
            postgres.pgbouncer_command(conn, "KILL", database)
            return
        host, port = conn.info.host, conn.info.port
        pausing = postgres.pgbouncer_admin(host, port, self.user, self.password)
        try:  # (no `with`: its exit would send COMMIT behind the unanswered command)
            postgres.pgbouncer_send_command(pausing, "PAUSE", database)
            # The pause takes effect as the command is read; its answer may never come while
            # a client is linked to a dead server: do not wait for it beyond this.
            postgres.pgbouncer_wait_answer(pausing, seconds=0.5)
            killed = postgres.pgbouncer_kill_linked_clients(conn, database)
        finally:
            pausing.close()  # the pause stays: only RESUME ends it
        if killed:
            log.info("PgBouncer %s:%s: %s client(s) in a transaction on the old primary disconnected",
                     host, port, killed)

    def hold(self, database: str, graceful: bool) -> list[str]:
        if not graceful:
            return self._on_each(lambda conn: self._hold_without_kill(conn, database), "PAUSE/KILL_CLIENT")
        # PAUSE returns only once running transactions ended: bounded, so that a stuck client
        # cannot hold a switchover (its transaction ends with the old primary's shutdown).
        pool = ThreadPoolExecutor(max_workers=1)
        future = pool.submit(self._each, ["PAUSE"], database)
        pool.shutdown(wait=False)
        try:
            return future.result(timeout=PAUSE_TIMEOUT_SECONDS)
        except FuturesTimeout:
            log.warning("PgBouncer PAUSE of %s still waiting after %s s; switching over anyway",
                        database, PAUSE_TIMEOUT_SECONDS)
            return []

    def release(self, database: str, graceful: bool) -> list[str]:
        # After a switchover's PAUSE timed out, server connections to the old primary may be
        # left: RECONNECT closes them once released. Not after a failover's hold: none is left
        # (paused pools close theirs, KILL_CLIENT freed the busy ones), and RECONNECT would make
        # a server login under way fail, which makes PgBouncer refuse every client with
        # "server login has been failing" until its next login succeeds.
        return self._each(["RECONNECT", "RESUME"] if graceful else ["RESUME"], database)


def pgbouncer_addresses(kube: Kube, namespace: str, cluster: str) -> list[tuple[str, Address]]:
    pods = kube.list("v1", "Pod", namespace, {LABEL_CLUSTER: cluster, COMPONENT: PGBOUNCER})
    return [(p["metadata"]["name"], (p["status"]["podIP"], POSTGRES_PORT)) for p in pods
            if (p.get("status") or {}).get("podIP") and not p["metadata"].get("deletionTimestamp")]


SWITCHOVER_ANNOTATION = f"{GROUP}/switchover-to"


def request_switchover(kube: Kube, namespace: str, cluster: str, target: str) -> None:
    """What `kubectl annotate sdc NAME shopdb.io/switchover-to=TARGET` does, after checking
    that TARGET is a pool instance and not the primary already (the operator checks again
    and refuses an analytics or unreachable target with an Event)."""
    body = kube.get(f"{GROUP}/{VERSION}", KIND, namespace, cluster)
    if body is None:
        raise LookupError(f"ShopDatabaseCluster {namespace}/{cluster} not found")
    topology = (body.get("status") or {}).get("topology") or {}
    if target not in (topology.get("pool") or []):
        raise ValueError(f"{target} is not a promotable instance of {cluster} (pool: {', '.join(topology.get('pool') or [])})")
    if target == topology.get("currentPrimary"):
        raise ValueError(f"{target} is already the primary")
    kube.merge_patch(f"{GROUP}/{VERSION}", KIND, namespace, cluster,
                     {"metadata": {"annotations": {SWITCHOVER_ANNOTATION: target}}})
