"""Failover on real PostgreSQL and PgBouncer, driven by the operator's own decision and
executor code: the primary is killed, the most up-to-date promotable replica (never the
analytics one) is promoted, the others follow it, PgBouncer's primary route lands on it,
the old primary rejoins as a replica; with synchronous replication no acknowledged write
is lost. The `-rw` Service is a switchable TCP proxy that the executor's relabel moves.
"""

from __future__ import annotations

import datetime
import os
import secrets
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import psycopg
import pytest

from harness import (PG_BIN, TEST_RESOURCES, Credentials, Instance, free_port, install_scripts, make_root,
                     make_spec, private_dir, require_binaries, run_as_postgres, stop_all, wait_until)
from shopdb_operator.builders import config_files
from shopdb_operator.builders.common import LABEL_ROLE
from shopdb_operator.failover import adapters, decide, execute, monitor
from shopdb_operator.topology import PRIMARY
from shopdb_operator.topology import Instance as TopologyInstance
from shopdb_operator.topology import Topology

PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"


class ServiceProxy:
    """A Service with one endpoint: new connections go to `target`; `partition()` makes the
    existing ones a black hole (a node cut off: no RST, no data), like kube-proxy after the
    endpoint moved while the old pod is unreachable."""

    def __init__(self, target: int | None):
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.pairs: list[dict] = []
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def switch(self, target: int | None) -> None:
        self.target = target

    def partition(self) -> None:
        for pair in self.pairs:
            pair["frozen"] = True

    def close(self) -> None:
        self.closed = True
        self.listener.close()
        for pair in self.pairs:
            for sock in pair["socks"]:
                sock.close()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                if self.target is None:
                    raise OSError("no endpoint")
                upstream = socket.create_connection(("127.0.0.1", self.target), timeout=2)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            pair = {"frozen": False, "socks": (client, upstream)}
            self.pairs.append(pair)
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst, pair), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket, pair: dict) -> None:
        try:
            while data := src.recv(65536):
                if not pair["frozen"]:
                    dst.sendall(data)
        except OSError:
            pass
        if not pair["frozen"]:
            for sock in pair["socks"]:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


class LoopbackCluster:
    """execute.Cluster on loopback: a role label moves the proxy (the -rw Service); deleting
    the pod stops the instance (SIGKILL for a grace of 1 s or less, a fast shutdown otherwise)."""

    def __init__(self, instances: dict[str, Instance], proxy: ServiceProxy):
        self.instances, self.proxy = instances, proxy
        self.status: dict = {}
        self.events: list[tuple[str, str, str]] = []
        self.moments: dict[str, float] = {}

    def record(self, status: dict) -> None:
        self.status.update(status)

    def set_pod_labels(self, instance: str, labels: dict) -> None:
        role = labels.get(LABEL_ROLE)
        if role is None:
            return
        self.instances[instance].role = role
        if role == PRIMARY:
            self.proxy.switch(self.instances[instance].port)
            self.moments.setdefault("relabeled", time.monotonic())
        elif self.proxy.target == self.instances[instance].port:
            self.proxy.switch(None)  # the Service has no endpoint until the new primary is labeled

    def set_template_labels(self, instance: str, labels: dict) -> None:
        pass

    def fence_pod(self, instance: str, grace_seconds, created_before) -> bool:
        target = self.instances[instance]
        if target.process is None or target.process.poll() is not None:
            return False
        if grace_seconds is not None and grace_seconds <= 1:
            target.crash()
        else:
            target.stop()
        return True

    def event(self, type_: str, reason: str, message: str) -> None:
        self.events.append((type_, reason, message))


def topology_of(primary: str, instances: dict[str, Instance]) -> Topology:
    return Topology(primary=primary, instances=tuple(
        TopologyInstance(name, promotable=not i.analytics, analytics=i.analytics) for name, i in instances.items()))


def observe(instances: dict[str, Instance], password: str):
    targets = []
    for name, instance in instances.items():
        alive = instance.process is not None and instance.process.poll() is None
        targets.append((name, "127.0.0.1", instance.port,
                        {"pod_exists": True, "container_running": alive, "pod_ready": alive}))
    return monitor.observe_all(targets, password)


