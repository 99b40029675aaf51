"""An instance decides its role from the recorded primary, never from its own data: a
former primary restarted while another instance is the recorded primary comes back
read-only and streaming, by pg_rewind or, when rewinding is impossible, by a fresh clone."""

from __future__ import annotations

import shutil
import subprocess
import time

import psycopg
import pytest

from harness import (PG_BIN, Credentials, Instance, free_port, install_scripts, make_root,
                     make_spec, require_binaries, run_as_postgres, stop_all, wait_until)
from shopdb_operator import postgres


@pytest.fixture(scope="module")
def pair():
    require_binaries(PG_BIN / "postgres", PG_BIN / "pg_rewind", PG_BIN / "pg_basebackup")
    root = make_root("shopdb-role-safety-")
    scripts = install_scripts(root)
    spec, credentials = make_spec(), Credentials()
    a = Instance(root, "rs-1", spec, credentials, scripts)
    b = Instance(root, "rs-2", spec, credentials, scripts)
    a.role, a.peer_slots = "primary", [b.slot]
    b.primary_port = a.port
    try:
        a.start()
        a.wait_ready()
        b.start()
        b.wait_ready()
        yield a, b
    finally:
        stop_all([b, a])
        shutil.rmtree(root, ignore_errors=True)


def record_primary(new_primary: Instance, former: Instance) -> None:
    """What the operator's failover records: roles, and where every instance finds the primary."""
    new_primary.role, former.role = "primary", "replica"
    former.primary_port = new_primary.port
    new_primary.primary_port = None


def promote(instance: Instance) -> None:
    with instance.connect() as conn:
        assert postgres.promote(conn, wait_seconds=30)


def write_marker(instance: Instance, value: str) -> None:
    with instance.connect() as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS marker (value text)")
        conn.execute("INSERT INTO marker VALUES (%s)", (value,))


def markers(instance: Instance) -> set[str]:
    return {v for (v,) in instance.query("SELECT value FROM marker")}


def assert_streams_read_only_from(replica: Instance, primary: Instance) -> None:
    replica.wait_ready()
    with replica.connect() as conn:
        assert postgres.is_in_recovery(conn)
        receiver = postgres.wal_receiver(conn)
        assert receiver.status == "streaming" and receiver.sender_port == primary.port
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute("INSERT INTO marker VALUES ('must fail')")
    write_marker(primary, "after-rejoin-" + replica.name)
    wait_until(lambda: "after-rejoin-" + replica.name in markers(replica), message="replication after rejoin")


def diverge(old_primary: Instance, new_primary: Instance, tag: str) -> None:
    """Promote the replica while the old primary still takes writes (the split brain that
    fencing prevents in production): both now hold writes the other lacks."""
    write_marker(old_primary, f"{tag}-before")
    wait_until(lambda: f"{tag}-before" in markers(new_primary), message="replica caught up")
    promote(new_primary)
    write_marker(old_primary, f"{tag}-lost")
    write_marker(new_primary, f"{tag}-kept")
    old_primary.stop()


def test_killed_primary_recovers_its_committed_writes_and_the_replica_resumes(pair):
    a, b = pair
    write_marker(a, "before-crash")
    a.crash()
    a.start()
    a.wait_ready()
    assert "before-crash" in markers(a)
    with a.connect() as conn:
        assert not postgres.is_in_recovery(conn)
    write_marker(a, "after-crash")
    wait_until(lambda: "after-crash" in markers(b), timeout=40, message="replica resumes streaming")


def test_stop_script_shuts_down_fast_despite_open_client_connections(pair):
    """stop.sh shuts down fast: a smart shutdown (SIGTERM) would wait for PgBouncer's connections."""
    a, b = pair
    client = b.connect()  # an idle pooled server connection
    started = time.monotonic()
    stop = run_as_postgres(["bash", str(b.scripts / "stop.sh"), "30"], b.env(),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out, _ = stop.communicate(timeout=40)
    assert stop.returncode == 0, out
    assert b.wait_exit(10) == 0
    assert time.monotonic() - started < 10
    client.close()
    state = subprocess.run([str(PG_BIN / "pg_controldata"), "-D", str(b.pgdata)], capture_output=True,
                           text=True, env={"LC_ALL": "C"}).stdout
    assert "Database cluster state:               shut down in recovery" in state
    b.start()
    b.wait_ready()


def test_replica_is_unready_but_live_while_its_primary_is_down(pair):
    a, b = pair
    a.stop()
    try:
        wait_until(lambda: b.probe("ready").returncode == 1, timeout=40, message="replica unready")
        assert "not streaming" in b.probe("ready").stdout
        assert b.probe("live").returncode == 0
    finally:
        a.start()
        a.wait_ready()
    b.wait_ready(timeout=60)


def test_former_primary_never_starts_writable_without_its_recorded_primary(pair):
    a, b = pair
    diverge(a, b, "unreachable")
    record_primary(b, a)
    a.primary_port = free_port()  # nothing listens there
    a.extra_env = {"SHOPDB_PRIMARY_WAIT_SECONDS": "3"}
    a.start()
    assert a.wait_exit(30) != 0
    assert "refusing to start a former primary without rewinding it" in a.log_text()
    with pytest.raises(psycopg.OperationalError):
        a.connect().close()
    a.extra_env = {}
    a.primary_port = b.port


def test_former_primary_rejoins_by_rewinding(pair):
    a, b = pair  # after the previous test: b is the writable primary, a is stopped, diverged
    a.start()
    assert_streams_read_only_from(a, b)
    assert "pg_rewind finished" in a.log_text()
    assert "unreachable-lost" not in markers(a)
    assert {"unreachable-before", "unreachable-kept"} <= markers(a)
    # The new primary got a slot for the rejoined instance from the instance itself.
    assert b.query("SELECT active FROM pg_replication_slots WHERE slot_name = %s", (a.slot,)) == [(True,)]


def test_former_primary_rejoins_by_recloning_when_rewind_is_impossible(pair):
    a, b = pair  # b primary, a replica
    diverge(b, a, "reclone")
    record_primary(a, b)
    # Without its WAL, pg_rewind cannot find what the former primary changed.
    for segment in (b.pgdata / "pg_wal").iterdir():
        if segment.is_file() and len(segment.name) == 24:
            segment.unlink()
    b.start()
    assert_streams_read_only_from(b, a)
    log = b.log_text()
    assert "pg_rewind failed; discarding the diverged data and cloning from the primary" in log
    assert "clone complete" in log
    assert "reclone-lost" not in markers(b)
    assert {"reclone-before", "reclone-kept"} <= markers(b)


def test_recorded_primary_holding_a_standby_promotes_itself_on_start(pair):
    """The operator recorded `b` as primary while it still ran as a standby (restart between
    relabel and promote): it starts writable on a new timeline, `a` follows it."""
    a, b = pair  # a primary, b replica
    a.stop()
    b.stop()
    record_primary(b, a)
    b.start()
    b.wait_ready()
    with b.connect() as conn:
        assert not postgres.is_in_recovery(conn)
    assert "holds a standby: promoting it" in b.log_text()
    a.start()
    assert_streams_read_only_from(a, b)
