"""The failover checks' kept connections against a real PostgreSQL 15 (failover/monitor.py
with failover/connections.py): many checks share one server session; a server stopped at
once (pg_ctl stop -m immediate) is still reported ConnectionRefused (the immediate failover),
one that stops answering (its postmaster and backends SIGSTOPped) ConnectionTimeout, and one
whose address stops answering at all (its port blackholed on loopback: a vanished pod, a cut
node) Unreachable, each within the bound of a check without a kept connection and as that
check reports it; and a server that came back is observed again, through a new connection."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from harness import PG_BIN, Credentials, Instance, install_scripts, make_root, make_spec, require_binaries, \
    run_as_postgres
from shopdb_operator.failover import monitor
from shopdb_operator.failover.connections import InstanceConnections, Target
from shopdb_operator.failover.decide import CONNECTION_REFUSED

POD = {"pod_exists": True, "pod_uid": "uid-1", "container_running": True, "pod_ready": True}
# Today's bounds (monitor.py): a refused handshake at once, a hung server's connect 2 s.
REFUSED_WITHIN = monitor.PORT_CHECK_SECONDS
HUNG_WITHIN = monitor.PORT_CHECK_SECONDS + monitor.CONNECT_TIMEOUT_SECONDS


@pytest.fixture
def primary():
    require_binaries(PG_BIN / "postgres", PG_BIN / "pg_ctl")
    root = make_root("shopdb-health-")
    instance = Instance(root, "health-1", make_spec(), Credentials(), install_scripts(root))
    instance.role = "primary"
    instance.start()
    instance.wait_ready()
    yield instance
    resume(instance)
    instance.stop(timeout=30)
    instance.kill()
    shutil.rmtree(root, ignore_errors=True)


def check(instance: Instance, pool: InstanceConnections | None):
    started = time.monotonic()
    observation = monitor.observe_sql(instance.name, "127.0.0.1", instance.port, instance.credentials.superuser,
                                      pool, **POD)
    return observation, time.monotonic() - started


def kept_backend(instance: Instance, pool: InstanceConnections) -> int | None:
    """The server PID of the session kept for the instance (None: nothing kept)."""
    target = Target.of("127.0.0.1", instance.port, POD["pod_uid"], instance.credentials.superuser)
    kept = pool.take(instance.name, target)
    if kept is None:
        return None
    pid = kept.conn.pgconn.backend_pid
    pool.keep(instance.name, target, kept.conn, kept.born)
    return pid


def server_processes(instance: Instance) -> list[int]:
    """The postmaster and its children (each backend is a process group of its own)."""
    postmaster = int((instance.pgdata / "postmaster.pid").read_text().split("\n", 1)[0])
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == postmaster:
                children.append(int(entry.name))
    return [postmaster, *children]


_stopped: list[int] = []


def freeze(instance: Instance) -> None:
    for pid in server_processes(instance):  # the postmaster first: it forks no new backend then
        os.kill(pid, signal.SIGSTOP)
        _stopped.append(pid)


def resume(instance: Instance) -> None:
    while _stopped:
        try:
            os.kill(_stopped.pop(), signal.SIGCONT)
        except ProcessLookupError:
            pass


def stop_immediately(instance: Instance) -> None:
    process = run_as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(instance.pgdata), "-m", "immediate", "-w",
                               "stop"], instance.env())
    assert process.wait(60) == 0
    instance.wait_exit(30)


@contextmanager
def blackholed(port: int):
    """Packets to `port` on loopback dropped: neither a handshake nor data is acknowledged."""
    if os.geteuid() != 0 or shutil.which("iptables") is None:
        pytest.skip("needs root and iptables to blackhole a loopback port")
    rule = ["INPUT", "-i", "lo", "-p", "tcp", "--dport", str(port), "-m", "comment", "--comment",
            "shopdb-dataplane-health-blackhole", "-j", "DROP"]
    subprocess.run(["iptables", "-w", "-I", *rule], check=True, capture_output=True)
    try:
        yield
    finally:
        subprocess.run(["iptables", "-w", "-D", *rule], check=True, capture_output=True)


def test_checks_share_one_server_session(primary):
    pool = InstanceConnections()
    first, _ = check(primary, pool)
    backend = kept_backend(primary, pool)
    assert first.reachable and first.is_writable_primary and backend is not None
    for _ in range(5):
        observation, _ = check(primary, pool)
        assert observation.reachable and observation.is_writable_primary
        assert observation.current_lsn is not None and observation.current_lsn >= first.current_lsn
    assert kept_backend(primary, pool) == backend
    sessions = primary.query("SELECT count(*) FROM pg_stat_activity WHERE pid = %s AND application_name = "
                             "'shopdb-operator'", (backend,))
    assert sessions == [(1,)]
    pool.close()
    assert kept_backend(primary, pool) is None


def test_a_stopped_server_is_refused_with_a_kept_connection_as_without(primary):
    pool = InstanceConnections()
    assert check(primary, pool)[0].reachable and kept_backend(primary, pool) is not None
    stop_immediately(primary)

    kept, took = check(primary, pool)
    fresh, fresh_took = check(primary, None)
    assert kept == fresh
    assert kept.error == CONNECTION_REFUSED and kept.down == "nothing listens on its PostgreSQL port"
    assert took < REFUSED_WITHIN and fresh_took < REFUSED_WITHIN
    print(f"stopped: kept {took:.3f}s, fresh {fresh_took:.3f}s")
    assert kept_backend(primary, pool) is None

    primary.start()  # the container restarted
    primary.wait_ready()
    back, _ = check(primary, pool)
    assert back.reachable and back.is_writable_primary and kept_backend(primary, pool) is not None


def test_a_server_that_stops_answering_times_out_with_a_kept_connection_as_without(primary):
    pool = InstanceConnections()
    assert check(primary, pool)[0].reachable
    before = kept_backend(primary, pool)
    freeze(primary)
    try:
        kept, took = check(primary, pool)
        fresh, fresh_took = check(primary, None)
    finally:
        resume(primary)
    assert not kept.reachable and kept == fresh
    assert kept.error == "ConnectionTimeout"
    # Within today's bound, and no later than the check without a kept connection.
    assert took < HUNG_WITHIN and fresh_took < HUNG_WITHIN
    assert took < fresh_took + 0.25, (took, fresh_took)
    print(f"hung: kept {took:.2f}s, fresh {fresh_took:.2f}s")
    assert kept_backend(primary, pool) is None  # the timed-out connection was closed

    back, _ = check(primary, pool)  # answering again: observed through a new session
    assert back.reachable and back.is_writable_primary
    after = kept_backend(primary, pool)
    assert after is not None and after != before


def test_a_kept_session_runs_under_the_checks_timeouts(primary):
    pool = InstanceConnections()
    assert check(primary, pool)[0].reachable
    target = Target.of("127.0.0.1", primary.port, POD["pod_uid"], primary.credentials.superuser)
    conn = pool.take(primary.name, target).conn
    try:
        rows = dict(conn.execute("SELECT name, setting FROM pg_settings WHERE name IN "
                                 "('statement_timeout', 'tcp_keepalives_idle')").fetchall())
        assert rows == {"statement_timeout": str(monitor.STATEMENT_TIMEOUT_MS), "tcp_keepalives_idle": "10"}
    finally:
        conn.close()


def test_an_address_that_stops_answering_is_unreachable_within_the_handshake_bound(primary):
    pool = InstanceConnections()
    assert check(primary, pool)[0].reachable
    before = kept_backend(primary, pool)
    with blackholed(primary.port):
        kept, took = check(primary, pool)
        fresh, fresh_took = check(primary, None)
    assert kept == fresh and kept.error == "Unreachable" and not kept.reachable
    assert took < monitor.PORT_CHECK_SECONDS + 0.2 and fresh_took < monitor.PORT_CHECK_SECONDS + 0.2, (took, fresh_took)
    print(f"blackholed: kept {took:.2f}s, fresh {fresh_took:.2f}s")
    assert kept_backend(primary, pool) is None

    back, _ = check(primary, pool)
    assert back.reachable and kept_backend(primary, pool) not in (None, before)


def test_a_server_shutting_down_is_named_so_and_is_certainly_down(primary):
    """A smart shutdown (SIGTERM) waits for its sessions and refuses new ones with "the
    database system is shutting down", as an immediate one (a killed container) does for
    the moment its backends take to exit: the check names it (decide.SHUTTING_DOWN), so a
    primary going away fails over at once rather than after the failure threshold."""
    import psycopg

    from shopdb_operator.failover.decide import SHUTTING_DOWN

    session = psycopg.connect(host="127.0.0.1", port=primary.port, user="postgres",
                              password=primary.credentials.superuser, dbname="postgres")
    try:
        postmaster = int((primary.pgdata / "postmaster.pid").read_text().split("\n", 1)[0])
        os.kill(postmaster, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while True:
            observation, _ = check(primary, None)
            if observation.error == SHUTTING_DOWN or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert observation.error == SHUTTING_DOWN and observation.down == "it is shutting down", observation
    finally:
        session.close()
    assert primary.wait_exit(30) is not None


# --- the light checks' path: the kept sessions queried on the event loop (monitor.observe_kept)

def light_check(instance: Instance, pool: InstanceConnections):
    import asyncio

    started = time.monotonic()
    found = asyncio.run(monitor.observe_kept([(instance.name, "127.0.0.1", instance.port, POD)],
                                             instance.credentials.superuser, pool))
    return found.get(instance.name), time.monotonic() - started


def test_on_the_event_loop_the_kept_session_answers_as_in_a_thread(primary):
    pool = InstanceConnections()
    threaded, _ = check(primary, pool)
    backend = kept_backend(primary, pool)
    observation, _ = light_check(primary, pool)
    assert observation is not None and observation.reachable and observation.is_writable_primary
    assert observation.current_lsn >= threaded.current_lsn
    assert kept_backend(primary, pool) == backend  # the same server session, kept again


def test_on_the_event_loop_a_server_that_stops_answering_times_out_within_the_bound(primary):
    pool = InstanceConnections()
    assert check(primary, pool)[0].reachable
    freeze(primary)
    try:
        observation, took = light_check(primary, pool)
    finally:
        resume(primary)
    assert observation is not None and observation.error == "ConnectionTimeout" and not observation.reachable
    assert took < HUNG_WITHIN, took
    assert kept_backend(primary, pool) is None  # closed, not kept


def test_on_the_event_loop_a_stopped_server_is_left_to_a_fresh_check_which_finds_it_refused(primary):
    pool = InstanceConnections()
    assert check(primary, pool)[0].reachable
    stop_immediately(primary)
    observation, took = light_check(primary, pool)
    assert observation is None and took < REFUSED_WITHIN  # the session failed at once
    full = monitor.observe_all([(primary.name, "127.0.0.1", primary.port, POD)], primary.credentials.superuser,
                               pool, {})
    assert full[primary.name].error == CONNECTION_REFUSED
    primary.start()
    primary.wait_ready()