def databases(instances: dict[str, Instance], password: str) -> adapters.SqlDatabases:
    return adapters.SqlDatabases(lambda name: ("127.0.0.1", instances[name].port), password)


def receiver(instance: Instance) -> tuple | None:
    rows = instance.query("SELECT status, sender_port, received_tli FROM pg_stat_wal_receiver")
    return rows[0] if rows else None


class PgBouncerProcess:
    """pgbouncer-start.sh with the operator's rendered ini (as in test_pgbouncer.py)."""

    def __init__(self, root: Path, spec, backends: dict[str, tuple[str, int]], app_password: str):
        require_binaries(PGBOUNCER)
        scripts = install_scripts(root)
        run_dir = private_dir(root, "run")
        private_dir(root, "etc")
        self.port = free_port()
        self.admin_password = secrets.token_urlsafe(16) + '"'
        self.app_password = app_password
        ini = root / "etc" / "pgbouncer.ini"
        ini.write_text(config_files.pgbouncer_ini(spec, backends, self.port, listen_addr="127.0.0.1",
                                                  run_dir=str(run_dir)))
        env = {
            "PATH": f"{Path(PGBOUNCER).parent}:/usr/bin:/bin",
            "PGBOUNCER_RUN_DIR": str(run_dir),
            "PGBOUNCER_APP_USER": spec.postgres.owner,
            "PGBOUNCER_APP_PASSWORD": app_password,
            "PGBOUNCER_ADMIN_USER": config_files.PGBOUNCER_ADMIN_USER,
            "PGBOUNCER_ADMIN_PASSWORD": self.admin_password,
        }
        self.log_path = root / "pgbouncer.log"
        with open(self.log_path, "wb") as log:
            self.process = run_as_postgres(["sh", str(scripts / "pgbouncer-start.sh"), str(ini)], env,
                                           stdout=log, stderr=subprocess.STDOUT, cwd=root)
        deadline = time.monotonic() + 15
        while True:
            try:
                self.connect("shop").close()
                return
            except psycopg.OperationalError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(self.log_path.read_text())
                time.sleep(0.2)

    def connect(self, dbname: str) -> psycopg.Connection:
        return psycopg.connect(host="127.0.0.1", port=self.port, user="shop", dbname=dbname,
                               password=self.app_password, connect_timeout=5, autocommit=True)

    def poolers(self) -> adapters.PgBouncerPoolers:
        return adapters.PgBouncerPoolers(lambda: [("pgbouncer-0", ("127.0.0.1", self.port))], self.admin_password)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


# --- driving the operator's code as the daemon does -----------------------------------------

def detect(instances: dict[str, Instance], primary: str, password: str, threshold: int) -> decide.HealthTracker:
    """Checks until the threshold is reached (no interval: the test measures the rest)."""
    tracker = decide.HealthTracker()
    while not tracker.should_fail_over(threshold):
        tracker = tracker.record(primary, observe(instances, password).get(primary))
    return tracker


def run_failover(state: dict, plan: execute.Plan, instances: dict[str, Instance], password: str,
                 cluster: LoopbackCluster, poolers, stop_before: str | None = None, timeout: float = 60):
    """Run steps (re-observing between them) until completed, refused, or `stop_before`."""
    dbs = databases(instances, password)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if decide.next_step(state) == stop_before:
            return state, None
        result = execute.run_step(state, plan, observe(instances, password), cluster, dbs, poolers,
                                  datetime.datetime.now(datetime.timezone.utc))
        state = result.state
        if result.refusal or result.completed:
            return state, result.refusal
        if result.step:
            cluster.moments[result.step] = time.monotonic()
        else:
            time.sleep(0.2)  # waiting for receivers to let go of the old primary
    raise AssertionError(f"failover did not finish: {state}")


class NoPoolers:
    def hold(self, database, graceful):
        return []

    def release(self, database, graceful):
        return []


def values(instance: Instance) -> set[str]:
    return {v for (v,) in instance.query("SELECT v FROM t")}


def write(instance: Instance, value: str) -> None:
    with instance.connect() as conn:
        conn.execute("INSERT INTO t VALUES (%s)", (value,))


def accepts_queries(instance: Instance) -> bool:
    return instance.query("SELECT true") == [(True,)]


