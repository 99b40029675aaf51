"""Load and observation for failover tests and the failover benchmark.

- Writer: one client inserting numbered rows through PgBouncer's primary route, as fast as
  it can with a short pause, remembering every acknowledged (committed) id and every error.
- Sampler: asks every database instance `pg_is_in_recovery()` in parallel, several times a
  second, and remembers each moment when more than one answered as writable.

Both reach the cluster by its own addresses (Service cluster IPs and pod IPs), which the
local cluster (tests/cluster/localkube) routes to this host and nowhere else.
"""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

import psycopg

from support import wait_for

POSTGRES_PORT = 5432
PROBE_TABLE = "failover_probe"
LOGIN_FAILING_GRACE_SECONDS = 15  # see Writer.lost()


def kubectl_json(kubeconfig: str, *args: str) -> dict:
    proc = subprocess.run(["kubectl", "--kubeconfig", kubeconfig, *args, "-o", "json"], capture_output=True,
                          text=True, timeout=60)
    if proc.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)}: {proc.stderr.strip()}")
    return json.loads(proc.stdout)


def secret(kubeconfig: str, namespace: str, name: str) -> str:
    data = kubectl_json(kubeconfig, "-n", namespace, "get", "secret", name)["data"]
    return base64.b64decode(data["password"]).decode()


def service_ip(kubeconfig: str, namespace: str, name: str) -> str:
    return kubectl_json(kubeconfig, "-n", namespace, "get", "service", name)["spec"]["clusterIP"]


def instance_addresses(kubeconfig: str, namespace: str, cluster: str) -> dict[str, str]:
    """Instance name -> pod IP, for the database pods that have one and are not deleting."""
    pods = kubectl_json(kubeconfig, "-n", namespace, "get", "pods", "-l",
                         f"shopdb.io/cluster={cluster},app.kubernetes.io/component=postgres")["items"]
    return {p["metadata"]["labels"]["shopdb.io/instance"]: p["status"]["podIP"] for p in pods
            if (p.get("status") or {}).get("podIP")}


def query(host: str, password: str, sql: str, params=(), dbname: str = "postgres", user: str = "postgres",
          timeout: int = 3) -> list[tuple]:
    with psycopg.connect(host=host, port=POSTGRES_PORT, user=user, password=password, dbname=dbname,
                         connect_timeout=timeout, autocommit=True, prepare_threshold=None) as conn:
        return conn.execute(sql, params).fetchall()


class _Background:
    """A daemon thread running self._loop until stop()."""

    def _init_thread(self, name: str) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def _loop(self) -> None:
        raise NotImplementedError

    def start(self):
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)


@dataclass
class Writer(_Background):
    """Inserts (run, id) rows through PgBouncer; an id counts as acknowledged once COMMIT
    returned. A failed write is not retried (its outcome is unknown, and not counted)."""

    host: str
    password: str
    run: str
    dbname: str = "shop"
    user: str = "shop"
    pause: float = 0.02
    acked: list[tuple[int, float]] = field(default_factory=list)
    failures: list[tuple[float, str]] = field(default_factory=list)

    def __post_init__(self):
        self._init_thread(f"writer-{self.run}")
        self._next = 1

    def prepare(self) -> None:
        with self._connect() as conn:
            conn.execute(f"CREATE TABLE IF NOT EXISTS {PROBE_TABLE} (run text, id bigint, at timestamptz "
                         f"DEFAULT clock_timestamp(), PRIMARY KEY (run, id))")

    def _connect(self):
        # No server-side prepared statements through PgBouncer in transaction mode (README).
        return psycopg.connect(host=self.host, port=POSTGRES_PORT, user=self.user, password=self.password,
                               dbname=self.dbname, connect_timeout=5, autocommit=True, prepare_threshold=None)

    def _loop(self) -> None:
        conn = None
        while not self._stop.is_set():
            ident, self._next = self._next, self._next + 1
            try:
                if conn is None:
                    conn = self._connect()
                conn.execute(f"INSERT INTO {PROBE_TABLE} (run, id) VALUES (%s, %s)", (self.run, ident))
                self.acked.append((ident, time.monotonic()))
            except psycopg.Error as err:
                self.failures.append((time.monotonic(), type(err).__name__))
                if conn is not None:
                    conn.close()
                conn = None
                time.sleep(0.1)
            time.sleep(self.pause)
        if conn is not None:
            conn.close()

    def acked_after(self, moment: float) -> int:
        return sum(1 for _, t in self.acked if t > moment)

    def first_ack_after(self, moment: float) -> float | None:
        """Seconds from `moment` to the first acknowledged write after it."""
        return next((t - moment for _, t in self.acked if t > moment), None)

    def lost(self, host: str | None = None) -> list[int]:
        """Acknowledged ids missing now (read through PgBouncer, or from `host`)."""
        ids = [i for i, _ in self.acked]
        deadline = time.monotonic() + LOGIN_FAILING_GRACE_SECONDS
        while True:
            try:
                rows = query(host or self.host, self.password, f"SELECT id FROM {PROBE_TABLE} WHERE run = %s",
                             (self.run,), dbname=self.dbname, user=self.user, timeout=10)
                break
            except psycopg.errors.ProtocolViolation as err:
                # Right after a failover PgBouncer may still hold a failed login (to the old
                # primary, or the -rw address before kube-proxy caught up): it refuses clients
                # with "server login has been failing" until its next login, at most
                # server_login_retry (1 s) later. A client retries; so does this read.
                if "login has been failing" not in str(err) or time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        present = {r[0] for r in rows}
        return [i for i in ids if i not in present]


