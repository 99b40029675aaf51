"""The failover checks' connection cache (failover/connections.py, used by monitor.py): a
connection is reused while its target stays the same, discarded on any error, replaced when
the pod's address, uid or the password changes, and closed when its instance leaves the
topology or the cluster's daemon ends; a failed kept connection falls back to today's fresh
check, so the observations stay those of a fresh connection. No PostgreSQL here: connect,
the TCP check and the query are fakes (tests/dataplane/test_health_connections_server.py
runs the real thing)."""

from __future__ import annotations

import asyncio
import itertools
import socket
import threading
import time

import psycopg
import pytest
from psycopg import errors, pq

from shopdb_operator import postgres
from shopdb_operator.failover import connections, monitor
from shopdb_operator.failover.connections import InstanceConnections, Target
from shopdb_operator.failover.decide import CONNECTION_REFUSED

PRIMARY_ROW = ("f", "0/3000060", None, None, None)
POD = {"pod_exists": True, "pod_uid": "uid-1", "container_running": True, "pod_ready": True}


class FakePgConn:
    status = pq.ConnStatus.OK
    socket = -1  # nothing to wait on


class FakeConn:
    """What InstanceConnections and monitor need of a psycopg.Connection."""

    ids = itertools.count(1)

    def __init__(self, host: str, password: str):
        self.id, self.host, self.password = next(self.ids), host, password
        self.closed = False
        self.pgconn = FakePgConn()

    def close(self) -> None:
        self.closed = True


class Server:
    """The fakes of one run: what connect, the TCP check and the query do and saw."""

    def __init__(self, monkeypatch):
        self.made: list[FakeConn] = []
        self.queried: list[FakeConn] = []
        self.tcp = ""  # what tcp_check answers
        self.fail_with: Exception | None = None  # what the next queries raise
        self.fail_once: list[Exception] = []  # what the next query raises, once each
        self.query_seconds = 0.0
        self.in_use: set[int] = set()
        self.shared = False  # a connection used by two threads at once
        self._lock = threading.Lock()
        monkeypatch.setattr(monitor, "tcp_check", lambda host, port: self.tcp)
        monkeypatch.setattr(monitor.postgres, "connect", self.connect)
        monkeypatch.setattr(monitor, "bounded_row", self.query)

        async def query_async(conn, sql, answer_within, ack_within):
            return self.query(conn, sql, answer_within, ack_within)

        monkeypatch.setattr(monitor, "bounded_row_async", query_async)

    def connect(self, host, port, password, **_):
        conn = FakeConn(host, password)
        self.made.append(conn)
        return conn

    def query(self, conn, sql, answer_within, ack_within):
        assert sql == connections.HEALTH_SQL
        assert not conn.closed
        with self._lock:
            self.shared |= conn.id in self.in_use
            self.in_use.add(conn.id)
        try:
            time.sleep(self.query_seconds)
            self.queried.append(conn)
            if self.fail_once:
                raise self.fail_once.pop(0)
            if self.fail_with is not None:
                raise self.fail_with
            return PRIMARY_ROW
        finally:
            with self._lock:
                self.in_use.discard(conn.id)


@pytest.fixture
def server(monkeypatch) -> Server:
    return Server(monkeypatch)


def check(pool, host="10.0.0.5", password="secret", name="shop-1", **pod):
    return monitor.observe_sql(name, host, 5432, password, pool, **{**POD, **pod})


def test_a_kept_connection_is_reused_and_reports_what_a_fresh_one_does(server):
    pool = InstanceConnections()
    first, second = check(pool), check(pool)
    assert first == second
    assert first.reachable and first.is_writable_primary and first.current_lsn == 0x3000060
    assert len(server.made) == 1 and server.queried == [server.made[0]] * 2
    assert not server.made[0].closed and pool.instances() == ["shop-1"]


def test_without_a_cache_every_check_connects_and_closes_as_before(server):
    check(None), check(None)
    assert len(server.made) == 2 and all(c.closed for c in server.made)