def report(name: str, timings: dict[str, float], **counts: int) -> None:
    """Timings for the lead's benchmark notes (pytest -s shows them; also appended to a file)."""
    line = f"{name}: " + ", ".join([f"{k}={v:.2f}s" for k, v in timings.items()] +
                                   [f"{k}={v}" for k, v in counts.items()])
    print(line)
    path = os.environ.get("SHOPDB_FAILOVER_TIMINGS")
    if path:
        with open(path, "a") as out:
            out.write(line + "\n")


# --- an asynchronous cluster: fo-1 primary, fo-2 and fo-3 promotable, fo-analytics -------------

@pytest.fixture(scope="module")
def fo():
    require_binaries(PG_BIN / "postgres", PG_BIN / "pg_rewind", PG_BIN / "pg_basebackup", PGBOUNCER)
    root = make_root("shopdb-failover-")
    scripts = install_scripts(root)
    spec, credentials = make_spec(), Credentials()
    instances = {name: Instance(root, name, spec, credentials, scripts, analytics=name.endswith("analytics"))
                 for name in ("fo-1", "fo-2", "fo-3", "fo-analytics")}
    primary = instances["fo-1"]
    proxy = ServiceProxy(primary.port)
    primary.role = "primary"
    primary.peer_slots = [i.slot for n, i in instances.items() if n != "fo-1"]
    for instance in instances.values():
        instance.primary_port = proxy.port  # everyone reaches "the primary" through the Service
    bouncer = None
    try:
        primary.start()
        primary.wait_ready()
        for name in ("fo-2", "fo-3", "fo-analytics"):
            instances[name].start()
        for name in ("fo-2", "fo-3", "fo-analytics"):
            instances[name].wait_ready()
        backends = {"primary": ("127.0.0.1", proxy.port), "ro": ("127.0.0.1", instances["fo-2"].port),
                    "search": ("127.0.0.1", instances["fo-2"].port), "orders": ("127.0.0.1", instances["fo-3"].port),
                    "analytics": ("127.0.0.1", instances["fo-analytics"].port)}
        bouncer = PgBouncerProcess(private_dir(root, "pgbouncer"), spec, backends, credentials.owner)
        yield {"instances": instances, "proxy": proxy, "spec": spec, "password": credentials.superuser,
               "bouncer": bouncer}
    finally:
        if bouncer:
            bouncer.stop()
        stop_all(reversed(list(instances.values())))
        proxy.close()
        shutil.rmtree(root, ignore_errors=True)


def test_a_walreceiver_cannot_be_restarted_over_sql(fo):
    """Why the repoint step rewrites nothing: pg_terminate_backend() refuses the walreceiver
    (an auxiliary process), so a receiver stuck on a dead primary waits for
    wal_receiver_timeout; the Service name in primary_conninfo does the re-pointing."""
    replica = fo["instances"]["fo-3"]
    wait_until(lambda: (receiver(replica) or ("",))[0] == "streaming", message="fo-3 streaming")
    assert replica.query("SELECT pg_terminate_backend(pid) FROM pg_stat_wal_receiver") == [(False,)]


