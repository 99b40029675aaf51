"""A primary and three replicas started through the real scripts."""

from __future__ import annotations

import secrets
import threading
import time

import psycopg
import pytest

from harness import wait_until
from shopdb_operator import postgres


def test_primary_bootstrap_created_roles_database_slots_and_schema(shop_cluster):
    primary = shop_cluster.primary
    roles = dict(primary.query("SELECT rolname, rolreplication FROM pg_roles "
                               "WHERE rolname IN ('streaming_replica', 'shop')"))
    assert roles == {"streaming_replica": True, "shop": False}
    assert primary.query("SHOW data_checksums") == [("on",)]
    assert primary.query("SHOW password_encryption") == [("scram-sha-256",)]
    hashes = primary.query("SELECT rolname, left(rolpassword, 14) FROM pg_authid "
                           "WHERE rolname IN ('postgres', 'shop', 'streaming_replica')")
    assert {h for _, h in hashes} == {"SCRAM-SHA-256$"}
    slots = {name for (name,) in primary.query("SELECT slot_name FROM pg_replication_slots")}
    assert slots == {"shop_2", "shop_3", "shop_analytics"}
    # The init SQL ran as the owner, in the application database.
    owners = dict(primary.query(
        "SELECT c.relname, pg_get_userbyid(c.relowner) FROM pg_class c "
        "WHERE c.relname IN ('orders', 'shop_analytics')", dbname="shop"))
    assert owners == {"orders": "shop", "shop_analytics": "shop"}


def test_every_replica_streams_from_its_slot_and_is_read_only(shop_cluster):
    streaming = dict(shop_cluster.primary.query(
        "SELECT application_name, state FROM pg_stat_replication"))
    assert streaming == {r.name: "streaming" for r in shop_cluster.replicas}
    for replica in shop_cluster.replicas:
        with replica.connect() as conn:
            assert postgres.is_in_recovery(conn)
            receiver = postgres.wal_receiver(conn)
            assert receiver.status == "streaming" and receiver.slot_name == replica.slot
            assert receiver.sender_port == shop_cluster.primary.port
        with replica.connect("shop", "shop") as conn, pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute("INSERT INTO shops (name, slug) VALUES ('x', 'x')")


def test_a_walreceiver_cannot_be_restarted_over_sql(shop_cluster):
    """Why the failover's repoint step rewrites nothing: pg_terminate_backend() refuses the
    walreceiver (an auxiliary process), so a receiver stuck on a dead primary waits for
    wal_receiver_timeout; the Service name in primary_conninfo does the re-pointing."""
    replica = shop_cluster.replicas[0]
    assert replica.query("SELECT status FROM pg_stat_wal_receiver") == [("streaming",)]
    assert replica.query("SELECT pg_terminate_backend(pid) FROM pg_stat_wal_receiver") == [(False,)]
    assert replica.query("SELECT status FROM pg_stat_wal_receiver") == [("streaming",)]


def test_writes_on_the_primary_are_visible_on_every_replica(shop_cluster):
    slug = "visible-" + secrets.token_hex(4)
    with shop_cluster.primary.connect("shop", "shop") as conn:
        conn.execute("INSERT INTO shops (name, slug) VALUES ('Visible', %s)", (slug,))
        written = postgres.current_lsn(conn)
    for replica in shop_cluster.replicas:
        wait_until(lambda: replica.query("SELECT count(*) FROM shops WHERE slug = %s", (slug,),
                                         dbname="shop") == [(1,)],
                   timeout=15, message=f"{slug} on {replica.name}")
        with replica.connect() as conn:
            assert postgres.lsn_to_int(postgres.replayed_lsn(conn)) >= postgres.lsn_to_int(written)