class Writers(_Background):
    """Many clients at once through PgBouncer (asyncio, one thread): `clients` writers, each
    inserting numbered rows with `pause` seconds between its transactions, and `idle` clients
    that connect, run one transaction, then sit idle until `check_idle()`. The same record
    as Writer: `acked` (id, time) in commit order, `failures` (time, error). A writer whose
    connection fails reconnects (counted in `reconnects`)."""

    def __init__(self, host: str, password: str, run: str, clients: int, idle: int = 0, pause: float = 0.1,
                 dbname: str = "shop", user: str = "shop"):
        self.host, self.password, self.run, self.dbname, self.user = host, password, run, dbname, user
        self.clients, self.idle, self.pause = clients, idle, pause
        self.acked: list[tuple[int, float]] = []
        self.failures: list[tuple[float, str]] = []
        self.reconnects = 0
        self.connected = 0
        self._next = 0
        self._idle_connections: list = []
        self.idle_kept = self.idle_broken = 0
        self._init_thread(f"writers-{run}")

    def prepare(self) -> None:
        Writer(self.host, self.password, self.run, self.dbname, self.user).prepare()

    async def _connect(self):
        return await psycopg.AsyncConnection.connect(
            host=self.host, port=POSTGRES_PORT, user=self.user, password=self.password, dbname=self.dbname,
            connect_timeout=10, autocommit=True, prepare_threshold=None)

    async def _writer(self, number: int) -> None:
        await asyncio.sleep(number * 0.01)  # no login storm of our own making
        conn = None
        while not self._stop.is_set():
            self._next += 1
            ident = self._next
            try:
                if conn is None:
                    conn = await self._connect()
                    self.connected += 1
                await conn.execute(f"INSERT INTO {PROBE_TABLE} (run, id) VALUES (%s, %s)", (self.run, ident))
                self.acked.append((ident, time.monotonic()))
            except psycopg.Error as err:
                self.failures.append((time.monotonic(), f"{type(err).__name__}: {str(err).strip()[:80]}"))
                if conn is not None:
                    await conn.close()
                    self.reconnects += 1
                conn = None
                await asyncio.sleep(0.1)
            await asyncio.sleep(self.pause)
        if conn is not None:
            await conn.close()

    async def _idle_client(self) -> None:
        conn = await self._connect()
        await conn.execute("SELECT 1")
        self._idle_connections.append(conn)

    async def _main(self) -> None:
        for start in range(0, self.idle, 50):
            await asyncio.gather(*(self._idle_client() for _ in range(min(50, self.idle - start))))
        tasks = [asyncio.create_task(self._writer(n)) for n in range(self.clients)]
        while not self._stop.is_set():
            await asyncio.sleep(0.1)
        await asyncio.gather(*tasks, return_exceptions=True)

        async def probe(conn) -> bool:
            try:
                await asyncio.wait_for(conn.execute("SELECT 1"), 30)
                return True
            except (psycopg.Error, asyncio.TimeoutError):
                return False

        answers = await asyncio.gather(*(probe(c) for c in self._idle_connections))
        self.idle_kept, self.idle_broken = sum(answers), len(answers) - sum(answers)
        for conn in self._idle_connections:
            await conn.close()

    def _loop(self) -> None:
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self._main())
        finally:
            loop.close()

    def check_idle(self) -> tuple[int, int]:
        """(kept, broken) after stop(): the idle clients whose same connection still ran a
        query once the writers stopped."""
        assert not self._thread.is_alive(), "stop() first"
        return self.idle_kept, self.idle_broken

    def acked_after(self, moment: float) -> int:
        return sum(1 for _, t in self.acked if t > moment)

    def first_ack_after(self, moment: float) -> float | None:
        return next((t - moment for _, t in self.acked if t > moment), None)

    def lost(self, host: str | None = None) -> list[int]:
        return Writer.lost(self, host)  # type: ignore[arg-type]