def test_failover_promotes_the_best_promotable_replica_and_everyone_follows(fo):
    instances, proxy, spec, password = fo["instances"], fo["proxy"], fo["spec"], fo["password"]
    old, two, three, analytics = (instances[n] for n in ("fo-1", "fo-2", "fo-3", "fo-analytics"))
    with old.connect() as conn:
        conn.execute("CREATE TABLE t (v text)")
        conn.execute("INSERT INTO t VALUES ('common')")
    wait_until(lambda: all(values(i) == {"common"} for i in (two, three, analytics)), message="replicas caught up")
    with fo["bouncer"].connect("shop") as client:  # a pooled server connection to the old primary
        assert client.execute("SELECT inet_server_port()").fetchone() == (old.port,)

    # fo-3 falls behind, then fo-2; only the analytics replica gets the last write.
    three.stop()
    write(old, "a")
    wait_until(lambda: "a" in values(two) and "a" in values(analytics), message="'a' replicated")
    two.stop()
    write(old, "b")
    wait_until(lambda: "b" in values(analytics), message="'b' on analytics")

    proxy.partition()  # the old primary's node is cut off: its connections hang, no RST
    old.crash()
    crashed = time.monotonic()
    for replica in (two, three):  # they restart while the primary is gone
        replica.start()
    wait_until(lambda: accepts_queries(two) and accepts_queries(three), timeout=60, message="replicas up")

    tracker = detect(instances, "fo-1", password, spec.failover.failure_threshold)
    detected = time.monotonic()
    before = observe(instances, password)
    assert before["fo-analytics"].wal_position > before["fo-2"].wal_position > before["fo-3"].wal_position

    cluster = LoopbackCluster(instances, proxy)
    plan = execute.Plan(topology_of("fo-1", instances), spec, spec.postgres.database)
    state = decide.start(decide.FAILOVER, "fo-1", "test: primary killed", datetime.datetime.now(
        datetime.timezone.utc))
    state["primaryLSN"] = tracker.last_lsn
    state, refusal = run_failover(state, plan, instances, password, cluster, fo["bouncer"].poolers(),
                                  stop_before=decide.PGBOUNCER)
    assert refusal is None
    assert state["to"] == "fo-2"  # the most up to date promotable one; analytics was further ahead
    assert not two.query("SELECT pg_is_in_recovery()")[0][0]
    write(two, "after")
    writable = time.monotonic()

    # Held since the fence: a client through PgBouncer waits instead of failing...
    answers: list = []

    def client_query():
        with fo["bouncer"].connect("shop") as client:
            answers.append(client.execute("SELECT inet_server_port(), pg_is_in_recovery(), "
                                          "txid_current() IS NOT NULL").fetchone())

    waiting_client = threading.Thread(target=client_query)
    waiting_client.start()
    waiting_client.join(1.0)
    assert waiting_client.is_alive() and answers == []
    state, _ = run_failover(state, plan, instances, password, cluster, fo["bouncer"].poolers())
    waiting_client.join(10)
    assert answers == [(two.port, False, True)]  # ...and is served by the new primary once released
    assert state["phase"] == decide.COMPLETED and state["heldPoolers"] == state["releasedPoolers"] == ["pgbouncer-0"]
    assert cluster.status["currentPrimary"] == "fo-2"
    assert [e[1] for e in cluster.events] == ["FailoverCandidate", "PrimaryFenced", "Promoted", "PrimaryMoved",
                                              "FailoverCompleted"]
    # PgBouncer: the primary route now reaches the new primary, and writes work.
    with fo["bouncer"].connect("shop") as client:
        port, in_recovery = client.execute("SELECT inet_server_port(), pg_is_in_recovery()").fetchone()
        client.execute("SELECT txid_current()")
    assert (port, in_recovery) == (two.port, False)
    routed = time.monotonic()

    # fo-3 (behind the fork) follows the new timeline through the Service.
    wait_until(lambda: receiver(three) == ("streaming", proxy.port, 2), timeout=30, message="fo-3 streams on timeline 2")
    wait_until(lambda: values(three) == {"common", "a", "after"}, message="fo-3 has the new writes")
    followed = time.monotonic()

    # The old primary comes back with role=replica (the fence's label): rewound, streaming.
    assert old.role == "replica"
    old.start()
    wait_until(lambda: receiver(old) == ("streaming", proxy.port, 2), timeout=60, message="fo-1 rejoined")
    assert values(old) == {"common", "a", "after"}  # 'b', never on the new primary, was rewound away
    assert "pg_rewind finished" in old.log_text() or "clone complete" in old.log_text()
    rejoined = time.monotonic()

    # The analytics replica was ahead of the fork: its restart rewinds it onto the new timeline.
    analytics.stop()
    analytics.start()
    wait_until(lambda: receiver(analytics) == ("streaming", proxy.port, 2), timeout=60, message="analytics follows")
    wait_until(lambda: values(analytics) == {"common", "a", "after"}, message="analytics consistent")

    # The route of the promoted replica moves to the rejoined old primary.
    moves = decide.route_handoff(decide_topology_with_routes("fo-2", instances), observe(instances, password),
                                 preferred="fo-1")
    assert moves == {"search": "fo-1"}

    steps = decide.step_durations(state)
    report("async failover (loopback)", {
        "detection (checks only)": detected - crashed,
        **{f"step {k}": v for k, v in steps.items()},
        "crash->writable": writable - crashed,
        "crash->pgbouncer routed": routed - crashed,
        "crash->other replica streaming": followed - crashed,
        "crash->old primary streaming": rejoined - crashed,
    })


