"""A replica that received WAL past the fork of the promoted replica's timeline (the
analytics replica is never a failover candidate, so it can be ahead) rewinds on restart
and follows the new primary; data from another cluster is never touched."""

from __future__ import annotations

import shutil

import pytest

from harness import (PG_BIN, Credentials, Instance, install_scripts, make_root, make_spec,
                     require_binaries, stop_all, wait_until)
from shopdb_operator import postgres


@pytest.fixture(scope="module")
def trio():
    require_binaries(PG_BIN / "postgres", PG_BIN / "pg_rewind", PG_BIN / "pg_basebackup")
    root = make_root("shopdb-timeline-")
    scripts = install_scripts(root)
    spec, credentials = make_spec(), Credentials()
    a = Instance(root, "tl-1", spec, credentials, scripts)
    b = Instance(root, "tl-2", spec, credentials, scripts)
    c = Instance(root, "tl-analytics", spec, credentials, scripts, analytics=True)
    a.role, a.peer_slots = "primary", [b.slot, c.slot]
    b.primary_port = c.primary_port = a.port
    try:
        a.start()
        a.wait_ready()
        b.start()
        c.start()
        b.wait_ready()
        c.wait_ready()
        yield a, b, c
    finally:
        stop_all([c, b, a])
        shutil.rmtree(root, ignore_errors=True)


def values(instance: Instance) -> set[str]:
    return {v for (v,) in instance.query("SELECT v FROM t")}


def test_replica_ahead_of_the_new_primary_rewinds_and_follows_it(trio):
    a, b, c = trio
    with a.connect() as conn:
        conn.execute("CREATE TABLE t (v text)")
        conn.execute("INSERT INTO t VALUES ('common')")
    wait_until(lambda: values(b) == values(c) == {"common"}, message="both replicas caught up")
    b.stop()
    with a.connect() as conn:
        conn.execute("INSERT INTO t VALUES ('only-on-analytics')")
    wait_until(lambda: "only-on-analytics" in values(c), message="analytics ahead")
    a.stop()
    # The operator records b as primary; it promotes itself at start.
    b.role, b.primary_port = "primary", None
    b.start()
    b.wait_ready()
    with b.connect() as conn:
        conn.execute("INSERT INTO t VALUES ('new-timeline')")
    c.stop()
    c.primary_port = b.port
    c.start()
    c.wait_ready()
    assert "rewinding in case it went past the fork" in c.log_text()
    wait_until(lambda: values(c) == {"common", "new-timeline"}, message="analytics follows the new primary")
    with c.connect() as conn:
        assert postgres.wal_receiver(conn).sender_port == b.port


def test_data_of_another_cluster_is_left_alone(trio):
    a, b, c = trio  # b is the primary now
    root = make_root("shopdb-stranger-")
    try:
        stranger = Instance(root, "stranger-1", make_spec(), b.credentials, install_scripts(root))
        stranger.role = "primary"
        stranger.start()
        stranger.wait_ready()
        stranger.stop()
        # Now told that b is its primary: a different system, so nothing is rewound or cloned.
        stranger.role, stranger.primary_port = "replica", b.port
        stranger.start()
        assert stranger.wait_exit(60) == 1
        assert "belongs to another cluster" in stranger.log_text()
        assert (stranger.pgdata / "PG_VERSION").exists()
    finally:
        shutil.rmtree(root, ignore_errors=True)