def pgbouncer_pods(kubeconfig: str, namespace: str, cluster: str) -> dict[str, tuple[str, int]]:
    """PgBouncer pod name -> (uid, the container's restart count): equal before and after
    a fault means no PgBouncer crashed, restarted or was replaced."""
    pods = kubectl_json(kubeconfig, "-n", namespace, "get", "pods", "-l",
                        f"shopdb.io/cluster={cluster},app.kubernetes.io/component=pgbouncer")["items"]
    return {p["metadata"]["name"]: (p["metadata"]["uid"],
                                    sum(c.get("restartCount", 0) for c in (p.get("status") or {}).get("containerStatuses") or []))
            for p in pods}


@dataclass
class Sampler(_Background):
    """Who answers as writable, sampled every `interval` seconds across all instances at once."""

    kubeconfig: str
    namespace: str
    cluster: str
    password: str
    interval: float = 0.25
    samples: int = 0
    first_at: float | None = None  # time.monotonic() of the first and the last sample
    last_at: float | None = None
    overlaps: list[tuple[float, list[str]]] = field(default_factory=list)
    writable_seen: set[str] = field(default_factory=set)

    def __post_init__(self):
        self._init_thread("sampler")

    def _writable(self, address: str) -> bool:
        try:
            with psycopg.connect(host=address, port=POSTGRES_PORT, user="postgres", password=self.password,
                                 dbname="postgres", connect_timeout=1, autocommit=True) as conn:
                return conn.execute("SELECT NOT pg_is_in_recovery()").fetchone()[0]
        except psycopg.Error:
            return False

    def _loop(self) -> None:
        addresses: dict[str, str] = {}
        refreshed = 0.0
        with ThreadPoolExecutor(max_workers=8) as pool:
            while not self._stop.is_set():
                if time.monotonic() - refreshed > 1:
                    try:
                        addresses = instance_addresses(self.kubeconfig, self.namespace, self.cluster)
                        refreshed = time.monotonic()
                    except (RuntimeError, subprocess.TimeoutExpired):
                        pass
                names = sorted(addresses)
                answers = list(pool.map(self._writable, [addresses[n] for n in names]))
                writable = [n for n, w in zip(names, answers) if w]
                self.samples += 1
                self.last_at = time.monotonic()
                self.first_at = self.first_at or self.last_at
                self.writable_seen.update(writable)
                if len(writable) > 1:
                    self.overlaps.append((time.monotonic(), writable))
                self._stop.wait(self.interval)



class ClusterView:
    """A ShopDatabaseCluster as the failover tests see it: status, and SQL on its instances."""

    def __init__(self, kubeconfig: str, namespace: str, name: str = "shop"):
        self.kubeconfig, self.namespace, self.name = kubeconfig, namespace, name
        self.superuser = secret(kubeconfig, namespace, f"{name}-superuser")
        self.app = secret(kubeconfig, namespace, f"{name}-app")
        self.pgbouncer = service_ip(kubeconfig, namespace, f"{name}-pgbouncer")

    def status(self) -> dict:
        return kubectl_json(self.kubeconfig, "-n", self.namespace, "get", "sdc", self.name).get("status") or {}

    def primary(self) -> str:
        return self.status()["currentPrimary"]

    def history(self) -> list[dict]:
        return self.status().get("failoverHistory") or []

    def sql(self, instance: str, statement: str, params=()) -> list[tuple]:
        address = instance_addresses(self.kubeconfig, self.namespace, self.name).get(instance)
        if address is None:
            raise psycopg.OperationalError(f"{instance} has no pod address")
        return query(address, self.superuser, statement, params)

    def writer(self, run: str, clients: int = 1, idle: int = 0, pause: float = 0.1) -> Writer | Writers:
        """One writer (every 20 ms), or `clients` writers and `idle` idle clients at once."""
        writer = Writer(self.pgbouncer, self.app, run) if clients == 1 and not idle else \
            Writers(self.pgbouncer, self.app, run, clients, idle, pause)
        writer.prepare()
        return writer

    def sampler(self) -> Sampler:
        return Sampler(self.kubeconfig, self.namespace, self.name, self.superuser)

    def streaming_replicas(self) -> set[str]:
        """Instances streaming from the recorded primary, as the primary reports them."""
        rows = self.sql(self.primary(), "SELECT application_name FROM pg_stat_replication WHERE state = 'streaming'")
        return {r[0] for r in rows}

    def logs(self, instance: str, lines: int = 40) -> str:
        """The instance's PostgreSQL container log, and its previous run's when it restarted:
        what a failed wait prints, so that a rejoin that never happened can be explained."""
        parts = []
        for previous in (True, False):
            args = ["kubectl", "--kubeconfig", self.kubeconfig, "-n", self.namespace, "logs", f"{instance}-0",
                    "-c", "postgres", f"--tail={lines}", *(["--previous"] if previous else [])]
            proc = subprocess.run(args, capture_output=True, text=True, timeout=60)
            if proc.returncode == 0 and proc.stdout.strip():
                parts.append(f"--- {instance} {'previous' if previous else 'current'} container ---\n{proc.stdout}")
        return "\n".join(parts) or f"--- {instance}: no container log ---"

    def all_replicas_stream(self, instances: list[str]) -> bool:
        try:
            primary = self.primary()
            return set(instances) - {primary} <= self.streaming_replicas()
        except (psycopg.Error, KeyError, RuntimeError):
            return False