def test_switchover_through_pgbouncer_loses_nothing_and_fails_no_client(fo):
    """After the failover above (fo-2 primary): a planned switchover to fo-3 under a steady
    stream of writes through PgBouncer. Clients wait during PAUSE, none gets an error, every
    acknowledged write is on fo-3, and fo-2 comes back as a replica."""
    instances, proxy, spec, password = fo["instances"], fo["proxy"], fo["spec"], fo["password"]
    old, target = instances["fo-2"], instances["fo-3"]
    assert proxy.target == old.port
    with old.connect(dbname="shop") as conn:
        conn.execute("CREATE TABLE sw (id int PRIMARY KEY)")
        conn.execute("GRANT ALL ON sw TO shop")
    acknowledged, errors, stop = [], [], threading.Event()

    def writer():
        i = 0
        while not stop.is_set():
            try:
                with fo["bouncer"].connect("shop") as client:
                    # what clients of a transaction-mode PgBouncer must do: no server-side
                    # prepared statements (they would not exist on the new primary's connections)
                    client.prepare_threshold = None
                    while not stop.is_set():
                        client.execute("INSERT INTO sw VALUES (%s)", (i,))
                        acknowledged.append(i)
                        i += 1
            except psycopg.Error as err:
                errors.append(type(err).__name__)
                i += 1

    thread = threading.Thread(target=writer)
    thread.start()
    wait_until(lambda: len(acknowledged) > 100, message="writes through PgBouncer")
    cluster = LoopbackCluster(instances, proxy)
    plan = execute.Plan(topology_of("fo-2", instances), spec, spec.postgres.database)
    started = time.monotonic()
    state = decide.start(decide.SWITCHOVER, "fo-2", "test: planned", datetime.datetime.now(datetime.timezone.utc),
                         "fo-3")
    state, refusal = run_failover(state, plan, instances, password, cluster, fo["bouncer"].poolers())
    finished = time.monotonic()
    count = len(acknowledged)
    wait_until(lambda: len(acknowledged) > count + 100, message="writes continue on the new primary")
    stop.set()
    thread.join(10)
    assert refusal is None and state["phase"] == decide.COMPLETED and state["to"] == "fo-3"
    assert errors == []
    present = {i for (i,) in target.query("SELECT id FROM sw", dbname="shop")}
    assert set(acknowledged) <= present
    old.start()  # comes back with role=replica (the fence's label)
    wait_until(lambda: receiver(old) == ("streaming", proxy.port, 3), timeout=60, message="fo-2 rejoined")
    report("switchover (loopback)", {"switchover": finished - started,
                                     **{f"step {k}": v for k, v in decide.step_durations(state).items()}},
           acknowledged_writes=len(acknowledged))


def decide_topology_with_routes(primary: str, instances: dict[str, Instance]) -> Topology:
    """After the failover fo-2, which served `search`, is primary and still holds the route."""
    base = topology_of(primary, instances)
    return Topology(primary=primary, routes={"search": "fo-2", "orders": "fo-3", "analytics": "fo-analytics"},
                    instances=base.instances)


# --- synchronous replication: every acknowledged commit survives ------------------------------

def sync_instance_class(standby_names: dict[str, list[str]]):
    """Instance whose postgresql.conf carries synchronous_standby_names as the builder renders
    it (each instance: its promotable peers), so a promoted one keeps the rule."""

    class SyncInstance(Instance):
        def render_config(self) -> None:
            files = {
                "postgresql.conf": config_files.postgresql_conf(self.spec, TEST_RESOURCES, self.analytics,
                                                                synchronous_standby_names=standby_names[self.name]),
                "pg_hba.conf": config_files.pg_hba_conf(self.spec),
            }
            for filename, content in files.items():
                (self.config_dir / filename).write_text(content)

    return SyncInstance