def test_a_connection_that_fails_at_once_is_discarded_and_the_check_made_afresh(server):
    pool = InstanceConnections()
    check(pool)
    kept = server.made[0]
    # The server stopped: the kept session is gone, nothing listens any more.
    server.fail_with, server.tcp = psycopg.OperationalError("server closed the connection unexpectedly"), \
        CONNECTION_REFUSED
    observation = check(pool)
    assert kept.closed and len(pool) == 0
    assert observation.error == CONNECTION_REFUSED and not observation.reachable
    assert observation.down == "nothing listens on its PostgreSQL port"  # the immediate failover still happens
    assert len(server.made) == 1  # the handshake was refused: no connection attempted
    # It came back: the next check connects anew and keeps that connection.
    server.fail_with, server.tcp = None, ""
    assert check(pool).reachable and len(server.made) == 2 and pool.instances() == ["shop-1"]


def test_a_restarted_server_is_observed_again_through_a_new_connection_in_the_same_check(server):
    pool = InstanceConnections()
    check(pool)
    # Restarted between two checks: the kept session was ended, the new server answers.
    server.fail_once.append(errors.AdminShutdown("terminating connection due to administrator command"))
    observation = check(pool)
    assert observation.reachable and server.made[0].closed and len(server.made) == 2
    assert server.queried == [server.made[0], server.made[0], server.made[1]]
    assert pool.instances() == ["shop-1"]


@pytest.mark.parametrize("failure, reported", [
    (connections.Unreachable("not acknowledged"), "Unreachable"),
    (errors.ConnectionTimeout("no answer within 2 s"), "ConnectionTimeout"),
])
def test_a_kept_connection_that_times_out_reports_like_a_fresh_check_without_retrying(server, failure, reported):
    pool = InstanceConnections()
    check(pool)
    server.fail_with = failure
    observation = check(pool)
    assert observation.error == reported and not observation.reachable
    assert server.made[0].closed and len(pool) == 0
    assert len(server.made) == 1  # no second attempt: the check's bound is spent
    server.fail_with = None
    assert check(pool).reachable and len(server.made) == 2


def test_a_slow_failure_is_reported_not_retried(server):
    pool = InstanceConnections()
    check(pool)
    server.fail_with, server.query_seconds = errors.QueryCanceled("statement timeout"), monitor.PORT_CHECK_SECONDS
    observation = check(pool)
    assert observation.error == "QueryCanceled" and len(server.made) == 1 and server.made[0].closed


def test_a_fresh_connection_that_fails_its_query_is_closed_not_kept(server):
    pool = InstanceConnections()
    server.fail_with = errors.QueryCanceled("statement timeout")
    assert check(pool).error == "QueryCanceled"
    assert server.made[0].closed and len(pool) == 0


@pytest.mark.parametrize("change", [
    {"host": "10.0.0.9"},  # the pod was recreated elsewhere
    {"pod_uid": "uid-2"},  # recreated with the same address
    {"password": "rotated"},  # the superuser Secret changed
])
def test_a_new_pod_address_uid_or_password_gets_a_new_connection(server, change):
    pool = InstanceConnections()
    check(pool)
    observation = check(pool, **change)
    assert observation.reachable
    assert len(server.made) == 2 and server.made[0].closed and not server.made[1].closed
    assert server.queried[-1] is server.made[1]
    if "host" in change:
        assert server.made[1].host == "10.0.0.9"
    if "password" in change:
        assert server.made[1].password == "rotated"


def test_no_address_closes_the_instance_connection(server):
    pool = InstanceConnections()
    check(pool)
    assert check(pool, host=None).error == "NoAddress"
    assert server.made[0].closed and len(pool) == 0


def test_connections_of_instances_gone_from_the_topology_are_closed(server):
    pool = InstanceConnections()
    targets = [(name, f"10.0.0.{i}", 5432, POD) for i, name in enumerate(["shop-1", "shop-2", "shop-3"], start=1)]
    monitor.observe_all(targets, "secret", pool)
    assert pool.instances() == ["shop-1", "shop-2", "shop-3"] and len(server.made) == 3
    observations = monitor.observe_all(targets[:2], "secret", pool)  # shop-3 removed from the spec
    assert set(observations) == {"shop-1", "shop-2"} and pool.instances() == ["shop-1", "shop-2"]
    by_host = {c.host: c for c in server.made}
    assert by_host["10.0.0.3"].closed and not by_host["10.0.0.1"].closed and len(server.made) == 3


def kept_check(pool, targets, password="secret"):
    return asyncio.run(monitor.observe_kept(targets, password, pool))