def test_probes_tell_the_truth_on_a_healthy_cluster(shop_cluster):
    for instance in shop_cluster.instances:
        for kind in ("startup", "live", "ready"):
            result = instance.probe(kind)
            assert result.returncode == 0, (instance.name, kind, result.stdout)
    # A fenced primary (default_transaction_read_only, as a failover fences it) takes no writes.
    primary = shop_cluster.primary
    with primary.connect() as conn:
        conn.execute("ALTER SYSTEM SET default_transaction_read_only = on")
        conn.execute("SELECT pg_reload_conf()")
        try:
            wait_until(lambda: primary.probe("ready").returncode == 1, timeout=5, message="fenced primary unready")
            assert "read-only" in primary.probe("ready").stdout
            assert primary.probe("live").returncode == 0
        finally:
            conn.execute("ALTER SYSTEM RESET default_transaction_read_only")
            conn.execute("SELECT pg_reload_conf()")
    wait_until(lambda: primary.probe("ready").returncode == 0, timeout=5, message="unfenced primary ready")


def test_analytics_replica_keeps_a_long_query_alive_while_the_primary_vacuums(shop_cluster):
    """hot_standby_feedback: the primary keeps rows the long query sees, so replay neither
    cancels the query nor waits for it."""
    primary, analytics = shop_cluster.primary, shop_cluster.analytics
    with primary.connect("shop", "shop") as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS feedback_probe (id int, payload text)")
        conn.execute("TRUNCATE feedback_probe")
        conn.execute("INSERT INTO feedback_probe SELECT g, repeat('x', 200) FROM generate_series(1, 20000) g")
    wait_until(lambda: analytics.query("SELECT count(*) FROM feedback_probe", dbname="shop") == [(20000,)],
               message="rows on analytics")

    long_query_result: list = []

    def long_query():
        try:
            with analytics.connect("shop", "shop", statement_timeout_ms=0, autocommit=False) as conn:
                conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                first = conn.execute("SELECT count(*) FROM feedback_probe").fetchone()[0]
                conn.execute("SELECT pg_sleep(6)")
                second = conn.execute("SELECT count(*), sum(length(payload)) FROM feedback_probe").fetchone()
                long_query_result.append((first, second))
        except psycopg.Error as error:  # a cancellation lands here and fails the test below
            long_query_result.append(error)

    thread = threading.Thread(target=long_query)
    thread.start()
    # The primary learns the standby's snapshot through the slot before it deletes.
    wait_until(lambda: primary.query(
        "SELECT xmin IS NOT NULL FROM pg_replication_slots WHERE slot_name = 'shop_analytics'") == [(True,)],
        timeout=10, message="hot standby feedback on the analytics slot")
    time.sleep(1.5)
    with primary.connect("shop", "shop") as conn:
        with conn.transaction():
            conn.execute("DELETE FROM feedback_probe")
            deleting_xid = int(conn.execute("SELECT pg_current_xact_id()::text").fetchone()[0])
        conn.execute("VACUUM feedback_probe")
        conn.execute("INSERT INTO feedback_probe VALUES (-1, 'after vacuum')")
    # The analytics slot holds the primary's horizon behind the query's snapshot, so VACUUM
    # left the deleted rows for it: nothing for replay to conflict with.
    slot_xmin = int(primary.query(
        "SELECT xmin::text FROM pg_replication_slots WHERE slot_name = 'shop_analytics'")[0][0])
    assert slot_xmin <= deleting_xid
    # Replay continues during the query: the row written after VACUUM shows up meanwhile.
    wait_until(lambda: analytics.query("SELECT count(*) FROM feedback_probe WHERE id = -1",
                                       dbname="shop") == [(1,)],
               timeout=4, message="replay on the analytics replica during the long query")
    assert thread.is_alive(), "the long query should still be running"
    thread.join(30)
    assert long_query_result and not isinstance(long_query_result[0], Exception), long_query_result
    first, (second_count, second_bytes) = long_query_result[0]
    assert first == second_count == 20000 and second_bytes == 20000 * 200


def test_no_password_reaches_a_log_or_a_command_line(shop_cluster):
    creds = shop_cluster.credentials
    secrets_ = [creds.superuser, creds.replication, creds.owner]
    for instance in shop_cluster.instances:
        log = instance.log_text()
        assert log and not any(p in log for p in secrets_), instance.name
        cmdline = open(f"/proc/{instance.process.pid}/cmdline", "rb").read().decode(errors="replace")
        assert "primary_conninfo=" in cmdline and not any(p in cmdline for p in secrets_)