@dataclass
class FailoverRun:
    """One fault under load, as the tests assert it and the benchmark prints it."""

    entry: dict  # the failoverHistory entry the fault produced
    old: str
    writer: "Writer | Writers"
    sampler: Sampler
    fault_at: float  # time.monotonic() of the fault
    fault_wall: float  # time.time() of the fault (status timestamps are wall clock)
    rejoined_after: float  # seconds from the fault until every instance streamed again
    lost: list[int] = field(default_factory=list)  # acknowledged ids missing afterwards (filled by the caller)

    @property
    def new(self) -> str:
        return self.entry["to"]

    def longest_gap(self) -> float:
        """The longest gap between two acknowledged writes from the fault on."""
        times = [self.fault_at] + [t for _, t in self.writer.acked if t >= self.fault_at]
        return max((b - a for a, b in zip(times, times[1:])), default=0.0)


def fail_over_under_load(view: ClusterView, run: str, fault: Callable[[str], None], instances: list[str],
                         after_fault: Callable[[], None] | None = None, failover_timeout: float = 180,
                         rejoin_timeout: float = 300, clients: int = 1, idle: int = 0,
                         pause: float = 0.1) -> FailoverRun:
    """Writes flowing (one writer, or `clients` writers and `idle` idle clients), `fault(primary)`,
    then wait for: a new failoverHistory entry, writes going through PgBouncer again, and every instance (the old primary too) streaming from
    the new primary. Asserts nothing beyond getting there."""
    history = view.history()  # at most HISTORY_LENGTH entries: compare the newest, not the count
    before, old = (history[-1]["startedAt"] if history else None), view.primary()
    sampler = view.sampler().start()
    writer = view.writer(run, clients, idle, pause).start()
    try:
        wait_for(lambda: len(writer.acked) >= 20 * clients, 120, "writes through PgBouncer before the fault",
                 interval=0.2)
        fault_wall, fault_at = time.time(), time.monotonic()
        fault(old)
        if after_fault:
            after_fault()
        try:
            entry = wait_for(lambda: (h := view.history()) and h[-1]["startedAt"] != before and h[-1],
                             failover_timeout,
                             "a completed failover or switchover", interval=0.3)
        except AssertionError as err:
            raise AssertionError(f"{err}\nstatus.failover: {view.status().get('failover')}") from None
        done = time.monotonic()
        wait_for(lambda: writer.acked_after(done) >= 20, 120, "writes through PgBouncer after the failover",
                 interval=0.2)
        try:
            wait_for(lambda: view.all_replicas_stream(instances), rejoin_timeout,
                     f"every instance, {old} too, streaming from the new primary", interval=0.5)
        except AssertionError as err:
            try:
                missing = sorted(set(instances) - {view.primary()} - view.streaming_replicas())
            except (psycopg.Error, KeyError, RuntimeError):
                missing = [old]
            raise AssertionError("\n".join([str(err), *(view.logs(i) for i in missing)])) from None
        rejoined = time.monotonic() - fault_at
    finally:
        writer.stop()
        sampler.stop()
    return FailoverRun(entry, old, writer, sampler, fault_at, fault_wall, rejoined)