def targets_of(*names, **pod):
    return [(name, f"10.0.0.{i}", 5432, {**POD, **pod}) for i, name in enumerate(names, start=1)]


def test_on_the_event_loop_kept_connections_answer_as_in_a_thread(server):
    pool = InstanceConnections()
    targets = targets_of("shop-1", "shop-2")
    threaded = monitor.observe_all(targets, "secret", pool)
    on_loop = kept_check(pool, targets)
    assert on_loop == threaded and on_loop["shop-1"].is_writable_primary
    assert len(server.made) == 2 and server.queried[2:] == server.made  # the same connections, kept again
    assert pool.instances() == ["shop-1", "shop-2"]


def test_on_the_event_loop_an_instance_without_a_kept_connection_is_left_to_a_fresh_check(server):
    pool = InstanceConnections()
    monitor.observe_all(targets_of("shop-1"), "secret", pool)
    targets = targets_of("shop-1", "shop-2")
    assert set(kept_check(pool, targets)) == {"shop-1"}  # shop-2 was never connected
    assert set(kept_check(pool, targets_of("shop-1", pod_deleting=True))) == set()  # checked afresh, as before
    assert len(server.made) == 1


@pytest.mark.parametrize("failure, reported", [
    (connections.Unreachable("not acknowledged"), "Unreachable"),
    (errors.ConnectionTimeout("no answer within 2 s"), "ConnectionTimeout"),
    (psycopg.OperationalError("server closed the connection unexpectedly"), None),  # failed at once
])
def test_on_the_event_loop_a_failing_kept_connection_is_closed_and_reported_as_in_a_thread(server, failure, reported):
    pool = InstanceConnections()
    targets = targets_of("shop-1")
    monitor.observe_all(targets, "secret", pool)
    server.fail_with = failure
    observed = kept_check(pool, targets)
    assert server.made[0].closed and len(pool) == 0
    if reported is None:
        assert observed == {}  # a fresh check tells why
    else:
        assert observed["shop-1"].error == reported and not observed["shop-1"].reachable
    # the full check that follows takes what the light one found, and checks the rest afresh
    server.fail_with, server.tcp = None, CONNECTION_REFUSED
    full = monitor.observe_all(targets, "secret", pool, observed)
    assert full["shop-1"].error == (reported or CONNECTION_REFUSED)


def test_closing_the_cache_closes_everything_and_later_returns(server):
    pool = InstanceConnections()
    check(pool), check(pool, name="shop-2", host="10.0.0.6")
    pool.close()
    assert all(c.closed for c in server.made) and len(pool) == 0
    # A check still running when the cluster's daemon ended: its connection is closed, not kept.
    assert check(pool).reachable
    assert server.made[-1].closed and len(pool) == 0