@pytest.fixture(scope="module")
def sync():
    require_binaries(PG_BIN / "postgres", PG_BIN / "pg_rewind", PG_BIN / "pg_basebackup")
    root = make_root("shopdb-failover-sync-")
    scripts = install_scripts(root)
    spec, credentials = make_spec(synchronous={"enabled": True, "number": 1}), Credentials()
    names = ["fs-1", "fs-2", "fs-3"]
    cls = sync_instance_class({n: [m for m in names if m != n] for n in names})
    instances = {n: cls(root, n, spec, credentials, scripts) for n in names}
    primary = instances["fs-1"]
    proxy = ServiceProxy(primary.port)
    primary.role, primary.peer_slots = "primary", ["fs_2", "fs_3"]
    for instance in instances.values():
        instance.primary_port = proxy.port
    try:
        primary.start()
        primary.wait_ready()
        for name in ("fs-2", "fs-3"):
            instances[name].start()
        for name in ("fs-2", "fs-3"):
            instances[name].wait_ready()
        yield {"instances": instances, "proxy": proxy, "spec": spec, "password": credentials.superuser}
    finally:
        stop_all(reversed(list(instances.values())))
        proxy.close()
        shutil.rmtree(root, ignore_errors=True)


def test_synchronous_failover_loses_no_acknowledged_write(sync):
    instances, proxy, spec, password = sync["instances"], sync["proxy"], sync["spec"], sync["password"]
    old, two, three = (instances[n] for n in ("fs-1", "fs-2", "fs-3"))
    assert old.query("SHOW synchronous_standby_names") == [('ANY 1 ("fs-2", "fs-3")',)]
    with old.connect() as conn:
        conn.execute("CREATE TABLE acked (id int PRIMARY KEY)")

    acknowledged: list[int] = []
    stop = threading.Event()

    def writer():
        try:
            with old.connect() as conn:
                for i in range(1_000_000):
                    if stop.is_set():
                        return
                    conn.execute("INSERT INTO acked VALUES (%s)", (i,))
                    acknowledged.append(i)  # commit returned: a standby flushed it
        except psycopg.Error:
            return

    thread = threading.Thread(target=writer)
    thread.start()
    wait_until(lambda: len(acknowledged) > 200, message="writes acknowledged")
    three.stop()  # fs-2 alone acknowledges from now on
    count = len(acknowledged)
    wait_until(lambda: len(acknowledged) > count + 200, message="writes acknowledged by fs-2 alone")
    proxy.partition()
    old.crash()
    stop.set()
    thread.join(10)
    assert acknowledged

    cluster = LoopbackCluster(instances, proxy)
    plan = execute.Plan(topology_of("fs-1", instances), spec, spec.postgres.database)
    now = datetime.datetime.now(datetime.timezone.utc)
    state, refusal = run_failover(decide.start(decide.FAILOVER, "fs-1", "test", now), plan, instances, password,
                                  cluster, NoPoolers())
    # fs-3 cannot be checked, and with ANY 1 it might hold the last acknowledged commit alone.
    assert refusal is not None and refusal.reason == decide.SYNC_UNPROVEN and "fs-3" in refusal.message
    assert cluster.events[-1][:2] == ("Warning", decide.SYNC_UNPROVEN)
    assert old.process.poll() is not None and two.query("SELECT pg_is_in_recovery()") == [(True,)]

    three.start()  # back: now every member of the set is observed
    wait_until(lambda: accepts_queries(three), timeout=60, message="fs-3 up")
    state, refusal = run_failover(state, plan, instances, password, cluster, NoPoolers())
    assert refusal is None and state["phase"] == decide.COMPLETED and state["to"] == "fs-2"
    present = {i for (i,) in two.query("SELECT id FROM acked")}
    assert set(acknowledged) <= present
    # The new primary requires fs-1 or fs-3 for its own commits: fs-3 follows it.
    wait_until(lambda: receiver(three) == ("streaming", proxy.port, 2), timeout=30, message="fs-3 follows")
    with two.connect() as conn:
        conn.execute("INSERT INTO acked VALUES (-1)")
    assert three.query("SELECT count(*) FROM acked WHERE id = -1") == [(1,)]
    report("sync failover (loopback)", {f"step {k}": v for k, v in decide.step_durations(state).items()},
           acknowledged_writes=len(acknowledged))