def test_a_connection_is_never_used_by_two_threads_at_once_and_none_leaks(server):
    pool = InstanceConnections()
    server.query_seconds = 0.01
    barrier = threading.Barrier(8)

    def checks():
        barrier.wait()
        for _ in range(10):
            assert check(pool).reachable

    threads = [threading.Thread(target=checks) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not server.shared
    open_ = [c for c in server.made if not c.closed]
    assert len(open_) == 1 and pool.instances() == ["shop-1"]  # one kept, every other one closed
    assert len(server.made) < 80  # and connections were reused


def test_a_connection_is_made_anew_once_it_is_too_old(server):
    now = [1000.0]
    pool = InstanceConnections(max_age=300, clock=lambda: now[0])
    check(pool)
    now[0] += 299
    check(pool)
    assert len(server.made) == 1  # reuse does not make it younger
    now[0] += 1
    assert check(pool).reachable
    assert len(server.made) == 2 and server.made[0].closed and not server.made[1].closed


def test_a_pod_being_deleted_is_checked_afresh(server):
    """A smart shutdown keeps its sessions but refuses new ones: checked as before."""
    pool = InstanceConnections()
    check(pool)
    server.tcp = ""
    check(pool, pod_deleting=True)
    assert len(server.made) == 2 and all(c.closed for c in server.made) and len(pool) == 0


def test_take_refuses_a_connection_kept_for_another_target():
    pool = InstanceConnections()
    conn = FakeConn("10.0.0.5", "secret")
    pool.keep("shop-1", Target.of("10.0.0.5", 5432, "uid-1", "secret"), conn)
    assert pool.take("shop-1", Target.of("10.0.0.5", 5433, "uid-1", "secret")) is None
    assert conn.closed and len(pool) == 0


def test_take_gives_the_connection_to_one_caller_only():
    pool = InstanceConnections()
    target = Target.of("10.0.0.5", 5432, "uid-1", "secret")
    conn = FakeConn("10.0.0.5", "secret")
    pool.keep("shop-1", target, conn)
    kept = pool.take("shop-1", target)
    assert kept.conn is conn and pool.take("shop-1", target) is None
    pool.keep("shop-1", target, conn, kept.born)
    assert pool.take("shop-1", target).born == kept.born


def test_take_refuses_a_broken_connection():
    pool = InstanceConnections()
    target = Target.of("10.0.0.5", 5432, "uid-1", "secret")
    conn = FakeConn("10.0.0.5", "secret")
    conn.pgconn.status = pq.ConnStatus.BAD
    pool.keep("shop-1", target, conn)
    assert pool.take("shop-1", target) is None and conn.closed


def test_the_target_holds_no_password():
    target = Target.of("10.0.0.5", 5432, "uid-1", "s3cr3t-password")
    assert "s3cr3t-password" not in repr(target)


def test_the_health_query_is_postgres_health_query():
    """monitor sends postgres.health()'s statement through libpq itself: the same text."""
    seen = []

    class Capture:
        def execute(self, sql, params=()):
            seen.append(sql)
            return self

        def fetchone(self):
            return (False, "0/1", None, None, None)

    postgres.health(Capture())
    assert seen == [connections.HEALTH_SQL]


# --- bounded_row, on a fake libpq connection over a real socket --------------------------------

class Result:
    def __init__(self, status, values=(), sqlstate=b""):
        self.status, self._values, self._sqlstate = status, values, sqlstate
        self.ntuples, self.nfields = (1 if values else 0), len(values)
        self.error_message = b"ERROR:  canceling statement due to statement timeout"

    def get_value(self, row, column):
        return self._values[column]

    def error_field(self, field):
        return self._sqlstate


class SilentPgConn:
    """A libpq connection whose server never answers (the socket never becomes readable),
    or answers `results` once `answer` is called."""

    status = pq.ConnStatus.OK
    transaction_status = pq.TransactionStatus.IDLE

    def __init__(self, results=()):
        self.ours, self.theirs = socket.socketpair()
        self.socket = self.ours.fileno()
        self.nonblocking = 0
        self.sent = []
        self.results = list(results)
        self.answered = False

    def send_query(self, sql):
        self.sent.append(sql)

    def flush(self):
        return 0

    def answer(self):
        self.theirs.send(b"x")
        self.answered = True

    def consume_input(self):
        self.ours.recv(16)

    def is_busy(self):
        return not self.answered

    def get_result(self):
        return self.results.pop(0) if self.results else None


class Holder:
    def __init__(self, pgconn):
        self.pgconn = pgconn


@pytest.fixture(params=["in a thread", "on the event loop"])
def bounded_row(request):
    """bounded_row() and bounded_row_async() answer the same, under the same bounds."""
    if request.param == "in a thread":
        return connections.bounded_row
    return lambda *args, **kwargs: asyncio.run(connections.bounded_row_async(*args, **kwargs))


def test_bounded_row_reads_one_row_as_text(bounded_row):
    pgconn = SilentPgConn([Result(pq.ExecStatus.TUPLES_OK, (b"t", None, b"0/5000000", b"0/4000000", b"streaming"))])
    pgconn.answer()
    row = bounded_row(Holder(pgconn), "SELECT 1", answer_within=1, ack_within=0.5)
    assert row == ("t", None, "0/5000000", "0/4000000", "streaming")
    assert pgconn.sent == [b"SELECT 1"] and pgconn.nonblocking == 1


def test_bounded_row_raises_the_servers_error_class(bounded_row):
    pgconn = SilentPgConn([Result(pq.ExecStatus.FATAL_ERROR, sqlstate=b"57014")])
    pgconn.answer()
    with pytest.raises(errors.QueryCanceled):
        bounded_row(Holder(pgconn), "SELECT 1", answer_within=1, ack_within=0.5)


def test_bounded_row_unacknowledged_query_is_unreachable_after_the_ack_bound(monkeypatch, bounded_row):
    monkeypatch.setattr(connections, "unacknowledged_bytes", lambda fd: 120)
    started = time.monotonic()
    with pytest.raises(connections.Unreachable):
        bounded_row(Holder(SilentPgConn()), "SELECT 1", answer_within=1.0, ack_within=0.1)
    assert 0.1 <= time.monotonic() - started < 0.5


def test_bounded_row_acknowledged_but_unanswered_query_times_out_at_the_answer_bound(monkeypatch, bounded_row):
    monkeypatch.setattr(connections, "unacknowledged_bytes", lambda fd: 0)  # a stopped server's kernel acks
    started = time.monotonic()
    with pytest.raises(errors.ConnectionTimeout):
        bounded_row(Holder(SilentPgConn()), "SELECT 1", answer_within=0.3, ack_within=0.1)
    assert 0.3 <= time.monotonic() - started < 0.8


def test_bounded_row_refuses_a_connection_that_is_not_idle(bounded_row):
    pgconn = SilentPgConn()
    pgconn.transaction_status = pq.TransactionStatus.INTRANS
    with pytest.raises(psycopg.OperationalError):
        bounded_row(Holder(pgconn), "SELECT 1", answer_within=1, ack_within=0.5)
    assert pgconn.sent == []


def test_unacknowledged_bytes_of_a_socket_whose_peer_acknowledged():
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    try:
        client.send(b"x" * 100)  # the peer's kernel acknowledges it, although nobody reads
        deadline = time.monotonic() + 2
        while connections.unacknowledged_bytes(client.fileno()) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert connections.unacknowledged_bytes(client.fileno()) in (0, None)
    finally:
        client.close()
        listener.close()


def test_unacknowledged_bytes_is_none_where_the_kernel_cannot_say():
    assert connections.unacknowledged_bytes(999_999) is None  # not a socket (EBADF)


def test_the_failover_daemon_closes_its_connections_when_it_ends(monkeypatch):
    """The cluster deleted or the operator stopping: the daemon's kept sessions end with it."""
    import logging

    from shopdb_operator.handlers import failover as handler

    memories, original = [], handler.Memory

    def memory():
        made = original()
        memories.append(made)
        return made

    class Stopped:
        checks = 0

        def __bool__(self):  # stopping after the second check
            return self.checks >= 2

    stopped = Stopped()

    seen = []

    def locked_check(memory, name, namespace, post_event, logger, observed=None):
        seen.append(kopf_context.get(None))  # kopf.event() reads its settings from the context
        stopped.checks += 1
        memory.connections.keep("shop-1", Target.of("10.0.0.5", 5432, "uid-1", "secret"), conn)

    conn = FakeConn("10.0.0.5", "secret")
    monkeypatch.setattr(handler, "Memory", memory)
    monkeypatch.setattr(handler, "locked_check", locked_check)
    import contextvars
    kopf_context = contextvars.ContextVar("kopf_context")

    async def daemon():
        kopf_context.set("the operator's")
        await handler.failover_daemon(name="shop", namespace="shop",
                                      body={"spec": {"failover": {"checkIntervalSeconds": 1}}},
                                      stopped=stopped, logger=logging.getLogger("test"))

    asyncio.run(daemon())
    assert len(memories) == 1 and len(memories[0].connections) == 0 and conn.closed
    assert seen == ["the operator's"] * 2  # each check ran in the daemon's context


def test_a_clusters_check_threads_are_kept_between_checks_and_end_with_it():
    pool = InstanceConnections()
    first = pool.executor(2)
    names = set(first.map(lambda _: threading.current_thread().name, range(8)))
    assert pool.executor(2) is first and pool.executor(1) is first  # the same threads, check after check
    assert set(first.map(lambda _: threading.current_thread().name, range(8))) <= names | {
        f"check_{i}" for i in range(2)}
    grown = pool.executor(3)  # an instance added to the topology
    assert grown is not first and grown._max_workers == 3
    pool.close()
    assert pool.executor(2) is None
    with pytest.raises(RuntimeError):
        grown.submit(lambda: None)  # shut down with the cluster's daemon
